package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// inCluster is deploy/in-cluster's Corefile run as a pod would run it.
type inCluster struct {
	*coredns
	metricsAddr, healthAddr string
}

// runInCluster runs kube-system's Corefile (as given, e.g. read back from the
// API server) with only what a pod gets from the cluster substituted:
// loopback ports, a kubeconfig for each plugin's in-cluster credentials, and
// upstreamAddr for /etc/resolv.conf.
func runInCluster(t testing.TB, corefile, seKubeconfig, k8sKubeconfig, upstreamAddr string) *inCluster {
	t.Helper()
	// The queries of these tests come from 127.0.0.1, which no pod holds: a
	// client outside the mesh, which "clients pods" (the default) answers with
	// what Envoy would connect to. They test the layout and its sources, so
	// every client gets mesh answers; TestReachInKubeSystem asks as pods.
	return runInClusterAsShipped(t, replaceOnce(t, corefile, "serviceentry {", "serviceentry {\n       clients mesh"),
		seKubeconfig, k8sKubeconfig, upstreamAddr)
}

// runInClusterAsShipped is runInCluster without clients mesh: each client is
// answered by its pod, as the shipped stanza does. With seKubeconfig empty the
// Corefile has no serviceentry stanza: kubeadm's own.
func runInClusterAsShipped(t testing.TB, corefile, seKubeconfig, k8sKubeconfig, upstreamAddr string) *inCluster {
	t.Helper()
	dnsPort, readyPort, healthPort, metricsPort := freePort(t), freePort(t), freePort(t), freePort(t)
	corefile = replaceOnce(t, corefile, ".:53 {", fmt.Sprintf(".:%d {\n    bind 127.0.0.1", dnsPort))
	corefile = replaceOnce(t, corefile, "health {", fmt.Sprintf("health 127.0.0.1:%d {", healthPort))
	corefile = replaceOnce(t, corefile, "    ready\n", fmt.Sprintf("    ready 127.0.0.1:%d\n", readyPort))
	corefile = replaceOnce(t, corefile, "prometheus :9153", fmt.Sprintf("prometheus 127.0.0.1:%d", metricsPort))
	if seKubeconfig != "" {
		corefile = replaceOnce(t, corefile, "serviceentry {", "serviceentry {\n       kubeconfig "+seKubeconfig)
	}
	corefile = replaceOnce(t, corefile, "kubernetes cluster.local in-addr.arpa ip6.arpa {",
		"kubernetes cluster.local in-addr.arpa ip6.arpa {\n       kubeconfig "+k8sKubeconfig)
	corefile = replaceOnce(t, corefile, "forward . /etc/resolv.conf", "forward . "+upstreamAddr)
	return &inCluster{coredns: runCorefile(t, corefile, dnsPort, readyPort), metricsAddr: fmt.Sprintf("127.0.0.1:%d", metricsPort),
		healthAddr: fmt.Sprintf("127.0.0.1:%d", healthPort)}
}

// inClusterCorefile is the Corefile of deploy/in-cluster/coredns-configmap.yaml.
func inClusterCorefile(t testing.TB) string {
	t.Helper()
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal(deployFile(t, "in-cluster/coredns-configmap.yaml"), &cm); err != nil {
		t.Fatal(err)
	}
	return cm.Data["Corefile"]
}

// The upstream has its own record for the ServiceEntry host, so the tests
// can tell the two answers apart.
var upstreamRecords = map[string]string{"www.example.org.": "192.0.2.80", "api.external.example.": "203.0.113.77"}

const (
	entryHost     = "api.external.example"
	entryAnswer   = "NOERROR 198.51.100.7"
	upstreamEntry = "NOERROR 203.0.113.77" // what the upstream says for entryHost
)

// createWeb creates the Service "web" and returns its ClusterIP.
func createWeb(t testing.TB, c *cluster) string {
	t.Helper()
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	web, err := kube.CoreV1().Services("default").Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return web.Spec.ClusterIP
}

func createEntry(t testing.TB, c *cluster) {
	t.Helper()
	createNamespace(t, c, "bar")
	if _, err := c.istio(t).NetworkingV1().ServiceEntries("bar").Create(context.Background(),
		serviceEntry("bar", "external", []string{entryHost}, "198.51.100.7"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestInClusterWithoutIstio: a cluster without Istio's CRD is a valid state:
// kube-system's CoreDNS with the serviceentry stanza becomes ready and answers
// Kubernetes and external names; once the CRD and an entry appear, the entry
// is served without a restart.
func TestInClusterWithoutIstio(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	webIP := createWeb(t, c)
	kubeconfig := c.kubeconfig(t, adminToken)
	server := runInCluster(t, inClusterCorefile(t), kubeconfig, kubeconfig, upstream(t, upstreamRecords))

	waitFor(t, 30*time.Second, "ready without Istio", server.isReady)
	server.waitAnswer(t, 5*time.Second, "web.default.svc.cluster.local", dns.TypeA, "NOERROR "+webIP)
	server.waitAnswer(t, 5*time.Second, "www.example.org", dns.TypeA, "NOERROR 192.0.2.80")
	server.waitAnswer(t, 5*time.Second, entryHost, dns.TypeA, upstreamEntry)
	if n := strings.Count(server.output(), "Istio's CRD is not installed"); n != 1 {
		t.Errorf("the missing CRD is logged %d times, want once", n)
	}

	c.installCRDs(t, istioCRDs(t))
	createEntry(t, c)
	// Discovery is retried at most every 30 s.
	server.waitAnswer(t, 60*time.Second, entryHost, dns.TypeA, entryAnswer)
	if !server.isReady() {
		t.Error("not ready once the CRD is installed")
	}
}

// TestInClusterWithoutPermission: without RBAC for ServiceEntries the plugin
// says so and is not ready (a rollout stops on it), but Kubernetes and
// external names are answered as before.
func TestInClusterWithoutPermission(t *testing.T) {
	c := startCluster(t, "RBAC")
	c.installCRDs(t, istioCRDs(t))
	createEntry(t, c)
	webIP := createWeb(t, c)
	server := runInCluster(t, inClusterCorefile(t), c.kubeconfig(t, nobodyToken), c.kubeconfig(t, adminToken), upstream(t, upstreamRecords))

	server.waitListening(t, 30*time.Second)
	server.waitLog(t, 15*time.Second, "reading ServiceEntries is forbidden")
	server.waitAnswer(t, 10*time.Second, "web.default.svc.cluster.local", dns.TypeA, "NOERROR "+webIP)
	server.waitAnswer(t, 5*time.Second, "www.example.org", dns.TypeA, "NOERROR 192.0.2.80")
	server.waitAnswer(t, 5*time.Second, entryHost, dns.TypeA, upstreamEntry)
	if server.isReady() {
		t.Error("ready without permission to read ServiceEntries")
	}
}

// TestInClusterAPIServerDown: with the API server down at start, external
// names are answered at once (the ServiceEntry host too, by the upstream:
// the trade the README describes); once the API server is back the entry is
// served and the server becomes ready.
func TestInClusterAPIServerDown(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	createEntry(t, c)
	c.stopAPIServer()
	kubeconfig := c.kubeconfig(t, adminToken)
	server := runInCluster(t, inClusterCorefile(t), kubeconfig, kubeconfig, upstream(t, upstreamRecords))

	server.waitListening(t, 30*time.Second)
	server.waitAnswer(t, 5*time.Second, "www.example.org", dns.TypeA, "NOERROR 192.0.2.80")
	server.waitAnswer(t, 5*time.Second, entryHost, dns.TypeA, upstreamEntry)
	if server.isReady() {
		t.Error("ready with the API server down")
	}

	c.startAPIServer(t)
	server.waitAnswer(t, 60*time.Second, entryHost, dns.TypeA, entryAnswer)
	waitFor(t, 30*time.Second, "ready once the API server is back", server.isReady)
}

// sourceGoroutines counts the goroutines running the plugin's or client-go's
// code, from CoreDNS's pprof endpoint. (CoreDNS's own pprof plugin keeps a
// listener per failed reload; those are not ours to count.)
func sourceGoroutines(t testing.TB, pprofAddr string) int {
	t.Helper()
	n := 0
	for stack := range strings.SplitSeq(string(httpGet(t, "http://"+pprofAddr+"/debug/pprof/goroutine?debug=1")), "\n\n") {
		if !strings.Contains(stack, "serviceentry") && !strings.Contains(stack, "k8s.io/client-go") {
			continue
		}
		// The first group follows the profile's header line.
		_, group, _ := strings.Cut(stack, "goroutine profile:")
		if group != "" {
			_, stack, _ = strings.Cut(group, "\n")
		}
		var count int
		if _, err := fmt.Sscanf(stack, "%d @", &count); err == nil {
			n += count
		}
	}
	return n
}

// metric reads one unlabelled sample from CoreDNS's Prometheus endpoint.
func metric(t testing.TB, addr, name string) float64 {
	t.Helper()
	for line := range strings.Lines(string(httpGet(t, "http://"+addr+"/metrics"))) {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err != nil {
				t.Fatalf("%s %q: %v", name, rest, err)
			}
			return v
		}
	}
	t.Fatalf("no %s in the metrics", name)
	return 0
}

// TestReloadSoak: 10,000 entries from the real API server and 24 reloads
// (SIGUSR1) while a client keeps asking known and unknown names: reloads
// that change nothing or only the ttl, two that change the source
// (namespaces), and two that fail after our OnStartup (a server block on a
// taken port). No query may get SERVFAIL or a wrong answer, and goroutines
// and RSS must come back to their level.
func TestReloadSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 10,000 ServiceEntries")
	}
	const n = 10_000
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	createNamespace(t, c, "scale")
	createScaleEntries(t, c.istio(t), n)

	dnsPort, readyPort, metricsPort, pprofPort := freePort(t), freePort(t), freePort(t), freePort(t)
	metricsAddr, pprofAddr := fmt.Sprintf("127.0.0.1:%d", metricsPort), fmt.Sprintf("127.0.0.1:%d", pprofPort)
	kubeconfig := c.kubeconfig(t, adminToken)
	corefile := func(options, extra string) string {
		return fmt.Sprintf(".:%d {\n    bind 127.0.0.1\n    serviceentry scale.internal {\n        kubeconfig %s\n        startup_timeout 30s\n        clients mesh\n%s    }\n    ready 127.0.0.1:%d\n    prometheus %s\n    pprof %s\n}\n%s",
			dnsPort, kubeconfig, options, readyPort, metricsAddr, pprofAddr, extra)
	}
	server := runCorefile(t, corefile("", ""), dnsPort, readyPort)
	waitFor(t, 60*time.Second, "ready", server.isReady)
	server.waitAnswer(t, 5*time.Second, scaleHost(n-1), dns.TypeA, "NOERROR "+scaleAddr(n-1, 0))
	time.Sleep(5 * time.Second) // let the initial read's garbage go
	goroutinesBefore, oursBefore := metric(t, metricsAddr, "go_goroutines"), sourceGoroutines(t, pprofAddr)
	heapBefore := heapStat(t, pprofAddr, "HeapAlloc")
	profileBefore := httpGet(t, "http://"+pprofAddr+"/debug/pprof/heap?gc=1")
	rssBefore := settledRSS(t, server.process)

	stop := make(chan struct{})
	type tally struct{ queries, servfail, wrong, errors int }
	results := make(chan tally)
	go func() {
		var got tally
		for i := 0; ; i++ {
			select {
			case <-stop:
				results <- got
				return
			default:
			}
			name, want := scaleHost(i*7919%n), "NOERROR "+scaleAddr(i*7919%n, 0)
			if i%4 == 3 {
				name, want = fmt.Sprintf("absent-%d.scale.internal", i), "NXDOMAIN"
			}
			got.queries++
			switch answer := server.answer(t, name, dns.TypeA, "udp"); {
			case answer == want:
			case strings.HasPrefix(answer, "SERVFAIL"):
				got.servfail++
			case strings.HasPrefix(answer, "error"):
				got.errors++
			default:
				got.wrong++
				if got.wrong <= 5 {
					t.Logf("%s: got %q, want %q", name, answer, want)
				}
			}
		}
	}()

	taken := freePort(t)
	hold, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", taken))
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	plan := make([]string, 0, 24)
	for i := range 24 {
		switch {
		case i == 6 || i == 18:
			plan = append(plan, corefile("        namespaces scale\n", "")) // a new source
		case i == 7 || i == 19:
			plan = append(plan, corefile("", "")) // and back
		case i == 10 || i == 20:
			plan = append(plan, corefile("", fmt.Sprintf("other.:%d {\n    bind 127.0.0.1\n    whoami\n}\n", taken))) // fails
		default:
			plan = append(plan, corefile(fmt.Sprintf("        ttl %d\n", 30+i%2), ""))
		}
	}
	var reloadTimes []time.Duration
	for i, text := range plan {
		if err := os.WriteFile(server.corefile, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		done, failed := strings.Count(server.output(), "Reloading complete"), strings.Count(server.output(), "SIGUSR1: starting with listener")
		start := time.Now()
		if err := server.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, fmt.Sprintf("reload %d", i+1), func() bool {
			out := server.output()
			return strings.Count(out, "Reloading complete") > done || strings.Count(out, "SIGUSR1: starting with listener") > failed
		})
		reloadTimes = append(reloadTimes, time.Since(start))
		time.Sleep(500 * time.Millisecond)
	}
	close(stop)
	got := <-results
	if failed := strings.Count(server.output(), "SIGUSR1: starting with listener"); failed != 2 {
		t.Errorf("%d reloads failed, want the 2 planned", failed)
	}

	time.Sleep(5 * time.Second)
	goroutinesAfter, oursAfter := metric(t, metricsAddr, "go_goroutines"), sourceGoroutines(t, pprofAddr)
	heapAfter := heapStat(t, pprofAddr, "HeapAlloc")
	profileAfter := httpGet(t, "http://"+pprofAddr+"/debug/pprof/heap?gc=1")
	rssAfter := settledRSS(t, server.process)
	t.Logf("live heap %.1f -> %.1f MiB", float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20))
	meanMax := func(d []time.Duration) (time.Duration, time.Duration) {
		var max, sum time.Duration
		for _, x := range d {
			sum += x
			if x > max {
				max = x
			}
		}
		return sum / time.Duration(len(d)), max
	}
	mean, longest := meanMax(reloadTimes)
	t.Logf("%d reloads at %d entries: %d queries, %d SERVFAIL, %d wrong, %d timeouts; reload mean %v, longest %v; goroutines %.0f -> %.0f (ours and client-go's %d -> %d); RSS %.1f -> %.1f MiB",
		len(plan), n, got.queries, got.servfail, got.wrong, got.errors, mean.Round(time.Millisecond), longest.Round(time.Millisecond),
		goroutinesBefore, goroutinesAfter, oursBefore, oursAfter, float64(rssBefore)/(1<<20), float64(rssAfter)/(1<<20))
	if got.servfail > 0 || got.wrong > 0 {
		t.Errorf("during reloads: %d SERVFAIL and %d wrong answers of %d queries", got.servfail, got.wrong, got.queries)
	}
	if got.errors > 0 {
		t.Errorf("during reloads: %d queries got no answer", got.errors)
	}
	if oursAfter != oursBefore {
		t.Errorf("goroutines of the plugin and client-go: %d before the reloads, %d after:\n%s", oursBefore, oursAfter,
			httpGet(t, "http://"+pprofAddr+"/debug/pprof/goroutine?debug=1"))
	}
	if float64(heapAfter) > 1.25*float64(heapBefore) {
		t.Errorf("live heap %.1f MiB before the reloads, %.1f MiB after; what grew:\n%s",
			float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20), heapGrowth(t, profileBefore, profileAfter))
	}
	// Four of the reloads build a second informer cache and table while the
	// first keeps answering; what the allocator keeps of that peak is not a
	// leak, but it must stay bounded.
	if float64(rssAfter) > 1.5*float64(rssBefore) {
		t.Errorf("RSS %.1f MiB before the reloads, %.1f MiB after", float64(rssBefore)/(1<<20), float64(rssAfter)/(1<<20))
	}
}

// heapGrowth is pprof's account of what the after profile holds beyond the
// before one, so that a failure in CI shows where the memory is.
func heapGrowth(t *testing.T, before, after []byte) string {
	dir := t.TempDir()
	for name, profile := range map[string][]byte{"before": before, "after": after} {
		if err := os.WriteFile(filepath.Join(dir, name), profile, 0o644); err != nil {
			return err.Error()
		}
	}
	out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-sample_index=inuse_space", "-nodecount=40",
		"-base", filepath.Join(dir, "before"), filepath.Join(dir, "after")).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("go tool pprof: %v\n%s", err, out)
	}
	return string(out)
}
