package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The addresses of the one-node cluster. The API server's service range is
// 10.0.0.0/24 (startAPIServer), so the kubernetes Service is 10.0.0.1, the
// address pods reach the API server at (KUBERNETES_SERVICE_HOST). There is no
// kube-proxy: the test puts that address and the node's on the host's
// loopback interface, and proxies 10.0.0.1:443 to the API server itself. Pods
// get addresses of podSubnet on a bridge, which the host reaches directly.
const (
	kubernetesServiceIP = "10.0.0.1"
	nodeIP              = "10.0.1.1"
	podSubnet           = "10.0.2.0/24"
	bridgeName          = "se-test0"
	nodeName            = "serviceentry-node"
	// pauseImage is the pods' sandbox image, built from testdata/pause:
	// the node has no registry to pull one from.
	pauseImage = "registry.example.com/pause:test"
)

// node is a kubelet on containerd, with the controller manager and the
// scheduler, joined to a cluster: pods run for real, with the kubelet's
// probes, securityContext, ConfigMap volumes and image pulls.
type node struct {
	dir  string // everything the node writes
	sock string // containerd's socket
	kube kubernetes.Interface
	// containerd is containerd's process ID, the one process that names
	// the node's folder and is stopped after the teardown.
	containerd int
}

// nodeSupport is why this machine cannot run the node ("" if it can): the
// kubelet needs root, containerd and runc, and the CNI plugins.
func nodeSupport() string {
	if os.Geteuid() != 0 {
		return "the kubelet and containerd need root"
	}
	for _, bin := range []string{"containerd", "runc", "ctr", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " is not on the PATH"
		}
	}
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, plugin)); err != nil {
			return "no CNI plugin " + plugin + " in " + cniBinDir
		}
	}
	return ""
}

// cniBinDir is where Debian's containernetworking-plugins puts the plugins.
const cniBinDir = "/usr/lib/cni"

// requireNode fails the test where the node cannot run, unless skipped on
// purpose: like the servers, a deployment path nobody ran is not tested.
func requireNode(t *testing.T) {
	t.Helper()
	why := nodeSupport()
	if why == "" {
		return
	}
	if os.Getenv("SERVICEENTRY_SKIP_NODE") == "1" {
		t.Skip("SERVICEENTRY_SKIP_NODE=1: " + why)
	}
	t.Fatalf("%s: scripts/test installs containerd, runc and the CNI plugins (Debian's containerd, runc, "+
		"containernetworking-plugins) and runs as root; set SERVICEENTRY_SKIP_NODE=1 to skip on purpose", why)
}

// startNode starts containerd with images (OCI archives) imported, the
// kubelet, the controller manager and the scheduler, against c (which must
// serve 10.0.0.0/24 and have a serving certificate for 10.0.0.1), and waits
// until the node is Ready. Everything is stopped and removed at the end of
// the test, whether it passed or not: processes, containers and their shims,
// network namespaces, mounts, the bridge, the addresses and the cgroups.
func startNode(t *testing.T, c *cluster, images ...string) *node {
	t.Helper()
	requireNode(t)
	bin := serversDir(t)
	for _, b := range []string{"kubelet", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("%s: SERVICEENTRY_SERVERS is from an older test/servers/build.sh, which did not build it", b)
		}
	}
	if dirExists("/sys/fs/cgroup/memory/kubepods") || dirExists("/sys/fs/cgroup/kubepods") {
		t.Fatal("the cgroup kubepods exists: another kubelet runs on this machine, or a test's was killed; " +
			"remove it (rmdir, children first) once no process is left in it")
	}
	n := &node{dir: t.TempDir()}
	n.sock = filepath.Join(n.dir, "containerd.sock")
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	n.kube = kube

	n.addresses(t, c)
	cniConf := n.writeCNI(t)
	snapshotter := overlaySnapshotter(t, n.dir)
	conf := filepath.Join(n.dir, "containerd.toml")
	writeFile(t, conf, fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Critical pods' sandboxes get oom_score_adj -998 from the kubelet; lowering
  # it needs CAP_SYS_RESOURCE, which root lacks on some CI machines (runc
  # then fails: "failed to update /proc/self/oom_score_adj: Permission
  # denied"). This keeps the containers' no lower than containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = %q
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # runc's state, in the node's folder rather than /run/containerd.
        Root = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, filepath.Join(n.dir, "containerd"), filepath.Join(n.dir, "containerd-state"), n.sock,
		filepath.Join(n.dir, "opt"), pauseImage, snapshotter, filepath.Join(n.dir, "runc"), cniBinDir, cniConf))
	containerd := startProcess(t, "containerd", "--config", conf)
	n.containerd = containerd.cmd.Process.Pid
	waitFor(t, 30*time.Second, "containerd serving", func() bool {
		_, err := n.ctr("version")
		return err == nil
	})
	// Registered after containerd's stop, so it runs before it (cleanups
	// run last first), and before the kubelet's stop, which is registered
	// later, so that no kubelet starts containers again meanwhile.
	t.Cleanup(func() { n.teardown(t) })
	for _, archive := range images {
		if out, err := n.ctr("images", "import", "--snapshotter", snapshotter, archive); err != nil {
			t.Fatalf("importing %s: %v\n%s", archive, err, out)
		}
	}

	adminConfig := c.kubeconfig(t, adminToken)
	sa := filepath.Join(c.dir, "sa.key")
	startProcess(t, filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig", adminConfig, "--leader-elect=false",
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(freePort(t)),
		"--root-ca-file", c.caFile, "--service-account-private-key-file", sa,
		"--controllers", "deployment-controller,replicaset-controller,root-ca-certificate-publisher-controller,"+
			"serviceaccount-controller,garbage-collector-controller,node-lifecycle-controller")
	startProcess(t, filepath.Join(bin, "kube-scheduler"),
		"--kubeconfig", adminConfig, "--leader-elect=false",
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(freePort(t)))

	kubeletConf := filepath.Join(n.dir, "kubelet.yaml")
	resolvConf := filepath.Join(n.dir, "resolv.conf")
	// dnsPolicy Default gives pods this file; CoreDNS forwards what it does
	// not serve to its nameserver, a documentation address that answers
	// nothing (the test has no upstream, and asks for nothing upstream).
	writeFile(t, resolvConf, "nameserver 203.0.113.53\n")
	writeFile(t, kubeletConf, fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The kubelet 1.35 refuses cgroup v1 unless told so; the CI machines have v1.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://%s
address: %s
port: %d
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
resolvConf: %s
podLogsDir: %s
# The kubelet refreshes a pod's ConfigMap volume when it syncs the pod: once
# a minute by default, every 10 s here, so that a Corefile edit reaches the
# replicas in a test's time. reload's own interval is the Corefile's.
syncFrequency: 10s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", nodefs.inodesFree: "1%%", imagefs.available: "1%%"}
`, n.sock, nodeIP, freePort(t), resolvConf, filepath.Join(n.dir, "pod-logs")))
	kubelet := startProcess(t, filepath.Join(bin, "kubelet"),
		"--config", kubeletConf, "--kubeconfig", adminConfig,
		"--root-dir", filepath.Join(n.dir, "kubelet"), "--cert-dir", filepath.Join(n.dir, "kubelet-pki"),
		"--hostname-override", nodeName, "--node-ip", nodeIP)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubelet log (tail):\n%s", tail(kubelet.output(), 60))
			t.Logf("containerd log (tail):\n%s", tail(containerd.output(), 30))
		}
	})
	waitFor(t, 90*time.Second, "node Ready", func() bool {
		node, err := kube.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == "Ready" {
				return cond.Status == "True"
			}
		}
		return false
	})
	return n
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}

// ctr runs containerd's own client against the node's containerd, in the
// namespace the CRI plugin keeps the kubelet's images and containers in.
func (n *node) ctr(args ...string) (string, error) {
	out, err := exec.Command("ctr", append([]string{"--address", n.sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

// overlaySnapshotter is "overlayfs" where the kernel mounts an overlay in
// dir, else "native" (copies, slower but anywhere).
func overlaySnapshotter(t *testing.T, dir string) string {
	t.Helper()
	base := filepath.Join(dir, "overlay-check")
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work", base, base, base)
	if err := syscall.Mount("overlay", filepath.Join(base, "merged"), "overlay", 0, opts); err != nil {
		t.Logf("overlay mount: %v: containerd uses the native snapshotter", err)
		return "native"
	}
	if err := syscall.Unmount(filepath.Join(base, "merged"), 0); err != nil {
		t.Fatal(err)
	}
	return "overlayfs"
}

// addresses puts the kubernetes Service's address and the node's on the
// loopback interface, and proxies the Service's port 443 to the API server:
// the pods' in-cluster clients (CoreDNS's kubernetes plugin and ours) reach
// it as they would through kube-proxy.
func (n *node) addresses(t *testing.T, c *cluster) {
	t.Helper()
	for _, ip := range []string{kubernetesServiceIP, nodeIP} {
		if out, err := exec.Command("ip", "addr", "replace", ip+"/32", "dev", "lo").CombinedOutput(); err != nil {
			t.Fatalf("ip addr replace %s/32 dev lo: %v\n%s", ip, err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "addr", "del", ip+"/32", "dev", "lo").CombinedOutput(); err != nil {
				t.Errorf("ip addr del %s/32 dev lo: %v\n%s", ip, err, out)
			}
		})
	}
	l, err := net.Listen("tcp", net.JoinHostPort(kubernetesServiceIP, "443"))
	if err != nil {
		t.Fatalf("the kubernetes Service's address: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	apiserver := fmt.Sprintf("127.0.0.1:%d", c.port)
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.Dial("tcp", apiserver)
				if err != nil {
					return
				}
				defer out.Close()
				go func() { _, _ = io.Copy(out, in); out.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(in, out)
			}()
		}
	}()
}

// writeCNI writes the pods' network: a bridge on the host with addresses
// from podSubnet (host-local, its state in the test's folder), no NAT.
func (n *node) writeCNI(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(n.dir, "cni")
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "serviceentry-test",
		"plugins": []any{map[string]any{
			"type": "bridge", "bridge": bridgeName, "isGateway": true, "ipMasq": false, "hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": podSubnet}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": filepath.Join(n.dir, "cni-ipam"),
			},
		}},
	}
	data, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "10-serviceentry-test.conflist"), string(data))
	return dir
}

// teardown removes what the node made, in the order it depends on: the
// containers (killed, with their shims), the pods' network namespaces, the
// mounts under the node's folder, the bridge, the cgroups the kubelet made.
// It runs with containerd still up and the kubelet already stopped.
func (n *node) teardown(t *testing.T) {
	var netns []string
	out, err := n.ctr("containers", "list", "--quiet")
	if err != nil {
		t.Errorf("ctr containers list: %v: %s", err, out)
	}
	// The pods' containers first, their sandboxes last: a sandbox's shim
	// serves its pod's containers too, and exits with the sandbox.
	var containers, sandboxes []string
	for _, id := range strings.Fields(out) {
		info, err := n.ctr("containers", "info", id)
		if err != nil {
			t.Errorf("ctr containers info %s: %v: %s", id, err, info)
			continue
		}
		ns, sandbox := criContainer(info)
		netns = append(netns, ns...)
		if sandbox {
			sandboxes = append(sandboxes, id)
		} else {
			containers = append(containers, id)
		}
	}
	for _, id := range append(containers, sandboxes...) {
		// "not found": no task (never started, or already deleted); "ttrpc:
		// closed": its shim has exited already, with the pod's sandbox
		// stopped before (killStrays below checks that no shim is left).
		if out, err := n.ctr("tasks", "delete", "--force", id); err != nil && !strings.Contains(out, "not found") && !strings.Contains(out, "ttrpc: closed") {
			t.Errorf("ctr tasks delete --force %s: %v: %s", id, err, out)
		}
		if out, err := n.ctr("containers", "delete", id); err != nil {
			t.Errorf("ctr containers delete %s: %v: %s", id, err, out)
		}
	}
	for _, ns := range slices.Compact(slices.Sorted(slices.Values(netns))) {
		// What ip netns delete does: the bind mount that holds it, then the file.
		if err := syscall.Unmount(ns, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			t.Errorf("unmounting the network namespace %s: %v", ns, err)
		}
		if err := os.Remove(ns); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("removing the network namespace %s: %v", ns, err)
		}
	}
	n.killStrays(t)
	unmountUnder(t, n.dir)
	if _, err := net.InterfaceByName(bridgeName); err == nil {
		if out, err := exec.Command("ip", "link", "delete", bridgeName).CombinedOutput(); err != nil {
			t.Errorf("ip link delete %s: %v\n%s", bridgeName, err, out)
		}
	}
	removeCgroups(t, "kubepods")
}

// criContainer reads a container's `ctr containers info`: the path of the
// network namespace its spec names, if any (a pod's sandbox does), and
// whether it is a pod's sandbox (the CRI plugin's label).
func criContainer(info string) (netns []string, sandbox bool) {
	var c struct {
		Labels map[string]string `json:"Labels"`
		Spec   struct {
			Linux struct {
				Namespaces []struct{ Type, Path string } `json:"namespaces"`
			} `json:"linux"`
		} `json:"Spec"`
	}
	if json.Unmarshal([]byte(info), &c) != nil {
		return nil, false
	}
	for _, ns := range c.Spec.Linux.Namespaces {
		if ns.Type == "network" && ns.Path != "" {
			netns = append(netns, ns.Path)
		}
	}
	return netns, c.Labels["io.cri-containerd.kind"] == "sandbox"
}

// killStrays kills, by process ID, any process left that names the node's
// socket or folder: a shim whose task could not be deleted. A shim exits
// on its own once its pod's last container is deleted: it gets 10 s.
func (n *node) killStrays(t *testing.T) {
	strays := func() map[int]string {
		found := map[int]string{}
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			cmdline, err := os.ReadFile(p)
			if err != nil || !strings.Contains(string(cmdline), n.dir) {
				continue
			}
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			if pid != os.Getpid() && pid != n.containerd {
				found[pid] = strings.ReplaceAll(string(cmdline), "\x00", " ")
			}
		}
		return found
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(strays()) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	for pid, cmdline := range strays() {
		t.Errorf("process %d was left running: %q", pid, cmdline)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// unmountUnder unmounts every mount point under dir, deepest first: the
// kubelet's volumes, the sandboxes' /dev/shm, containers' root file systems.
func unmountUnder(t *testing.T, dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Field 5 is the mount point, octal-escaped.
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			p := unescapeMountinfo(fields[4])
			if strings.HasPrefix(p, dir+"/") {
				points = append(points, p)
			}
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	for _, p := range slices.Compact(points) {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("unmounting %s: %v", p, err)
		}
	}
}

func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeCgroups removes the cgroup named name at the top of every
// hierarchy, and every cgroup under it, once their processes are gone.
func removeCgroups(t *testing.T, name string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
	if top := "/sys/fs/cgroup/" + name; dirExists(top) {
		roots = append(roots, top)
	}
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.Reverse(dirs) // children before their parents
		for _, d := range dirs {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				t.Errorf("removing the cgroup %s: %v", d, err)
			}
		}
	}
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// killContainer kills pod p's container through containerd, as a crash
// would, for the kubelet to restart it in the same pod.
func (n *node) killContainer(t *testing.T, p corev1.Pod) {
	t.Helper()
	if len(p.Status.ContainerStatuses) == 0 {
		t.Fatalf("%s has no container to kill yet", p.Name)
	}
	id := strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
	if out, err := n.ctr("tasks", "kill", "--signal", "SIGKILL", id); err != nil {
		t.Fatalf("killing %s's container: %v\n%s", p.Name, err, out)
	}
}
