package integration

import (
	"bytes"
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/miekg/dns"
	networking "istio.io/api/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// nodeImages are the OCI archives the node imports and the names they hold.
type nodeImages struct {
	archives []string
	stock    string // the upstream CoreDNS of go.mod, no plugin of ours: what kubeadm runs
	ours     string // scripts/image's, named by digest, as the runbook's patch names it
	oursTag  string // the name scripts/image wrote in its archive
}

// buildNodeImages builds the three images the node runs, without a registry:
// the pause image of the pods' sandboxes (testdata/pause), the stock CoreDNS
// (the github.com/coredns/coredns main package at the version go.mod pins),
// both packaged by tools/image as it packages ours, and ours by scripts/image.
func buildNodeImages(t *testing.T) nodeImages {
	t.Helper()
	dir := t.TempDir()
	run := func(cmdDir string, env []string, name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir, cmd.Env = cmdDir, append(os.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
		}
		return strings.TrimSpace(string(out))
	}
	static := []string{"CGO_ENABLED=0", "GOOS=linux"}
	packager := filepath.Join(dir, "image")
	run("../../tools/image", nil, "go", "build", "-o", packager, ".")
	run("../..", static, "go", "build", "-trimpath", "-ldflags=-s", "-o", filepath.Join(dir, "pause"), "./test/integration/testdata/pause")
	run("../..", static, "go", "build", "-trimpath", "-ldflags=-s", "-o", filepath.Join(dir, "coredns-stock"), "github.com/coredns/coredns")
	version := run("../..", nil, "go", "list", "-m", "-f", "{{.Version}}", "github.com/coredns/coredns")

	img := nodeImages{stock: "registry.example.com/coredns/coredns:" + version}
	for _, i := range []struct{ binary, entrypoint, title, ref string }{
		{"pause", "/pause", "pause", pauseImage},
		{"coredns-stock", "/coredns", "coredns", img.stock},
	} {
		archive := filepath.Join(dir, i.binary+".tar")
		run(dir, nil, packager, "-binary", runtime.GOARCH+"="+filepath.Join(dir, i.binary),
			"-entrypoint", i.entrypoint, "-title", i.title, "-o", archive, "-tag", i.ref)
		img.archives = append(img.archives, archive)
	}
	// scripts/image prints "ARCHIVE NAME DIGEST".
	archive := filepath.Join(dir, "ours.tar")
	img.oursTag = "registry.example.com/coredns-serviceentry:test"
	out := strings.Fields(run("../..", nil, "scripts/image", archive, img.oursTag))
	if len(out) != 3 || !strings.HasPrefix(out[2], "sha256:") {
		t.Fatalf("scripts/image printed %q, want ARCHIVE NAME DIGEST", out)
	}
	img.archives = append(img.archives, archive)
	img.ours = "registry.example.com/coredns-serviceentry@" + out[2]
	return img
}

// kubeadmManifest is one of the pinned kubeadm's CoreDNS manifests, the
// string constant name of cmd/kubeadm/app/phases/addons/dns/manifests.go, read
// from the source of the k8s.io/kubernetes module test/servers pins (as
// test/servers' own tests read it) and filled with data as kubeadm fills it.
func kubeadmManifest(t *testing.T, name string, data any) []byte {
	t.Helper()
	list := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes")
	list.Dir = "../servers"
	dir, err := list.Output()
	if err != nil {
		t.Fatalf("finding the kubernetes module of test/servers: %v", err)
	}
	path := filepath.Join(strings.TrimSpace(string(dir)), "cmd/kubeadm/app/phases/addons/dns/manifests.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var text string
	ast.Inspect(f, func(n ast.Node) bool {
		if spec, ok := n.(*ast.ValueSpec); ok && len(spec.Names) == 1 && spec.Names[0].Name == name && len(spec.Values) == 1 {
			if lit, ok := spec.Values[0].(*ast.BasicLit); ok {
				text, _ = strconv.Unquote(lit.Value)
			}
		}
		return text == ""
	})
	if text == "" {
		t.Fatalf("%s: no string constant %s; kubeadm moved it", path, name)
	}
	tmpl, err := template.New(name).Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, data); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// kubeDNSIP is the kube-dns Service's address, as kubeadm picks it: the
// tenth of the service range.
const kubeDNSIP = "10.0.0.10"

// createKubeadmCoreDNS creates the CoreDNS add-on as the pinned kubeadm's
// init does (its addon/coredns phase): ServiceAccount, ClusterRole and its
// binding, ConfigMap, Deployment of two replicas with image, and the
// kube-dns Service, from kubeadm's own templates, written by field manager
// kubeadm.
func createKubeadmCoreDNS(t *testing.T, kube kubernetes.Interface, image string) {
	t.Helper()
	ctx := context.Background()
	opts := metav1.CreateOptions{FieldManager: "kubeadm"}
	decode := func(name string, data any, into any) {
		t.Helper()
		if err := yaml.UnmarshalStrict(kubeadmManifest(t, name, data), into); err != nil {
			t.Fatalf("kubeadm's %s: %v", name, err)
		}
	}
	var sa corev1.ServiceAccount
	decode("CoreDNSServiceAccount", nil, &sa)
	var role rbacv1.ClusterRole
	decode("CoreDNSClusterRole", nil, &role)
	var binding rbacv1.ClusterRoleBinding
	decode("CoreDNSClusterRoleBinding", nil, &binding)
	var cm corev1.ConfigMap
	decode("CoreDNSConfigMap", struct{ DNSDomain, UpstreamNameserver, StubDomain string }{DNSDomain: "cluster.local"}, &cm)
	var svc corev1.Service
	decode("CoreDNSService", struct{ DNSIP string }{kubeDNSIP}, &svc)
	svc.ResourceVersion = "" // kubeadm's "0" is for its update; this is a create
	var d appsv1.Deployment
	replicas := int32(2)
	decode("CoreDNSDeployment", struct {
		DeploymentName, Image, ControlPlaneTaintKey string
		Replicas                                    *int32
	}{"coredns", image, "node-role.kubernetes.io/control-plane", &replicas}, &d)

	steps := []struct {
		what string
		err  func() error
	}{
		{"ServiceAccount", func() error {
			_, err := kube.CoreV1().ServiceAccounts("kube-system").Create(ctx, &sa, opts)
			return err
		}},
		{"ClusterRole", func() error { _, err := kube.RbacV1().ClusterRoles().Create(ctx, &role, opts); return err }},
		{"ClusterRoleBinding", func() error { _, err := kube.RbacV1().ClusterRoleBindings().Create(ctx, &binding, opts); return err }},
		{"ConfigMap", func() error { _, err := kube.CoreV1().ConfigMaps("kube-system").Create(ctx, &cm, opts); return err }},
		{"Deployment", func() error { _, err := kube.AppsV1().Deployments("kube-system").Create(ctx, &d, opts); return err }},
		{"Service", func() error { _, err := kube.CoreV1().Services("kube-system").Create(ctx, &svc, opts); return err }},
	}
	for _, s := range steps {
		if err := s.err(); err != nil {
			t.Fatalf("creating kubeadm's CoreDNS %s: %v", s.what, err)
		}
	}
}

// dnsPods are the CoreDNS pods not being deleted.
func dnsPods(t *testing.T, kube kubernetes.Interface) []corev1.Pod {
	t.Helper()
	list, err := kube.CoreV1().Pods("kube-system").List(context.Background(), metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
	if err != nil {
		t.Fatal(err)
	}
	var pods []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			pods = append(pods, p)
		}
	}
	return pods
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podDNS asks a pod's CoreDNS directly, at its address on the node's bridge.
func podDNS(p *corev1.Pod) *coredns {
	return &coredns{dnsAddr: p.Status.PodIP + ":53"}
}

// rolledOut reports whether the Deployment's rollout is complete with every
// pod on image: what kubectl rollout status waits for, and the pods besides.
func rolledOut(t *testing.T, kube kubernetes.Interface, image string) (bool, string) {
	t.Helper()
	d, err := kube.AppsV1().Deployments("kube-system").Get(context.Background(), "coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := *d.Spec.Replicas
	s := d.Status
	state := fmt.Sprintf("generation %d/%d, replicas %d updated %d ready %d available %d", s.ObservedGeneration, d.Generation,
		s.Replicas, s.UpdatedReplicas, s.ReadyReplicas, s.AvailableReplicas)
	if s.ObservedGeneration < d.Generation || s.UpdatedReplicas != want || s.Replicas != want || s.AvailableReplicas != want {
		return false, state
	}
	pods := dnsPods(t, kube)
	if int32(len(pods)) != want {
		return false, fmt.Sprintf("%s, %d pods", state, len(pods))
	}
	for _, p := range pods {
		if !podReady(&p) || p.Spec.Containers[0].Image != image {
			return false, fmt.Sprintf("%s, pod %s ready %v image %s", state, p.Name, podReady(&p), p.Spec.Containers[0].Image)
		}
	}
	return true, state
}

// waitRolledOut waits until the Deployment runs image on every replica,
// all Ready through the kubelet's probes.
func waitRolledOut(t *testing.T, kube kubernetes.Interface, image string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := rolledOut(t, kube, image)
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rollout of %s did not complete in %s: %s", image, timeout, state)
		}
		time.Sleep(time.Second)
	}
}

// dnsWatch asks every Ready CoreDNS pod (not being deleted) for the kube-dns
// Service twice a second, in the background, and records every time no pod
// was Ready and every wrong answer: the cluster's DNS must answer throughout.
type dnsWatch struct {
	mu       sync.Mutex
	problems []string
	asked    int
	// late counts the new pods that answered only on being asked again,
	// just after turning Ready.
	late int
	// killed is a pod whose container the test killed: Ready until the
	// kubelet notices, it refuses queries meanwhile, as it would anywhere.
	killed string
	stop   chan struct{}
	done   chan struct{}
}

func watchDNS(t *testing.T, kube kubernetes.Interface) *dnsWatch {
	w := &dnsWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			list, err := kube.CoreV1().Pods("kube-system").List(context.Background(), metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
			if err != nil {
				continue // the API server's trouble, not DNS's
			}
			ready := 0
			w.mu.Lock()
			killed := w.killed
			w.mu.Unlock()
			for _, p := range list.Items {
				if p.DeletionTimestamp != nil || !podReady(&p) || p.Name == killed {
					continue
				}
				ready++
				got := podDNS(&p).answer(t, "kube-dns.kube-system.svc.cluster.local", dns.TypeA, "udp")
				late := false
				if got != "NOERROR "+kubeDNSIP && justReady(&p) {
					// CoreDNS runs its plugins' OnStartup, where ready
					// starts serving /ready and kubernetes waits for its
					// sync on a 100 ms ticker, before it opens its DNS
					// listeners (caddy.go, startWithListenerFds): the
					// kubelet can see a new pod Ready a moment before
					// port 53 is open. Such a pod is asked once more;
					// one that still does not answer is a problem.
					time.Sleep(500 * time.Millisecond)
					got = podDNS(&p).answer(t, "kube-dns.kube-system.svc.cluster.local", dns.TypeA, "udp")
					late = got == "NOERROR "+kubeDNSIP
				}
				w.mu.Lock()
				w.asked++
				if late {
					w.late++
				}
				if got != "NOERROR "+kubeDNSIP {
					w.problems = append(w.problems, fmt.Sprintf("%s pod %s (%s): %q", time.Now().Format(time.TimeOnly), p.Name, p.Spec.Containers[0].Image, got))
				}
				w.mu.Unlock()
			}
			if ready == 0 {
				w.mu.Lock()
				w.problems = append(w.problems, time.Now().Format(time.TimeOnly)+" no CoreDNS pod Ready")
				w.mu.Unlock()
			}
		}
	}()
	t.Cleanup(w.end)
	return w
}

// setKilled leaves pod out of the questions ("" for none).
func (w *dnsWatch) setKilled(pod string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.killed = pod
}

func (w *dnsWatch) end() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// check fails the test with what went wrong since the last check.
func (w *dnsWatch) check(t *testing.T, during string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.problems) > 0 {
		t.Errorf("during %s, the cluster's DNS did not answer:\n%s", during, strings.Join(w.problems, "\n"))
	}
	t.Logf("%s: %d questions to Ready pods answered, %d of them by a new pod only when asked again", during, w.asked, w.late)
	w.problems, w.asked, w.late = nil, 0, 0
}

// justReady reports whether p turned Ready in the last two seconds (the
// condition's time is kept to the second).
func justReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue && time.Since(c.LastTransitionTime.Time) < 2*time.Second
		}
	}
	return false
}

// everyPodAnswers waits until every CoreDNS pod answers name with want.
func everyPodAnswers(t *testing.T, kube kubernetes.Interface, name, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var wrong []string
		for _, p := range dnsPods(t, kube) {
			if got := podDNS(&p).answer(t, name, dns.TypeA, "udp"); got != want {
				wrong = append(wrong, fmt.Sprintf("%s: %q", p.Name, got))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after %s, pods answer %s, want %q", name, timeout, strings.Join(wrong, ", "), want)
		}
		time.Sleep(time.Second)
	}
}

// podMetric is each pod's line of the metric name, read through the API
// server's proxy as the runbook reads it ("" where there is none).
func podMetric(t *testing.T, kube kubernetes.Interface, name string) map[string]string {
	t.Helper()
	lines := map[string]string{}
	for _, p := range dnsPods(t, kube) {
		body, err := kube.CoreV1().RESTClient().Get().AbsPath("/api/v1/namespaces/kube-system/pods/" + p.Name + ":9153/proxy/metrics").DoRaw(context.Background())
		if err != nil {
			lines[p.Name] = "error: " + err.Error()
			continue
		}
		lines[p.Name] = ""
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, name+" ") || strings.HasPrefix(l, name+"{") {
				lines[p.Name] = l
			}
		}
	}
	return lines
}

// kubeadmAddonPhase runs the pinned kubeadm's CoreDNS add-on phase against
// the cluster of kubeconfig, for a node whose containerd listens on sock,
// with dnsImage as kubeadm's own CoreDNS image (an image repository and tag
// in its ClusterConfiguration) and the patches of patchesDir ("" for none),
// and returns what kubeadm printed.
func kubeadmAddonPhase(t *testing.T, kubeconfig, sock, dnsImage, patchesDir string) (string, error) {
	t.Helper()
	repo, tag, ok := strings.Cut(dnsImage, ":")
	if !ok || !strings.HasSuffix(repo, "/coredns") {
		t.Fatalf("%s: not <repository>/coredns:<tag>, as kubeadm names its CoreDNS image", dnsImage)
	}
	patches := ""
	if patchesDir != "" {
		patches = "patches:\n  directory: " + patchesDir + "\n"
	}
	config := fmt.Sprintf(`apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
nodeRegistration:
  name: %s
  criSocket: unix://%s
%s---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
networking:
  serviceSubnet: 10.0.0.0/24
  dnsDomain: cluster.local
dns:
  imageRepository: %s
  imageTag: %s
`, nodeName, sock, patches, strings.TrimSuffix(repo, "/coredns"), tag)
	kubeadm := filepath.Join(serversDir(t), "kubeadm")
	version, err := exec.Command(kubeadm, "version", "-o", "short").Output()
	if err != nil {
		t.Fatalf("kubeadm version: %v", err)
	}
	// Without a version kubeadm would ask dl.k8s.io for the latest one.
	config += "kubernetesVersion: " + string(version)
	path := filepath.Join(t.TempDir(), "kubeadm.yaml")
	writeFile(t, path, config)
	out, err := exec.Command(kubeadm, "init", "phase", "addon", "coredns",
		"--config", path, "--kubeconfig", kubeconfig).CombinedOutput()
	return string(out), err
}

// TestNodeRollout follows docs/deploying.md's in-cluster runbook on a real
// node (kubelet, containerd, runc, a CNI bridge; the controller manager and
// the scheduler) against the real API server with RBAC, from the CoreDNS
// add-on exactly as the pinned kubeadm creates it, running the doc's marked
// blocks with the real kubectl, and asking the pods over their bridge
// address throughout:
//   - kubeadm's add-on with the stock CoreDNS rolls out, Ready through the
//     kubelet's probes, under kubeadm's securityContext and limits;
//   - the stanza applied before the image (out of the doc's order): the
//     stock replicas' reload fails and they keep answering, a container the
//     kubelet restarts crash-loops, and the rollback block ends it;
//   - the image step with an image that cannot be pulled (the shipped patch,
//     its digest not set) does not complete: the new pod is in ErrImagePull
//     or ImagePullBackOff while an old replica answers; the doc's image
//     rollback completes;
//   - the image step with ours completes, on the stock Corefile; the stanza
//     merged and applied reaches the running replicas (reload), which then
//     answer a ServiceEntry's host, and the verify block sees every replica
//     synced; a container the kubelet restarts starts with the merged
//     Corefile;
//   - kubeadm's CoreDNS add-on phase (what kubeadm upgrade runs) with the
//     shipped patches keeps our image and the Corefile; without them its
//     image crash-loops on the Corefile while an old replica answers, and
//     the doc's image step brings ours back;
//   - the rollback, in the doc's order (Corefile, then image and RBAC),
//     completes;
//   - at no point is there no Ready replica, or a Ready one that does not
//     answer the kube-dns Service.
func TestNodeRollout(t *testing.T) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		if os.Getenv("SERVICEENTRY_SKIP_KUBECTL") == "1" {
			t.Skip("SERVICEENTRY_SKIP_KUBECTL=1")
		}
		t.Fatal("kubectl is not on the PATH: the runbook's blocks are kubectl commands; install it, " +
			"or set SERVICEENTRY_SKIP_KUBECTL=1 to skip on purpose")
	}
	requireNode(t)
	image, verify, rollbackImage := runbookBlock(t, "image"), runbookBlock(t, "verify"), runbookBlock(t, "rollback-image")
	backup, apply, rollback := runbookBlock(t, "backup"), runbookBlock(t, "apply"), runbookBlock(t, "rollback")
	images := buildNodeImages(t)
	c := startCluster(t, "RBAC")
	c.installCRDs(t, istioCRDs(t))
	n := startNode(t, c, images.archives...)
	// The runbook's patch names our image by digest alone: a pull records
	// that name, an import only the archive's tag.
	if out, err := n.ctr("images", "tag", images.oursTag, images.ours); err != nil {
		t.Fatalf("naming our image by its digest: %v\n%s", err, out)
	}
	kube := n.kube
	ctx := context.Background()
	start := time.Now()
	step := func(what string) {
		t.Logf("%5.1fs %s", time.Since(start).Seconds(), what)
	}

	createKubeadmCoreDNS(t, kube, images.stock)
	waitRolledOut(t, kube, images.stock, 3*time.Minute)
	const service, serviceAnswer = "kube-dns.kube-system.svc.cluster.local", "NOERROR " + kubeDNSIP
	everyPodAnswers(t, kube, service, serviceAnswer, 10*time.Second)
	step("kubeadm's CoreDNS, stock image: rolled out, Ready, answering")
	const host, hostAnswer = "api.example.com", "NOERROR 198.51.100.7"
	// Asked from the host, not from a pod, the plugin answers as to a client
	// outside the mesh: resolution NONE gives its declared address to everyone.
	entry := serviceEntry("default", "api", []string{host}, "198.51.100.7")
	entry.Spec.Resolution = networking.ServiceEntry_NONE
	if _, err := c.istio(t).NetworkingV1().ServiceEntries("default").Create(ctx, entry, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	watch := watchDNS(t, kube)

	// The user's checkout: deploy/ as shipped, the patch's digest not set yet.
	sh := newRunbookShell(t, c.kubeconfig(t, adminToken))
	patchFile := filepath.Join(sh.dir, "deploy/in-cluster/coredns-deployment-patch.yaml")
	shippedPatch := string(deployFile(t, "in-cluster/coredns-deployment-patch.yaml"))
	writeFile(t, patchFile, shippedPatch)
	writeFile(t, filepath.Join(sh.dir, "deploy/rbac.yaml"), string(deployFile(t, "rbac.yaml")))
	unpullable := strings.TrimSpace(regexp.MustCompile(`(?m)^\s+image: (\S+)$`).FindStringSubmatch(shippedPatch)[1])

	// Why the image goes first: the stanza in the Corefile of stock CoreDNS
	// replicas. reload refuses it and they keep serving the old Corefile,
	// but one the kubelet restarts crash-loops until the Corefile is rolled
	// back.
	t.Run("stanza before image", func(t *testing.T) {
		if _, stderr, err := sh.run(backup); err != nil {
			if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 { // diff's 1: the files differ
				t.Fatalf("backup block: %v\n%s", err, stderr)
			}
		}
		if _, stderr, err := sh.run(apply); err != nil {
			t.Fatalf("apply block: %v\n%s", err, stderr)
		}
		waitFor(t, 3*time.Minute, "every stock replica's reload failing", func() bool {
			for _, l := range podMetric(t, kube, "coredns_reload_failed_total") {
				if !strings.HasSuffix(l, " 1") {
					return false
				}
			}
			return true
		})
		watch.check(t, "a reload of the stanza by stock replicas")
		step("stanza applied before the image: stock replicas' reload fails, they keep answering")

		p := dnsPods(t, kube)[0]
		watch.setKilled(p.Name)
		n.killContainer(t, p)
		var state string
		waitFor(t, 2*time.Minute, p.Name+" crash-looping", func() bool {
			now, err := kube.CoreV1().Pods("kube-system").Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			if len(now.Status.ContainerStatuses) == 0 {
				return false
			}
			s := now.Status.ContainerStatuses[0]
			state = fmt.Sprintf("restarts %d, ready %v", s.RestartCount, s.Ready)
			return s.RestartCount >= 2 && !s.Ready
		})
		step("a stock container restarted by the kubelet on the stanza crash-loops: " + state)
		if _, stderr, err := sh.run(rollback); err != nil {
			t.Fatalf("rollback block: %v\n%s", err, stderr)
		}
		waitRolledOut(t, kube, images.stock, 3*time.Minute)
		everyPodAnswers(t, kube, service, serviceAnswer, 10*time.Second)
		watch.setKilled("")
		watch.check(t, "the crash loop and the Corefile's rollback")
		step("Corefile rolled back: the crash-looping replica is Ready again")
	})
	if t.Failed() {
		return
	}

	t.Run("failed pull", func(t *testing.T) {
		run := sh.start(image)
		var pulling string
		waitFor(t, 2*time.Minute, "the new pod failing to pull "+unpullable, func() bool {
			for _, p := range dnsPods(t, kube) {
				for _, s := range p.Status.ContainerStatuses {
					if w := s.State.Waiting; p.Spec.Containers[0].Image == unpullable && w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") {
						pulling = p.Name + ": " + w.Reason
						return true
					}
				}
			}
			return false
		})
		step("image step with an image that cannot be pulled: " + pulling)
		// Stuck, not slow: the doc's rollout status is still waiting, and
		// the replicas that answer are the old ones.
		time.Sleep(15 * time.Second)
		select {
		case <-run.done:
			t.Fatalf("the image block ended (%v) with the image not pulled:\n%s", run.err, run.out)
		default:
		}
		// kubeadm's maxUnavailable 1 (of 2) lets the rollout stop one old
		// replica: one is left, as docs/deploying.md says.
		ready := 0
		for _, p := range dnsPods(t, kube) {
			if podReady(&p) && p.Spec.Containers[0].Image != images.stock {
				t.Errorf("pod %s is Ready with image %s", p.Name, p.Spec.Containers[0].Image)
			}
			if podReady(&p) {
				ready++
			}
		}
		if ready != 1 {
			t.Errorf("%d replicas Ready while the rollout is stuck, want the 1 that maxUnavailable leaves", ready)
		}
		run.stop()
		watch.check(t, "the stuck rollout")
		if got := strings.TrimSpace(sh.file("coredns-image.backup")); got != images.stock {
			t.Errorf("coredns-image.backup holds %q, want the stock image %q", got, images.stock)
		}
		if out, stderr, err := sh.run(rollbackImage); err != nil {
			t.Fatalf("rollback-image block: %v\n%s%s", err, out, stderr)
		}
		waitRolledOut(t, kube, images.stock, 10*time.Second)
		everyPodAnswers(t, kube, service, serviceAnswer, 10*time.Second)
		watch.check(t, "the image rollback")
		step("image rolled back: every replica stock, answering")
	})
	if t.Failed() {
		return
	}

	t.Run("install", func(t *testing.T) {
		writeFile(t, patchFile, replaceOnce(t, shippedPatch, unpullable, images.ours))
		if out, stderr, err := sh.run(image); err != nil {
			t.Fatalf("image block: %v\n%s%s", err, out, stderr)
		}
		waitRolledOut(t, kube, images.ours, 10*time.Second)
		everyPodAnswers(t, kube, service, serviceAnswer, 10*time.Second)
		for _, p := range dnsPods(t, kube) {
			if got := podDNS(&p).answer(t, host, dns.TypeA, "udp"); got == hostAnswer {
				t.Errorf("pod %s answers %s before the stanza", p.Name, host)
			}
		}
		watch.check(t, "the image rollout")
		step("image step with ours: rolled out on the stock Corefile")

		if _, stderr, err := sh.run(backup); err != nil {
			if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 { // diff's 1: the files differ
				t.Fatalf("backup block: %v\n%s", err, stderr)
			}
		}
		if _, stderr, err := sh.run(apply); err != nil {
			t.Fatalf("apply block: %v\n%s", err, stderr)
		}
		applied := time.Now()
		everyPodAnswers(t, kube, host, hostAnswer, 3*time.Minute)
		step(fmt.Sprintf("stanza applied: every running replica answers %s after %.0fs (kubelet volume sync, then reload)", host, time.Since(applied).Seconds()))
		out, stderr, err := sh.run(verify)
		if err != nil {
			t.Fatalf("verify block: %v\n%s%s", err, out, stderr)
		}
		for _, p := range dnsPods(t, kube) {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(p.Name) + `: coredns_serviceentry_synced\{.*\} 1$`).MatchString(out) {
				t.Errorf("the verify block does not show %s synced:\n%s", p.Name, out)
			}
		}
		if !strings.Contains(strings.ToLower(out), "reload") {
			t.Errorf("the verify block's logs show no reload:\n%s", out)
		}
		watch.check(t, "the stanza's apply")

		// The kubelet restarts a killed container in its pod, which reads
		// the merged Corefile from the start.
		p := dnsPods(t, kube)[0]
		watch.setKilled(p.Name)
		n.killContainer(t, p)
		waitFor(t, 2*time.Minute, p.Name+" restarted and Ready", func() bool {
			now, err := kube.CoreV1().Pods("kube-system").Get(ctx, p.Name, metav1.GetOptions{})
			return err == nil && len(now.Status.ContainerStatuses) > 0 && now.Status.ContainerStatuses[0].RestartCount > 0 && podReady(now)
		})
		if got := podDNS(&p).answer(t, host, dns.TypeA, "udp"); got != hostAnswer {
			t.Errorf("%s, restarted by the kubelet: %s answers %q", p.Name, host, got)
		}
		watch.setKilled("")
		watch.check(t, "a container's restart")
		step("a container restarted by the kubelet answers with the merged Corefile")
	})
	if t.Failed() {
		return
	}

	// kubeadm upgrade's CoreDNS add-on phase writes kubeadm's Deployment
	// again. Run here as "kubeadm init phase addon coredns", the same
	// EnsureDNSAddon (cmd/kubeadm/app/cmd/phases/{init,upgrade}/addons.go)
	// from the pinned kubeadm, with its configuration given where upgrade
	// reads it from the cluster's kubeadm-config: "kubeadm upgrade apply"
	// itself needs a control plane of static pods this node does not have.
	t.Run("kubeadm upgrade's add-on phase", func(t *testing.T) {
		patches := filepath.Join(sh.dir, "deploy/in-cluster/kubeadm-patches")
		writeFile(t, filepath.Join(patches, "corednsdeployment+strategic.yaml"),
			replaceOnce(t, string(deployFile(t, "in-cluster/kubeadm-patches/corednsdeployment+strategic.yaml")), unpullable, images.ours))
		corefile := func() string {
			cm, err := kube.CoreV1().ConfigMaps("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return cm.Data["Corefile"]
		}
		merged := corefile()
		addonPhase := func(patchesDir string) {
			t.Helper()
			out, err := kubeadmAddonPhase(t, c.kubeconfig(t, adminToken), n.sock, images.stock, patchesDir)
			if err != nil {
				t.Fatalf("kubeadm init phase addon coredns: %v\n%s", err, out)
			}
			if applied := strings.Contains(out, `to target "corednsdeployment"`); applied != (patchesDir != "") {
				t.Fatalf("kubeadm, patches %q: applied a patch to its Deployment %v:\n%s", patchesDir, applied, out)
			}
			if got := corefile(); got != merged {
				t.Fatalf("kubeadm changed the Corefile:\n%s\nwas:\n%s", got, merged)
			}
		}

		// With the doc's patches: our image, by digest, stays.
		addonPhase(patches)
		waitRolledOut(t, kube, images.ours, 3*time.Minute)
		everyPodAnswers(t, kube, host, hostAnswer, 10*time.Second)
		everyPodAnswers(t, kube, service, serviceAnswer, 10*time.Second)
		watch.check(t, "kubeadm's add-on phase with the patches")
		step("kubeadm's add-on phase with --patches: our image stays, the Corefile is kept, every replica answers " + host)

		// Without them: kubeadm's image on a Corefile naming the plugin.
		addonPhase("")
		var state string
		waitFor(t, 2*time.Minute, "a stock replica crash-looping on the merged Corefile", func() bool {
			for _, p := range dnsPods(t, kube) {
				if p.Spec.Containers[0].Image != images.stock || len(p.Status.ContainerStatuses) == 0 {
					continue
				}
				if s := p.Status.ContainerStatuses[0]; s.RestartCount >= 1 && !s.Ready {
					state = fmt.Sprintf("%s: restarts %d", p.Name, s.RestartCount)
					return true
				}
			}
			return false
		})
		for _, p := range dnsPods(t, kube) {
			if podReady(&p) && p.Spec.Containers[0].Image != images.ours {
				t.Errorf("pod %s is Ready with image %s", p.Name, p.Spec.Containers[0].Image)
			}
		}
		watch.check(t, "kubeadm's add-on phase without the patches")
		step("kubeadm's add-on phase without --patches: its stock image crash-loops on the Corefile (" + state + "), an old replica answers")
		if out, stderr, err := sh.run(image); err != nil {
			t.Fatalf("image block: %v\n%s%s", err, out, stderr)
		}
		waitRolledOut(t, kube, images.ours, 3*time.Minute)
		everyPodAnswers(t, kube, host, hostAnswer, 10*time.Second)
		watch.check(t, "the image step after kubeadm's")
		step("the runbook's image step again: every replica ours, answering " + host)
	})
	if t.Failed() {
		return
	}

	t.Run("rollback", func(t *testing.T) {
		if _, stderr, err := sh.run(rollback); err != nil {
			t.Fatalf("rollback block: %v\n%s", err, stderr)
		}
		waitFor(t, 3*time.Minute, "no replica exporting coredns_serviceentry_synced", func() bool {
			for _, l := range podMetric(t, kube, "coredns_serviceentry_synced") {
				if l != "" {
					return false
				}
			}
			return true
		})
		step("Corefile rolled back: no replica runs the stanza")
		if out, stderr, err := sh.run(rollbackImage); err != nil {
			t.Fatalf("rollback-image block: %v\n%s%s", err, out, stderr)
		}
		waitRolledOut(t, kube, images.stock, 10*time.Second)
		everyPodAnswers(t, kube, service, serviceAnswer, 10*time.Second)
		if _, err := kube.RbacV1().ClusterRoles().Get(ctx, "coredns-serviceentry", metav1.GetOptions{}); err == nil {
			t.Error("deploy/rbac.yaml's ClusterRole is still there after the rollback")
		}
		watch.check(t, "the rollback")
		step("image and RBAC rolled back: stock CoreDNS, answering")
	})
}
