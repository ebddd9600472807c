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
	"runtime"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/miekg/dns"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// nodeImages are the OCI archives the node imports and the names they hold.
type nodeImages struct {
	archives   []string
	stock      string // the upstream CoreDNS of go.mod, no plugin of ours: what kubeadm runs
	ours       string // scripts/image's, named by digest, as the runbook's patch names it
	oursDigest string
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
	out := strings.Fields(run("../..", nil, "scripts/image", archive, "registry.example.com/coredns-serviceentry:test"))
	if len(out) != 3 || !strings.HasPrefix(out[2], "sha256:") {
		t.Fatalf("scripts/image printed %q, want ARCHIVE NAME DIGEST", out)
	}
	img.archives = append(img.archives, archive)
	img.oursDigest = out[2]
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

// TestNodeRollout deploys the plugin as docs/deploying.md says, on a real
// node (kubelet, containerd, runc, a CNI bridge; controller manager and
// scheduler) against the real API server, starting from the CoreDNS add-on
// exactly as the pinned kubeadm creates it.
func TestNodeRollout(t *testing.T) {
	requireNode(t)
	images := buildNodeImages(t)
	c := startCluster(t, "RBAC")
	c.installCRDs(t, istioCRDs(t))
	n := startNode(t, c, images.archives...)
	kube := n.kube

	createKubeadmCoreDNS(t, kube, images.stock)
	waitRolledOut(t, kube, images.stock, 3*time.Minute)
	for _, p := range dnsPods(t, kube) {
		if got := podDNS(&p).answer(t, "kube-dns.kube-system.svc.cluster.local", dns.TypeA, "udp"); got != "NOERROR "+kubeDNSIP {
			t.Errorf("pod %s (%s): kube-dns.kube-system.svc.cluster.local: %q", p.Name, p.Status.PodIP, got)
		}
	}
}
