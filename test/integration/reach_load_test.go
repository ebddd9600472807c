package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
)

// The clients of BenchmarkReachLoad: pods of the fixtures, at loopback
// addresses dnsperf can send from.
const (
	reachLoadMesh    = "127.0.0.2" // ambient, redirection enabled
	reachLoadOutside = "127.0.0.3" // a plain pod
	reachLoadPods    = 10_000      // other pods, so that the index is not trivially small
	reachLoadRate    = 5000        // queries per second of the latency runs, below saturation
)

// reachLoadEntry is entry i of BenchmarkReachLoad, of one of the two forms
// whose answer differs by class: resolution DNS with an auto-allocated
// address in status and an IP endpoint (mesh clients get the VIP, outside
// clients the endpoint), and STATIC with a declared address and an IP
// endpoint (mesh clients get the declared address, outside clients the
// endpoint). One address per answer either way, so that the two classes
// differ only in how their answer is chosen.
func reachLoadEntry(i int) *clientv1.ServiceEntry {
	host := scaleHost(i)
	endpoint := fmt.Sprintf("198.18.%d.%d", i>>8&0xff, i&0xff)
	se := serviceEntry("scale", fmt.Sprintf("svc-%d", i), []string{host})
	se.Spec.Endpoints = []*networking.WorkloadEntry{{Address: endpoint}}
	if i%2 == 0 {
		se.Status.Addresses = []*networking.ServiceEntryAddress{{Host: host, Value: scaleAddr(i, 0)}}
	} else {
		se.Spec.Resolution = networking.ServiceEntry_STATIC
		se.Spec.Addresses = []string{scaleAddr(i, 0)}
	}
	return se
}

// BenchmarkReachLoad measures, with dnsperf against the built binary and a
// real API server, what a client outside the mesh costs per query next to a
// mesh client under "clients pods": one server reads loadEntries
// ServiceEntries of reachLoadEntry's forms and reachLoadPods pods, and is
// asked the same names from an ambient pod's address and from a plain pod's.
// Throughput runs alternate between the two (mesh, outside, outside, mesh,
// ...), and each repetition's ratio is taken as well as the ratio of the
// medians; then latency at a fixed rate, alternating too. It runs once
// whatever -benchtime says.
func BenchmarkReachLoad(b *testing.B) {
	if _, err := exec.LookPath("dnsperf"); err != nil {
		b.Skip("dnsperf is not on PATH: apt-get install dnsperf (scripts/bench-load installs it)")
	}
	corednsBinary(b) // built before GOMAXPROCS is lowered below, which would slow the build
	c := startCluster(b, "AlwaysAllow")
	c.installCRDs(b, istioCRDs(b))
	createNamespace(b, c, "scale", "store", "legacy")
	client, kube := c.unthrottled(b)
	began := time.Now()
	createEntries(b, client, loadEntries, reachLoadEntry)
	createScalePods(b, kube, reachLoadPods)
	createFixturePod(b, kube, "ambient-enabled", "", reachLoadMesh, nil)
	createFixturePod(b, kube, "plain", "", reachLoadOutside, nil)
	b.Logf("created %d ServiceEntries and %d pods in %v", loadEntries, reachLoadPods+2, time.Since(began).Round(time.Millisecond))

	// One core for CoreDNS and the other for dnsperf, as BenchmarkExportToLoad.
	b.Setenv("GOMAXPROCS", "1")
	s := startCoreDNS(b, "scale.internal", "kubeconfig "+c.kubeconfig(b, adminToken), "clients pods")
	waitFor(b, 5*time.Minute, "CoreDNS ready", s.isReady)
	pinLoad(b, "0", s.process.cmd.Process.Pid)
	// Ready means the pods are in: each client gets its class's answer.
	for _, i := range []int{0, 1, loadEntries - 1} {
		mesh, outside := "NOERROR "+scaleAddr(i, 0), "NOERROR "+reachLoadEntry(i).Spec.Endpoints[0].Address
		for from, want := range map[string]string{reachLoadMesh: mesh, reachLoadOutside: outside} {
			if got := s.answerFrom(b, scaleHost(i), dns.TypeA, "udp", from); got != want {
				b.Fatalf("%s from %s: %q, want %q", scaleHost(i), from, got, want)
			}
		}
	}

	queries := filepath.Join(b.TempDir(), "queries")
	var buf bytes.Buffer
	r := rand.New(rand.NewPCG(loadEntries, 2))
	for range 100_000 {
		fmt.Fprintf(&buf, "%s A\n", scaleHost(r.IntN(loadEntries)))
	}
	if err := os.WriteFile(queries, buf.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}

	clients := []struct{ name, from string }{{"mesh", reachLoadMesh}, {"outside", reachLoadOutside}}
	for _, cl := range clients { // warm up: first lookups, buffers, the Go heap
		loadDNSPerf(b, s, cl.from, queries, "2")
	}
	qps, cpuPerQuery, p50, p99 := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	loadReps, loadLength := loadRuns()
	for rep := range loadReps {
		order := slices.Clone(clients)
		if rep%2 == 1 {
			slices.Reverse(order) // neither class always runs first
		}
		for _, cl := range order {
			cpu0, wall0 := processCPU(b, s.process), time.Now()
			q, completed := loadDNSPerf(b, s, cl.from, queries, strconv.Itoa(loadLength))
			cpu, wall := processCPU(b, s.process)-cpu0, time.Since(wall0)
			b.Logf("rep %d %-7s %8.0f QPS, server CPU %.1f µs/query, %.0f %% of its core",
				rep+1, cl.name, q, float64(cpu.Microseconds())/completed, 100*cpu.Seconds()/wall.Seconds())
			qps[cl.name] = append(qps[cl.name], q)
			cpuPerQuery[cl.name] = append(cpuPerQuery[cl.name], float64(cpu.Microseconds())/completed)
		}
	}
	for rep := range loadReps {
		order := slices.Clone(clients)
		if rep%2 == 1 {
			slices.Reverse(order)
		}
		for _, cl := range order {
			out := dnsperfFrom(b, s, cl.from, queries, "-l", strconv.Itoa(loadLength), "-Q", strconv.Itoa(reachLoadRate), "-v")
			l50, l99 := queryLatencies(b, out)
			b.Logf("rep %d %-7s at %d QPS: p50 %.3f ms, p99 %.3f ms", rep+1, cl.name, reachLoadRate, l50, l99)
			p50[cl.name] = append(p50[cl.name], l50)
			p99[cl.name] = append(p99[cl.name], l99)
		}
	}
	median := func(v []float64) float64 {
		v = slices.Sorted(slices.Values(v))
		return v[len(v)/2]
	}
	paired := make([]float64, loadReps)
	for i := range paired {
		paired[i] = qps["outside"][i] / qps["mesh"][i]
	}
	mesh, outside := median(qps["mesh"]), median(qps["outside"])
	b.Logf("medians of %d runs of %d s, %d entries, %d pods, clients pods: mesh client (%s) %.0f QPS, %.2f µs CPU/query; "+
		"outside client (%s) %.0f QPS, %.2f µs CPU/query; outside ÷ mesh %.3f (median of each repetition's ratio %.3f); "+
		"at %d QPS: mesh p50 %.3f ms p99 %.3f ms, outside p50 %.3f ms p99 %.3f ms",
		loadReps, loadLength, loadEntries, reachLoadPods+2, reachLoadMesh, mesh, median(cpuPerQuery["mesh"]),
		reachLoadOutside, outside, median(cpuPerQuery["outside"]), outside/mesh, median(paired),
		reachLoadRate, median(p50["mesh"]), median(p99["mesh"]), median(p50["outside"]), median(p99["outside"]))
	b.ReportMetric(mesh, "mesh-qps")
	b.ReportMetric(outside, "outside-qps")
	b.ReportMetric(outside/mesh, "outside/mesh")
	b.ReportMetric(median(paired), "outside/mesh-paired")
	b.ReportMetric(median(cpuPerQuery["mesh"]), "mesh-cpu-us/q")
	b.ReportMetric(median(cpuPerQuery["outside"]), "outside-cpu-us/q")
	b.ReportMetric(median(p99["mesh"]), "mesh-p99-ms")
	b.ReportMetric(median(p99["outside"]), "outside-p99-ms")
}

// queryLatencies reads dnsperf -v lines ("> NOERROR name A 0.000095") and
// returns p50 and p99 in milliseconds, as bench/load does. Lost queries
// ("> T name A") are not counted.
func queryLatencies(b testing.TB, out string) (p50, p99 float64) {
	var ms []float64
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 5 || fields[0] != ">" {
			continue
		}
		if s, err := strconv.ParseFloat(fields[4], 64); err == nil {
			ms = append(ms, s*1000)
		}
	}
	if len(ms) < 100 {
		b.Fatalf("only %d latencies in dnsperf -v output", len(ms))
	}
	slices.Sort(ms)
	return ms[len(ms)/2], ms[len(ms)*99/100]
}
