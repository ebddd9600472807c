package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/bench/passthrough"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The data of BenchmarkPassThroughChain.
const (
	chainClient   = "127.0.0.2" // a plain pod of team-0: outside the mesh
	chainServices = 10          // Services per team namespace (the test cluster's Service range holds 253)
	// External names come from chainVendors vendors of passthrough.APIs
	// names each: a few hundred, as a cluster's workloads call, so that
	// cache answers most of them after the first second of a run, as it
	// does in a cluster (with thousands, most runs would be the upstream's).
	chainVendors = 2
)

// chainSizes is how many ServiceEntries and other pods BenchmarkPassThroughChain
// loads: fewer with -short, the smoke check scripts/test runs, and
// SERVICEENTRY_PASSTHROUGH_ENTRIES entries when set (100,000 for target 1's
// second size).
func chainSizes(b *testing.B) (entries, pods int) {
	entries, pods = loadEntries, reachLoadPods
	if testing.Short() {
		entries, pods = 1_000, 100
	}
	if s := os.Getenv("SERVICEENTRY_PASSTHROUGH_ENTRIES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("SERVICEENTRY_PASSTHROUGH_ENTRIES=%q: want a positive number", s)
		}
		entries = n
	}
	return entries, pods
}

// chainVariant is one server of BenchmarkPassThroughChain: kube-system's
// Corefile with stanza in place of the shipped serviceentry block ("" for
// none: kubeadm's own chain).
type chainVariant struct {
	name, stanza string
	mesh         bool // the stanza answers every client as a mesh proxy
}

var chainVariants = []chainVariant{
	{"stock", "", false},
	{"fallthrough", "fallthrough\n       clients mesh", true},
	{"shipped", "fallthrough\n       searchpath", false},
	{"exportto-client", "fallthrough\n       searchpath\n       exportto client", false},
}

// shippedStanza is the serviceentry block of deploy/in-cluster's Corefile.
const shippedStanza = "    serviceentry {\n       fallthrough\n       searchpath\n    }\n"

// BenchmarkPassThroughChain measures, with dnsperf against the built binary and
// a real API server, what the plugin costs the names that are not its own in
// kube-system's own chain (issue 27, target 1): deploy/in-cluster's Corefile,
// kubeadm's with the stanza (kubernetes reading the API server, forward to an
// upstream, cache 30 with cluster.local not cached, loadbalance), against the
// same Corefile without the stanza ("stock"), all four servers running at
// once. The stanza is the shipped one (fallthrough, searchpath, each client
// answered by its pod), the same with "exportto client", and the least one
// (fallthrough, every client mesh). The queries are bench/passthrough's mix,
// asked from a pod's address: Services of 20 namespaces (answered by
// kubernetes), their search-list expansions and those of external names
// (kubernetes' NXDOMAIN), and the external names (cache, after the first from
// the upstream); none is a ServiceEntry host. Runs alternate, and each
// variant is compared with stock within its repetition. It runs once
// whatever -benchtime says.
func BenchmarkPassThroughChain(b *testing.B) {
	if _, err := exec.LookPath("dnsperf"); err != nil {
		b.Skip("dnsperf is not on PATH: apt-get install dnsperf (scripts/bench-load installs it)")
	}
	corednsBinary(b) // built before GOMAXPROCS is lowered below, which would slow the build
	entries, pods := chainSizes(b)
	c := startCluster(b, "AlwaysAllow")
	c.installCRDs(b, istioCRDs(b))
	createNamespace(b, c, "scale")
	client, kube := c.unthrottled(b)
	began := time.Now()
	createNamespaces(b, kube, "team", passthrough.Namespaces)
	createEntries(b, client, entries, reachLoadEntry)
	createScalePods(b, kube, pods)
	createPodAt(b, kube, "team-0", "client", chainClient)
	serviceIP := createChainServices(b, kube)
	b.Logf("created %d ServiceEntries, %d pods and %d Services in %v", entries, pods+1, passthrough.Namespaces*chainServices,
		time.Since(began).Round(time.Millisecond))

	records := make(map[string]string, passthrough.APIs*chainVendors)
	for api := range passthrough.APIs {
		for vendor := range chainVendors {
			records[passthrough.External(api, vendor)+"."] = fmt.Sprintf("192.0.2.%d", api)
		}
	}
	up := upstream(b, records)

	// One core for CoreDNS and the other for dnsperf, as BenchmarkExportToLoad.
	b.Setenv("GOMAXPROCS", "1")
	kubeconfig := c.kubeconfig(b, adminToken)
	servers, pprofAddr := map[string]*inCluster{}, map[string]string{}
	for _, v := range chainVariants {
		corefile, seKubeconfig := replaceOnce(b, inClusterCorefile(b), shippedStanza, ""), ""
		if v.stanza != "" {
			corefile, seKubeconfig = replaceOnce(b, inClusterCorefile(b), shippedStanza, "    serviceentry {\n       "+v.stanza+"\n    }\n"), kubeconfig
		}
		pprofAddr[v.name] = fmt.Sprintf("127.0.0.1:%d", freePort(b))
		corefile = replaceOnce(b, corefile, "    errors\n", "    errors\n    pprof "+pprofAddr[v.name]+"\n")
		servers[v.name] = runInClusterAsShipped(b, corefile, seKubeconfig, kubeconfig, up)
	}
	// Each chain answers a Service, an external name and, with the plugin,
	// a ServiceEntry host as the client's class gets it: its pod is known.
	mesh, outside := scaleAddr(1, 0), reachLoadEntry(1).Spec.Endpoints[0].Address
	for _, v := range chainVariants {
		s := servers[v.name]
		waitFor(b, 5*time.Minute, "CoreDNS ("+v.name+") ready", s.isReady)
		pinLoad(b, "0", s.process.cmd.Process.Pid)
		want := map[string]string{
			"svc-1.team-3.svc.cluster.local":        "NOERROR " + serviceIP["svc-1.team-3"],
			passthrough.External(7, 1):              "NOERROR 192.0.2.7",
			"svc-1.team-3.team-0.svc.cluster.local": "NXDOMAIN",
			scaleHost(1):                            "NXDOMAIN",
		}
		switch {
		case v.mesh:
			want[scaleHost(1)] = "NOERROR " + mesh
		case v.stanza != "":
			want[scaleHost(1)] = "NOERROR " + outside
		}
		for name, answer := range want {
			waitFor(b, time.Minute, fmt.Sprintf("%s: %s from %s", v.name, name, chainClient), func() bool {
				return s.answerFrom(b, name, dns.TypeA, "udp", chainClient) == answer
			})
		}
	}

	// Core 0 is CoreDNS's alone: the upstream (this process) and the API
	// server share dnsperf's.
	pinLoad(b, "1", os.Getpid())
	pinLoad(b, "1", c.apiserver.cmd.Process.Pid)

	queries := filepath.Join(b.TempDir(), "queries")
	if err := os.WriteFile(queries, passthrough.Queries(uint64(entries), chainServices, chainVendors), 0o644); err != nil {
		b.Fatal(err)
	}
	answered := []string{"NOERROR", "NXDOMAIN"}
	for _, v := range chainVariants { // warm up: the cache, first lookups, buffers, the Go heap
		dnsperfAnswered(b, servers[v.name].coredns, chainClient, queries, answered, "-l", "2", "-c", "4")
	}
	reps, length := loadRuns()
	qps, cpu, p99 := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	for rep := range reps {
		order := slices.Clone(chainVariants)
		if rep%2 == 1 {
			slices.Reverse(order) // no variant always runs first
		}
		for _, v := range order {
			s := servers[v.name]
			cpu0 := processCPU(b, s.process)
			out := dnsperfAnswered(b, s.coredns, chainClient, queries, answered, "-l", strconv.Itoa(length), "-c", "4")
			q, completed := dnsperfFigure(b, out, loadQPS), dnsperfFigure(b, out, loadCompleted)
			used := processCPU(b, s.process) - cpu0
			qps[v.name] = append(qps[v.name], q)
			cpu[v.name] = append(cpu[v.name], float64(used.Microseconds())/completed)
			b.Logf("rep %d %-15s %8.0f QPS, server CPU %.2f µs/query", rep+1, v.name, q, cpu[v.name][rep])
		}
		for _, v := range order {
			out := dnsperfAnswered(b, servers[v.name].coredns, chainClient, queries, answered,
				"-l", strconv.Itoa(length), "-Q", strconv.Itoa(reachLoadRate), "-v")
			_, l99 := queryLatencies(b, out)
			p99[v.name] = append(p99[v.name], l99)
			b.Logf("rep %d %-15s at %d QPS: p99 %.3f ms", rep+1, v.name, reachLoadRate, l99)
		}
	}
	// With SERVICEENTRY_PROFILES set, one more run of each variant, not
	// counted, with a CPU profile and an execution trace of its server.
	if os.Getenv("SERVICEENTRY_PROFILES") != "" {
		for _, v := range chainVariants {
			wait := profileDuring(b, pprofAddr[v.name], 8*time.Second, "chain-"+v.name)
			dnsperfAnswered(b, servers[v.name].coredns, chainClient, queries, answered, "-l", "10", "-c", "4")
			wait()
		}
	}
	median := func(v []float64) float64 {
		v = slices.Sorted(slices.Values(v))
		return v[len(v)/2]
	}
	// Each repetition's ratio: its runs were seconds apart, so slow drift of
	// the machine's other load cancels out of them.
	paired := func(m map[string][]float64, name string) float64 {
		r := make([]float64, reps)
		for i := range r {
			r[i] = m[name][i] / m["stock"][i]
		}
		return median(r)
	}
	for _, v := range chainVariants {
		b.Logf("%d entries, medians of %d runs of %d s: %-15s %8.0f QPS (÷ stock, paired %.3f), server CPU %.2f µs/query (÷ stock %.3f), "+
			"p99 at %d QPS %.3f ms (÷ stock %.3f)", entries, reps, length, v.name, median(qps[v.name]), paired(qps, v.name),
			median(cpu[v.name]), paired(cpu, v.name), reachLoadRate, median(p99[v.name]), paired(p99, v.name))
		b.ReportMetric(paired(qps, v.name), v.name+"-qps/stock")
		b.ReportMetric(paired(p99, v.name), v.name+"-p99/stock")
		b.ReportMetric(median(cpu[v.name]), v.name+"-cpu-us/q")
	}
}

// createChainServices creates Services svc-0 … svc-<chainServices-1> in each
// namespace the queries name and returns their ClusterIPs by
// <name>.<namespace>.
func createChainServices(b *testing.B, kube kubernetes.Interface) map[string]string {
	ips := make(map[string]string)
	for team := range passthrough.Namespaces {
		ns := fmt.Sprintf("team-%d", team)
		for i := range chainServices {
			svc, err := kube.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", i)},
				Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
			}, metav1.CreateOptions{})
			if err != nil {
				b.Fatal(err)
			}
			ips[svc.Name+"."+ns] = svc.Spec.ClusterIP
		}
	}
	return ips
}
