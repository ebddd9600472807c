package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// runbookBlock is the shell block of docs/deploying.md marked "<!-- TESTS
// run(s) this block: name -->" (TESTS names the tests that run it), as a user
// would paste it.
func runbookBlock(t *testing.T, name string) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/deploying.md")
	if err != nil {
		t.Fatal(err)
	}
	marker := " this block: " + name + " -->\n~~~ sh\n"
	_, rest, ok := strings.Cut(string(doc), marker)
	if !ok {
		t.Fatalf("docs/deploying.md has no block marked %q", name)
	}
	block, _, ok := strings.Cut(rest, "\n~~~\n")
	if !ok {
		t.Fatalf("docs/deploying.md: the block %q is not closed", name)
	}
	return block + "\n"
}

// runbookShell runs docs/deploying.md's blocks with bash in one folder, with
// the real kubectl talking to the test's API server and corefile-merge
// built from this module on the PATH.
type runbookShell struct {
	t   *testing.T
	dir string
	env []string
}

func newRunbookShell(t *testing.T, kubeconfig string) *runbookShell {
	t.Helper()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "corefile-merge"), "./cmd/corefile-merge")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building cmd/corefile-merge: %v\n%s", err, out)
	}
	env := append(os.Environ(), "KUBECONFIG="+kubeconfig, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	return &runbookShell{t: t, dir: t.TempDir(), env: env}
}

// run runs a block as a user's shell would, with pipefail so that the exit
// status of a pipeline tells if any part failed, and returns its output.
func (s *runbookShell) run(block string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	cmd := exec.Command("bash", "-o", "pipefail", "-c", block)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = s.dir, s.env, &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// start runs a block as run does, in the background, in a process group of
// its own: stop interrupts it as Ctrl-C would (the group: kubectl too),
// done tells when it exited, and output is what it printed so far.
func (s *runbookShell) start(block string) *runningBlock {
	r := &runningBlock{out: &lockedWriter{w: &bytes.Buffer{}}, done: make(chan struct{})}
	r.cmd = exec.Command("bash", "-o", "pipefail", "-c", block)
	r.cmd.Dir, r.cmd.Env, r.cmd.Stdout, r.cmd.Stderr = s.dir, s.env, r.out, r.out
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.done) }()
	s.t.Cleanup(r.stop)
	return r
}

type runningBlock struct {
	cmd  *exec.Cmd
	out  *lockedWriter
	done chan struct{}
	err  error // once done is closed
}

func (r *runningBlock) stop() {
	select {
	case <-r.done:
	default:
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGINT)
		<-r.done
	}
}

func (s *runbookShell) file(name string) string {
	s.t.Helper()
	data, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		s.t.Fatal(err)
	}
	return string(data)
}

// TestDeployRunbook runs docs/deploying.md's Corefile blocks as written
// (backup, apply, rollback) with the real kubectl against the real API
// server, on a ConfigMap as kubeadm writes it (another field manager) with a
// second key and a label, as k3s's has:
//   - the backup holds the cluster's Corefile, and the review diff shows the
//     stanza and nothing else;
//   - the apply gives the shipped Corefile (kubeadm's plus the stanza), keeps
//     the other key and the label, and a second apply changes nothing;
//   - a Corefile the merge refuses applies nothing;
//   - the rollback restores the Corefile byte for byte.
func TestDeployRunbook(t *testing.T) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		// As for the servers: a runbook nobody ran is not tested, so its
		// absence fails unless skipped on purpose.
		if os.Getenv("SERVICEENTRY_SKIP_KUBECTL") == "1" {
			t.Skip("SERVICEENTRY_SKIP_KUBECTL=1")
		}
		t.Fatal("kubectl is not on the PATH: the runbook's blocks are kubectl commands; install it, " +
			"or set SERVICEENTRY_SKIP_KUBECTL=1 to skip on purpose")
	}
	backup, apply, rollback := runbookBlock(t, "backup"), runbookBlock(t, "apply"), runbookBlock(t, "rollback")

	c := startCluster(t, "AlwaysAllow")
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	shipped := shippedInCluster(t)
	// kubeadm's Corefile: the shipped one without the stanza, which
	// test/servers holds to the pinned kubeadm's template.
	stock := regexp.MustCompile(`(?m)^[ \t]*serviceentry \{\n(?:.*\n)*?[ \t]*\}\n`).ReplaceAllString(shipped, "")
	if stock == shipped {
		t.Fatal("the shipped Corefile has no stanza")
	}
	const nodeHosts = "192.0.2.1 node-1\n"
	ctx := context.Background()
	cms := kube.CoreV1().ConfigMaps("kube-system")
	if _, err := cms.Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns", Labels: map[string]string{"k8s-app": "kube-dns"}},
		Data:       map[string]string{"Corefile": stock, "NodeHosts": nodeHosts},
	}, metav1.CreateOptions{FieldManager: "kubeadm"}); err != nil {
		t.Fatal(err)
	}
	get := func() *corev1.ConfigMap {
		t.Helper()
		cm, err := cms.Get(ctx, "coredns", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm
	}
	checkKept := func(cm *corev1.ConfigMap) {
		t.Helper()
		if cm.Data["NodeHosts"] != nodeHosts || cm.Labels["k8s-app"] != "kube-dns" {
			t.Errorf("the ConfigMap lost what was not the Corefile: data %v, labels %v", cm.Data, cm.Labels)
		}
	}

	sh := newRunbookShell(t, c.kubeconfig(t, adminToken))
	out, stderr, err := sh.run(backup)
	// diff exits 1 when the files differ: what matters is what it shows.
	if exit, ok := err.(*exec.ExitError); err != nil && (!ok || exit.ExitCode() != 1) {
		t.Fatalf("backup block: %v\n%s", err, stderr)
	}
	if got := sh.file("Corefile.backup"); got != stock {
		t.Fatalf("Corefile.backup:\n%s\nwant the cluster's:\n%s", got, stock)
	}
	var saved corev1.ConfigMap
	if err := yaml.Unmarshal([]byte(sh.file("coredns-configmap.backup.yaml")), &saved); err != nil || saved.Data["Corefile"] != stock {
		t.Errorf("coredns-configmap.backup.yaml (%v) does not hold the cluster's Corefile", err)
	}
	var added, removed []string
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "+++"), strings.HasPrefix(l, "---"):
		case strings.HasPrefix(l, "+"):
			added = append(added, strings.TrimSpace(l[1:]))
		case strings.HasPrefix(l, "-"):
			removed = append(removed, l)
		}
	}
	if strings.Join(added, " ") != "serviceentry { fallthrough searchpath }" || len(removed) > 0 {
		t.Errorf("the review diff adds %q and removes %q, want the stanza alone:\n%s", added, removed, out)
	}

	if _, stderr, err := sh.run(apply); err != nil {
		t.Fatalf("apply block: %v\n%s", err, stderr)
	}
	cm := get()
	if cm.Data["Corefile"] != shipped {
		t.Errorf("the Corefile after the apply block:\n%s\nwant the shipped one:\n%s", cm.Data["Corefile"], shipped)
	}
	checkKept(cm)
	if _, stderr, err := sh.run(apply); err != nil {
		t.Fatalf("apply block, again: %v\n%s", err, stderr)
	}
	if again := get(); again.ResourceVersion != cm.ResourceVersion {
		t.Errorf("a second apply changed the ConfigMap: %q", again.Data["Corefile"])
	}

	// A refused merge must not reach kubectl: an empty Corefile applied
	// would leave the cluster without DNS.
	refused := newRunbookShell(t, c.kubeconfig(t, adminToken))
	if err := os.WriteFile(filepath.Join(refused.dir, "Corefile.backup"), []byte("example.org {\n    whoami\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := refused.run(apply); err == nil || !strings.Contains(stderr, `zone "."`) {
		t.Errorf("apply block on a Corefile with no root block: err %v, stderr %s", err, stderr)
	}
	if after := get(); after.ResourceVersion != cm.ResourceVersion {
		t.Errorf("a refused merge changed the ConfigMap: %q", after.Data["Corefile"])
	}

	if _, stderr, err := sh.run(rollback); err != nil {
		t.Fatalf("rollback block: %v\n%s", err, stderr)
	}
	cm = get()
	if cm.Data["Corefile"] != stock {
		t.Errorf("the Corefile after the rollback:\n%s\nwant the backup:\n%s", cm.Data["Corefile"], stock)
	}
	checkKept(cm)

	t.Run("global", func(t *testing.T) { checkGlobalRunbook(t, c, kube, sh, stock) })
}

// checkGlobalRunbook runs docs/deploying.md's block that adds the .global
// stanza to kube-system's Corefile, after the .global manifests are applied:
// the shipped Service pins no ClusterIP (service ranges differ from one
// cluster to the next), and the block writes the one the API server gave it
// into the stanza, appended to the cluster's Corefile, which is otherwise
// kept.
func checkGlobalRunbook(t *testing.T, c *cluster, kube kubernetes.Interface, sh *runbookShell, stock string) {
	manifest := deployFile(t, "global/serviceentry-dns.yaml")
	for _, doc := range strings.Split(string(manifest), "\n---\n") {
		var svc corev1.Service
		if err := yaml.Unmarshal([]byte(doc), &svc); err == nil && svc.Kind == "Service" && (svc.Spec.ClusterIP != "" || len(svc.Spec.ClusterIPs) > 0) {
			t.Errorf("deploy/global/serviceentry-dns.yaml pins the Service's ClusterIP %q: not every cluster has that range", svc.Spec.ClusterIP)
		}
	}
	createNamespace(t, c, "istio-system")
	c.apply(t, deployFile(t, "rbac.yaml"))
	c.apply(t, manifest)
	ctx := context.Background()
	svc, err := kube.CoreV1().Services("istio-system").Get(ctx, "serviceentry-dns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP == "" || !strings.HasPrefix(svc.Spec.ClusterIP, "10.0.0.") {
		t.Fatalf("the Service got ClusterIP %q, not one of the test's range 10.0.0.0/24", svc.Spec.ClusterIP)
	}
	// The block names deploy/ as a user's checkout has it.
	abs, err := filepath.Abs("../../deploy")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(abs, filepath.Join(sh.dir, "deploy")); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := sh.run(runbookBlock(t, "global")); err != nil {
		t.Fatalf("global block: %v\n%s", err, stderr)
	}
	var stanza strings.Builder
	for _, l := range strings.SplitAfter(string(deployFile(t, "global/kube-system-stanza.Corefile")), "\n") {
		if !strings.HasPrefix(l, "#") {
			stanza.WriteString(strings.Replace(l, "SERVICEENTRY_DNS_IP", svc.Spec.ClusterIP, 1))
		}
	}
	want := stock + stanza.String()
	if !strings.Contains(want, "forward . "+svc.Spec.ClusterIP+"\n") {
		t.Fatalf("the stanza does not forward to the Service's address:\n%s", want)
	}
	cm, err := kube.CoreV1().ConfigMaps("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["Corefile"] != want {
		t.Errorf("kube-system's Corefile after the global block:\n%s\nwant:\n%s", cm.Data["Corefile"], want)
	}
}

// shippedInCluster is the Corefile of deploy/in-cluster/coredns-configmap.yaml.
func shippedInCluster(t *testing.T) string {
	t.Helper()
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal(deployFile(t, "in-cluster/coredns-configmap.yaml"), &cm); err != nil {
		t.Fatal(err)
	}
	return cm.Data["Corefile"]
}
