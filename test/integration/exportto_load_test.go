package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	"istio.io/client-go/pkg/clientset/versioned"
)

// The shape of BenchmarkExportToLoad's data, the same as the Go benchmarks of
// section 6 of BENCHMARKS.md: every tenth entry is exported to one team
// namespace instead of to all, so every team namespace has an overlay.
const (
	loadEntries    = 10_000
	loadTeams      = 1_000
	loadClient     = "127.0.0.2" // the pod of loadClientTeam
	loadClientTeam = 42
)

// loadRuns is how many alternating repetitions the dnsperf benchmarks make,
// and how many seconds each run lasts: fewer and shorter with -short, the
// smoke check scripts/test runs.
func loadRuns() (reps, seconds int) {
	if testing.Short() {
		return 1, 2
	}
	return 5, 10
}

// loadPrivate reports whether entry i is exported to one team only, and to which.
func loadPrivate(i int) (team int, private bool) {
	return i / 10 % loadTeams, i%10 == 0
}

// BenchmarkExportToLoad measures, with dnsperf against the built binary and a
// real API server, what "exportto client" costs per query next to "exportto
// public": both servers read the same ServiceEntries and are asked the same
// public names from the address of a pod whose namespace has an overlay, so
// every query of the client server finds the client's namespace and looks at
// its overlay before the public table. A second query file mixes in that
// namespace's private host; the public server answers it NXDOMAIN, so that
// file is compared with the public-only file on the client server instead.
// Runs alternate between the variants (the machine is shared) and the figures
// are medians. It runs once whatever -benchtime says.
func BenchmarkExportToLoad(b *testing.B) {
	if _, err := exec.LookPath("dnsperf"); err != nil {
		b.Skip("dnsperf is not on PATH: apt-get install dnsperf (scripts/bench-load installs it)")
	}
	corednsBinary(b) // built before GOMAXPROCS is lowered below, which would slow the build
	c := startCluster(b, "AlwaysAllow")
	c.installCRDs(b, istioCRDs(b))
	team := fmt.Sprintf("team-%d", loadClientTeam)
	createNamespace(b, c, "scale", team)
	client, kube := c.unthrottled(b)
	began := time.Now()
	createLoadEntries(b, client)
	b.Logf("created %d ServiceEntries in %v", loadEntries, time.Since(began).Round(time.Millisecond))
	createPodAt(b, kube, team, "client", loadClient)

	// One core for CoreDNS and the other for dnsperf, as bench/load does, so
	// that the two do not take turns on the same core. Without SCHED_RR: the
	// API server, etcd and whatever else shares the machine would starve.
	b.Setenv("GOMAXPROCS", "1")
	kubeconfig := "kubeconfig " + c.kubeconfig(b, adminToken)
	servers := map[string]*coredns{
		"public": startCoreDNS(b, "scale.internal", kubeconfig, "exportto public"),
		"client": startCoreDNS(b, "scale.internal", kubeconfig, "exportto client"),
	}
	privateI := 10 * loadClientTeam // the first entry exported to the client's team
	if tm, ok := loadPrivate(privateI); !ok || tm != loadClientTeam {
		b.Fatalf("entry %d is not %s's", privateI, team)
	}
	private, privateAddr := scaleHost(privateI), scaleAddr(privateI, 0)
	publicI := privateI + 1
	for name, s := range servers {
		waitFor(b, 5*time.Minute, "CoreDNS ("+name+") ready", s.isReady)
		pinLoad(b, "0", s.process.cmd.Process.Pid)
		s.waitAnswer(b, 10*time.Second, scaleHost(publicI), dns.TypeA, "NOERROR "+scaleAddr(publicI, 0))
	}
	// Ready follows the entries, not the pods: wait until the client's pod is known.
	waitFor(b, time.Minute, private+" from "+loadClient, func() bool {
		return servers["client"].answerFrom(b, private, dns.TypeA, "udp", loadClient) == "NOERROR "+privateAddr
	})
	if got := servers["public"].answerFrom(b, private, dns.TypeA, "udp", loadClient); got != "NXDOMAIN" {
		b.Fatalf("exportto public: %s from %s: %s, want NXDOMAIN", private, loadClient, got)
	}

	dir := b.TempDir()
	publicFile, mixFile := filepath.Join(dir, "public"), filepath.Join(dir, "mix")
	writeLoadQueries(b, publicFile, "")
	writeLoadQueries(b, mixFile, private)

	type variant struct{ name, server, queries string }
	variants := []variant{
		{"public", "public", publicFile},
		{"client", "client", publicFile},
		{"client+private", "client", mixFile},
	}
	for _, v := range variants { // warm up: first lookups, buffers, the Go heap
		_, _ = loadDNSPerf(b, servers[v.server], loadClient, v.queries, "2")
	}
	qps, cpuPerQuery := map[string][]float64{}, map[string][]float64{}
	loadReps, loadLength := loadRuns()
	for rep := range loadReps {
		order := slices.Clone(variants)
		if rep%2 == 1 {
			slices.Reverse(order) // neither variant always runs first
		}
		for _, v := range order {
			// The server's CPU per query and its share of its core show
			// whether the server, not dnsperf, is what saturates.
			p := servers[v.server].process
			cpu0, wall0 := processCPU(b, p), time.Now()
			q, completed := loadDNSPerf(b, servers[v.server], loadClient, v.queries, strconv.Itoa(loadLength))
			cpu, wall := processCPU(b, p)-cpu0, time.Since(wall0)
			b.Logf("rep %d %-15s %8.0f QPS, server CPU %.1f µs/query, %.0f %% of its core",
				rep+1, v.name, q, float64(cpu.Microseconds())/completed, 100*cpu.Seconds()/wall.Seconds())
			qps[v.name] = append(qps[v.name], q)
			cpuPerQuery[v.name] = append(cpuPerQuery[v.name], float64(cpu.Microseconds())/completed)
		}
	}
	median := func(v []float64) float64 {
		v = slices.Sorted(slices.Values(v))
		return v[len(v)/2]
	}
	// The ratio of each repetition's runs as well: they ran seconds apart, so
	// slow drift of the machine's other load cancels out of them.
	ratios := func(num, den string) []float64 {
		r := make([]float64, loadReps)
		for i := range r {
			r[i] = qps[num][i] / qps[den][i]
		}
		return r
	}
	public, clientQPS, mix := median(qps["public"]), median(qps["client"]), median(qps["client+private"])
	b.Logf("medians of %d runs of %d s, from %s (a pod of %s, whose namespace has an overlay): "+
		"exportto public %.0f QPS, exportto client %.0f QPS, client ÷ public %.3f (median of each repetition's ratio %.3f); "+
		"exportto client with the namespace's private host as a tenth of the queries %.0f QPS, "+
		"÷ the same server on public names only %.3f (median of each repetition's ratio %.3f)",
		loadReps, loadLength, loadClient, team, public, clientQPS, clientQPS/public, median(ratios("client", "public")),
		mix, mix/clientQPS, median(ratios("client+private", "client")))
	b.ReportMetric(public, "public-qps")
	b.ReportMetric(clientQPS, "client-qps")
	b.ReportMetric(clientQPS/public, "client/public")
	b.ReportMetric(mix, "client-mix-qps")
	b.ReportMetric(mix/clientQPS, "mix/client")
	b.ReportMetric(median(ratios("client", "public")), "client/public-paired")
	b.ReportMetric(median(ratios("client+private", "client")), "mix/client-paired")
	// CPU per query moves less than QPS when other work takes the server's
	// core away: the inverse ratio is the QPS ratio of an unshared core.
	cpuPublic, cpuClient, cpuMix := median(cpuPerQuery["public"]), median(cpuPerQuery["client"]), median(cpuPerQuery["client+private"])
	b.Logf("server CPU per query, medians: exportto public %.2f µs, exportto client %.2f µs (public ÷ client %.3f), "+
		"with the private host mixed in %.2f µs (client ÷ mix %.3f)", cpuPublic, cpuClient, cpuPublic/cpuClient, cpuMix, cpuClient/cpuMix)
	b.ReportMetric(cpuPublic, "public-cpu-us/q")
	b.ReportMetric(cpuClient, "client-cpu-us/q")
	b.ReportMetric(cpuMix, "client-mix-cpu-us/q")
}

// createLoadEntries creates the entries of createScaleEntries' names and
// addresses, with the exportTo of loadPrivate.
func createLoadEntries(b testing.TB, client versioned.Interface) {
	createEntries(b, client, loadEntries, func(i int) *clientv1.ServiceEntry {
		se := serviceEntry("scale", fmt.Sprintf("svc-%d", i), []string{scaleHost(i)}, scaleAddr(i, 0))
		if team, private := loadPrivate(i); private {
			se.Spec.ExportTo = []string{fmt.Sprintf("team-%d", team)}
		}
		return se
	})
}

// writeLoadQueries writes A queries for public hosts drawn over all entries
// (the same draw for every file) and, when private is set, that host in place
// of a tenth of them, so the two files differ only there.
func writeLoadQueries(b testing.TB, path, private string) {
	var buf bytes.Buffer
	r := rand.New(rand.NewPCG(loadEntries, 1))
	for range 100_000 {
		i := r.IntN(loadEntries)
		if _, p := loadPrivate(i); p {
			i++ // its public neighbour: private hosts only go where asked
		}
		name := scaleHost(i)
		if r.IntN(10) == 0 && private != "" {
			name = private
		}
		fmt.Fprintf(&buf, "%s A\n", name)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}
}

var (
	loadQPS       = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	loadCompleted = regexp.MustCompile(`Queries completed:\s+([0-9]+)`)
	loadCodes     = regexp.MustCompile(`Response codes:\s+(.*)`)
)

// loadDNSPerf runs dnsperf from the address from for seconds against s
// (dnsperfFrom) and returns its queries per second and the number of queries
// answered.
func loadDNSPerf(b testing.TB, s *coredns, from, queries, seconds string) (qps, completed float64) {
	out := dnsperfFrom(b, s, from, queries, "-l", seconds, "-c", "4")
	return dnsperfFigure(b, out, loadQPS), dnsperfFigure(b, out, loadCompleted)
}

// dnsperfFigure is the number re finds in dnsperf's output.
func dnsperfFigure(b testing.TB, out string, re *regexp.Regexp) float64 {
	m := re.FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("no %s in dnsperf's output:\n%s", re, out)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// dnsperfFrom is dnsperfAnswered where any answer but NOERROR fails: it
// would mean the client was not placed as the benchmark means it to be.
func dnsperfFrom(b testing.TB, s *coredns, from, queries string, args ...string) string {
	return dnsperfAnswered(b, s, from, queries, []string{"NOERROR"}, args...)
}

// dnsperfAnswered runs dnsperf with args from the address from against s,
// pinned to the core CoreDNS is not on, and returns its output. A response
// code other than those answered fails.
func dnsperfAnswered(b testing.TB, s *coredns, from, queries string, answered []string, args ...string) string {
	host, port, _ := strings.Cut(s.dnsAddr, ":")
	args = append([]string{"-c", "1", "dnsperf", "-a", from, "-s", host, "-p", port, "-d", queries}, args...)
	out, err := exec.Command("taskset", args...).CombinedOutput()
	if err != nil {
		b.Fatalf("taskset %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	codes := loadCodes.FindStringSubmatch(string(out))
	if codes == nil {
		b.Fatalf("dnsperf: no response codes:\n%s", out)
	}
	for _, code := range strings.Split(codes[1], ", ") {
		if !slices.Contains(answered, strings.Fields(code)[0]) {
			b.Fatalf("dnsperf: want %s answers only:\n%s", strings.Join(answered, " or "), out)
		}
	}
	return string(out)
}

// pinLoad moves every thread of a running process to the given CPUs.
func pinLoad(b testing.TB, cpus string, pid int) {
	if out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(pid)).CombinedOutput(); err != nil {
		b.Fatalf("taskset -a -p -c %s %d: %v\n%s", cpus, pid, err, out)
	}
}
