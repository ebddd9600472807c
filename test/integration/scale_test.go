package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	"istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// scaleEntries is how many ServiceEntries BenchmarkScale creates:
// SERVICEENTRY_SCALE_ENTRIES, 10,000 unless set (scripts/bench-scale uses 100,000).
func scaleEntries(b *testing.B) int {
	n := 10_000
	if s := os.Getenv("SERVICEENTRY_SCALE_ENTRIES"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			b.Fatalf("SERVICEENTRY_SCALE_ENTRIES=%q: want a positive number", s)
		}
	}
	return n
}

// BenchmarkScale measures the plugin against a real API server holding n
// ServiceEntries: the time from starting CoreDNS to ready, its RSS (and the
// RSS per entry above the same binary reading an empty namespace), and the
// apply -> answer latency of address changes made at 100 per second.
// It runs once whatever -benchtime says: the figures are its metrics.
func BenchmarkScale(b *testing.B) {
	n := scaleEntries(b)
	c := startCluster(b, "AlwaysAllow")
	c.installCRDs(b, istioCRDs(b))
	createNamespace(b, c, "scale", "empty")
	client, _ := c.unthrottled(b)
	kubeconfig := c.kubeconfig(b, adminToken)

	base := startCoreDNS(b, "scale.internal", "kubeconfig "+kubeconfig, "namespaces empty")
	waitFor(b, 60*time.Second, "CoreDNS ready on an empty namespace", base.isReady)
	baseRSS := settledRSS(b, base.process)
	base.stop()

	began := time.Now()
	createScaleEntries(b, client, n)
	created := time.Since(began)
	b.Logf("created %d ServiceEntries in %v (%.0f/s)", n, created.Round(time.Millisecond), float64(n)/created.Seconds())

	floor := listFloor(b, client.NetworkingV1().RESTClient(), "scale", "serviceentries")
	watchFloor := watchListFloor(b, client.NetworkingV1().RESTClient(), "scale", "serviceentries")
	b.Logf("bare LIST %v, bare WatchList %v (%.2f× the LIST)", floor.Round(time.Millisecond), watchFloor.Round(time.Millisecond), watchFloor.Seconds()/floor.Seconds())
	b.ReportMetric(watchFloor.Seconds()/floor.Seconds(), "bare-watchlist/bare-list")
	if baseline := os.Getenv("SERVICEENTRY_BASELINE"); baseline != "" {
		compareReady(b, baseline, kubeconfig, floor, n)
	}

	// The same binary reads the entries with a LIST (WatchList off),
	// then with WatchList (client-go's default, streamed initial events);
	// the second one stays for the rest of the benchmark.
	modes := []struct {
		name string
		env  []string
	}{
		{"LIST", []string{"KUBE_FEATURE_WatchListClient=false"}},
		{"WatchList", nil},
	}
	var (
		dnsServer       *coredns
		pprofAddr       string
		ready           time.Duration
		peak, rss       int64
		listReady       time.Duration
		listPeak, lsRSS int64
	)
	for m, mode := range modes {
		pprofAddr = fmt.Sprintf("127.0.0.1:%d", freePort(b))
		began = time.Now()
		dnsServer = startCoreDNSEnv(b, mode.env, []string{"pprof " + pprofAddr}, "scale.internal",
			"kubeconfig "+kubeconfig, "namespaces scale", "startup_timeout 1s")
		waitFor(b, 10*time.Minute, "CoreDNS ready", dnsServer.isReady)
		ready = time.Since(began)
		for _, i := range []int{0, n / 2, n - 1} {
			dnsServer.waitAnswer(b, 5*time.Second, scaleHost(i), dns.TypeA, "NOERROR "+scaleAddr(i, 0))
		}
		peak = procStatus(b, dnsServer.process, "VmHWM") // the initial sync's high-water mark
		rss = settledRSS(b, dnsServer.process)
		b.Logf("%s: start -> ready %v (%.2f× a bare LIST of %v); peak RSS %.1f MiB, settled %.1f MiB (peak %.2f× settled)",
			mode.name, ready.Round(time.Millisecond), ready.Seconds()/floor.Seconds(), floor.Round(time.Millisecond),
			float64(peak)/(1<<20), float64(rss)/(1<<20), float64(peak)/float64(rss))
		if m < len(modes)-1 {
			listReady, listPeak, lsRSS = ready, peak, rss
			dnsServer.stop()
		}
	}
	heapInuse := heapStat(b, pprofAddr, "HeapInuse")
	saveProfile(b, pprofAddr, "heap?gc=1", fmt.Sprintf("heap-%d.pb.gz", n))

	// First the CPU cost of updates alone (no DNS polling), profiled, then
	// the latency.
	const rate, cpuPhase = 100, 10 * time.Second
	cost := cpuPerEvent(b, dnsServer.process, rate*int(cpuPhase/time.Second), cpuPhase, func() {
		cpuProfile := make(chan struct{})
		go func() {
			defer close(cpuProfile)
			saveProfile(b, pprofAddr, "profile?seconds=10", fmt.Sprintf("cpu-updates-%d.pb.gz", n))
		}()
		scaleUpdates(b, client, dnsServer, n, 0, rate, cpuPhase, false)
		<-cpuProfile
	})
	times := scaleUpdates(b, client, dnsServer, n, 1, rate, 20*time.Second, true)
	p50, p99 := times.percentile(50), times.percentile(99)
	// The same updates' cost again, 3,000 updates after the first read: the
	// first ones after it also touch the memory the plugin returned to the
	// OS then, once. Two other clients of the same watch go through them
	// too, for the floor of the cost: the stream read undecoded, and
	// client-go's typed informer (bench/watchfloor).
	floors := startWatchFloors(b, kubeconfig, "serviceentries", "scale")
	updates := rate * int(cpuPhase/time.Second)
	costs := cpuPerEventOf(b, []*process{dnsServer.process, floors[0].process, floors[1].process}, updates, cpuPhase, func() {
		scaleUpdates(b, client, dnsServer, n, 2, rate, cpuPhase, false)
		for _, f := range floors {
			f.waitChanges(b, updates)
		}
	})
	later, raw, informer := costs[0], costs[1], costs[2]

	perEntry := float64(rss-baseRSS) / 1024 / float64(n)
	b.Logf("%d entries: start -> ready %v; RSS %.1f MiB (empty namespace %.1f MiB, %.2f KiB per entry), heap in use %.1f MiB; "+
		"%d updates at 100/s: apply -> answer %v; CoreDNS CPU %v per update above %v per second idle, %.1f page faults; "+
		"3,000 updates later %v, %.1f page faults; the same updates' floor: %v for the watch read undecoded, %v for client-go's typed informer",
		n, ready.Round(time.Millisecond), float64(rss)/(1<<20), float64(baseRSS)/(1<<20), perEntry, float64(heapInuse)/(1<<20),
		len(times.latencies), times, cost.cpu.Round(time.Microsecond), cost.idlePerSecond.Round(time.Millisecond), cost.faults,
		later.cpu.Round(time.Microsecond), later.faults, raw.cpu.Round(time.Microsecond), informer.cpu.Round(time.Microsecond))
	b.ReportMetric(ready.Seconds(), "ready-s")
	b.ReportMetric(ready.Seconds()/floor.Seconds(), "ready/bare-list")
	b.ReportMetric(float64(peak)/float64(rss), "peak/settled-rss")
	b.ReportMetric(listReady.Seconds(), "list-ready-s")
	b.ReportMetric(float64(listPeak)/float64(lsRSS), "list-peak/settled-rss")
	b.ReportMetric(float64(rss)/(1<<20), "rss-MiB")
	b.ReportMetric(perEntry, "KiB/entry")
	b.ReportMetric(float64(heapInuse)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(cost.cpu.Microseconds()), "cpu-us/update")
	b.ReportMetric(cost.faults, "faults/update")
	b.ReportMetric(float64(later.cpu.Microseconds()), "later-cpu-us/update")
	b.ReportMetric(float64(raw.cpu.Microseconds()), "raw-watch-cpu-us/update")
	b.ReportMetric(float64(informer.cpu.Microseconds()), "informer-cpu-us/update")
}

// watchFloor is a running bench/watchfloor.
type watchFloor struct{ *process }

// startWatchFloors starts bench/watchfloor on resource (serviceentries or
// pods) in namespace ("" for all) in its two modes, raw and informer, and
// waits until both have synced and settled.
func startWatchFloors(b *testing.B, kubeconfig, resource, namespace string) [2]watchFloor {
	binary := filepath.Join(b.TempDir(), "watchfloor")
	if out, err := exec.Command("go", "build", "-o", binary, "../../bench/watchfloor").CombinedOutput(); err != nil {
		b.Fatalf("go build ./bench/watchfloor: %v\n%s", err, out)
	}
	var floors [2]watchFloor
	for i, mode := range []string{"raw", "informer"} {
		floors[i] = watchFloor{startProcess(b, binary, "-kubeconfig", kubeconfig, "-resource", resource, "-namespace", namespace, "-mode", mode)}
	}
	for i, f := range floors {
		waitFor(b, 5*time.Minute, fmt.Sprintf("watchfloor %d synced", i), func() bool { return strings.Contains(f.output(), "synced\n") })
	}
	time.Sleep(5 * time.Second) // the informer's first list collected
	return floors
}

// waitChanges waits until the floor has seen n changes since it started:
// a floor that missed some would be measured on fewer events than counted.
func (f watchFloor) waitChanges(b *testing.B, n int) {
	want := fmt.Sprintf("changes %d\n", n)
	waitFor(b, 10*time.Second, "watchfloor: "+strings.TrimSpace(want), func() bool { return strings.Contains(f.output(), want) })
}

// compareReady starts the CoreDNS binary baseline (built from another
// commit) and this tree's in turn, three times each, and reports the median
// start -> ready (WatchList) of each: one start varies more on a shared
// machine than most changes move it, and alternating spreads the machine's
// drift over both.
func compareReady(b *testing.B, baseline, kubeconfig string, floor time.Duration, n int) {
	binaries := []struct{ name, path string }{{"baseline", baseline}, {"this tree", corednsBinary(b)}}
	times := make([][]time.Duration, len(binaries))
	const rounds = 3
	for round := range rounds {
		for i, bin := range binaries {
			// The last start of this tree's binary is profiled, with an
			// execution trace that shows which goroutine waits on what.
			var serverLines []string
			profiled := round == rounds-1 && i == len(binaries)-1
			pprofAddr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
			if profiled {
				serverLines = []string{"pprof " + pprofAddr}
			}
			began := time.Now()
			c := startCoreDNSBinary(b, bin.path, nil, serverLines, "scale.internal", "kubeconfig "+kubeconfig, "namespaces scale", "startup_timeout 1s")
			profiles := func() {}
			if profiled {
				waitFor(b, 10*time.Second, "pprof listening", func() bool { return httpOK(pprofAddr) })
				profiles = profileDuring(b, pprofAddr, 15*time.Second, "start")
			}
			waitFor(b, 10*time.Minute, "CoreDNS ready", c.isReady)
			times[i] = append(times[i], time.Since(began))
			c.waitAnswer(b, 5*time.Second, scaleHost(n-1), dns.TypeA, "NOERROR "+scaleAddr(n-1, 0))
			profiles()
			c.stop()
		}
	}
	medians := make([]time.Duration, len(binaries))
	for i, bin := range binaries {
		slices.Sort(times[i])
		medians[i] = times[i][len(times[i])/2]
		b.Logf("%s: WatchList start -> ready %v, median %v (%.2f× a bare LIST of %v)",
			bin.name, times[i], medians[i].Round(time.Millisecond), medians[i].Seconds()/floor.Seconds(), floor.Round(time.Millisecond))
	}
	b.ReportMetric(medians[0].Seconds()/floor.Seconds(), "baseline-ready/bare-list")
	b.ReportMetric(medians[1].Seconds()/floor.Seconds(), "median-ready/bare-list")
}

func scaleHost(i int) string { return fmt.Sprintf("svc-%d.ns-%d.scale.internal", i, i%100) }

// scaleAddr is IPv4 address i of generation gen: entry i is created with
// generation 0; each phase of updates sets the next generation.
func scaleAddr(i, gen int) string {
	return fmt.Sprintf("10.%d.%d.%d", gen%200, i>>8&0xff, i&0xff)
}

// createScaleEntries creates n entries as a mesh would have them (ports and
// all, which the plugin's transform drops), IPv6 on every other one.
func createScaleEntries(b testing.TB, client versioned.Interface, n int) {
	createEntries(b, client, n, func(i int) *clientv1.ServiceEntry {
		se := serviceEntry("scale", fmt.Sprintf("svc-%d", i), []string{scaleHost(i)}, scaleAddr(i, 0))
		if i%2 == 0 {
			// Two groups: one group holds 16 bits, and entries past 65,535
			// would otherwise declare an invalid address and be skipped.
			se.Spec.Addresses = append(se.Spec.Addresses, fmt.Sprintf("2001:db8::%x:%x", i>>16, i&0xffff))
		}
		se.Spec.Ports = append(se.Spec.Ports, &networking.ServicePort{Number: 443, Name: "https", Protocol: "TLS"})
		return se
	})
}

// createEntries creates the n entries that entry makes, 16 at a time. An
// entry's status, which create ignores, is then written through the status
// subresource, as istiod's controller writes its allocations.
func createEntries(b testing.TB, client versioned.Interface, n int, entry func(i int) *clientv1.ServiceEntry) {
	parallel(b, n, func(i int) error {
		se := entry(i)
		ses := client.NetworkingV1().ServiceEntries(se.Namespace)
		created, err := ses.Create(context.Background(), se, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("creating %s/%s: %w", se.Namespace, se.Name, err)
		}
		if len(se.Status.Addresses) == 0 {
			return nil
		}
		created.Status = *se.Status.DeepCopy()
		if _, err := ses.UpdateStatus(context.Background(), created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("status of %s/%s: %w", se.Namespace, se.Name, err)
		}
		return nil
	})
}

// scaleUpdates changes the IPv4 address of distinct entries to generation gen
// at rate per second for the given time, with poll timing each change to its
// answer (measureChanges); without poll it only checks that the last change
// is answered.
func scaleUpdates(b *testing.B, client versioned.Interface, dnsServer *coredns, n, gen, rate int, length time.Duration, poll bool) changeTimes {
	ses := client.NetworkingV1().ServiceEntries("scale")
	total := rate * int(length/time.Second)
	host := func(u int) (string, string) {
		i := (u + gen*total) * 7919 % n // distinct entries, spread over the set
		return fmt.Sprintf("svc-%d", i), scaleHost(i)
	}
	return measureChanges(b, rate, length, poll, func(u int) change {
		name, qname := host(u)
		want := scaleAddr(u, gen+1)
		return change{what: "patch " + name,
			apply: func(ctx context.Context) error {
				_, err := ses.Patch(ctx, name, types.MergePatchType, []byte(fmt.Sprintf(`{"spec":{"addresses":[%q]}}`, want)), metav1.PatchOptions{})
				return err
			},
			answered: func() bool { return dnsServer.answer(b, qname, dns.TypeA, "udp") == "NOERROR "+want }}
	})
}

// change is one change measureChanges makes: apply makes it through the
// API; answered tells whether DNS follows it yet.
type change struct {
	what     string // for errors
	apply    func(ctx context.Context) error
	answered func() bool
}

// changeTimes are the times of measured changes, each list sorted on its
// own: from the start of the API call to the first answer that follows it,
// the call alone, and from the call's return to that answer (the watch's
// delivery, the table, the answer).
type changeTimes struct{ latencies, calls, afterCall []time.Duration }

// measureChanges makes the change next(u) gives for u = 0, 1, ... at rate per
// second for length, each in a goroutine of its own so that a slow one holds
// up no other, and polls its answer every millisecond after the API call, for
// at most 10 s from its start.
//
// Without poll no change is timed: only the last one's answer is waited
// for, so that the changes alone are what the process spends its CPU on.
func measureChanges(b testing.TB, rate int, length time.Duration, poll bool, next func(u int) change) changeTimes {
	total := rate * int(length/time.Second)
	t := changeTimes{make([]time.Duration, total), make([]time.Duration, total), make([]time.Duration, total)}
	var wg sync.WaitGroup
	failed := make(chan string, total)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var last func() bool
	for u := range total {
		<-tick.C
		c := next(u)
		last = c.answered
		if !poll {
			c.answered = nil
		}
		wg.Go(func() {
			start := time.Now()
			if err := c.apply(context.Background()); err != nil {
				failed <- fmt.Sprintf("%s: %v", c.what, err)
				return
			}
			t.calls[u] = time.Since(start)
			for c.answered != nil && !c.answered() {
				if time.Since(start) > 10*time.Second {
					failed <- c.what + ": not answered after 10s"
					return
				}
				time.Sleep(time.Millisecond)
			}
			t.latencies[u] = time.Since(start)
			t.afterCall[u] = t.latencies[u] - t.calls[u]
		})
	}
	wg.Wait()
	close(failed)
	for f := range failed {
		b.Fatal(f)
	}
	if !poll {
		waitFor(b, 10*time.Second, "the last change answered", last)
	}
	for _, d := range [][]time.Duration{t.latencies, t.calls, t.afterCall} {
		slices.Sort(d)
	}
	return t
}

// percentile is the p-th percentile of the change -> answer latencies.
func (t changeTimes) percentile(p int) time.Duration { return percentile(t.latencies, p) }

// percentile is the p-th percentile of sorted durations.
func percentile(sorted []time.Duration, p int) time.Duration { return sorted[len(sorted)*p/100] }

// String is the latencies' summary, as the benchmarks log it.
func (t changeTimes) String() string {
	r := func(d []time.Duration, p int) time.Duration { return percentile(d, p).Round(100 * time.Microsecond) }
	return fmt.Sprintf("p50 %v, p99 %v, max %v (the API call alone: p50 %v, p99 %v; from its return to the answer: p50 %v, p99 %v)",
		r(t.latencies, 50), r(t.latencies, 99), t.latencies[len(t.latencies)-1].Round(100*time.Microsecond),
		r(t.calls, 50), r(t.calls, 99), r(t.afterCall, 50), r(t.afterCall, 99))
}

// settledRSS is the process's resident set after a few seconds of quiet, so
// that the garbage of the initial read has been collected.
func settledRSS(b testing.TB, p *process) int64 {
	time.Sleep(5 * time.Second)
	return procStatus(b, p, "VmRSS")
}

// procStatus is a memory figure (in kB there) of /proc/<pid>/status, in bytes.
func procStatus(b testing.TB, p *process, field string) int64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("%s %q: %v", field, rest, err)
			}
			return kib << 10
		}
	}
	b.Fatalf("no %s in /proc status", field)
	return 0
}

// listFloor is what the API server itself takes to serve a resource of one
// namespace ("" for all): the median of three unpaginated LISTs read into
// io.Discard, undecoded.
func listFloor(b *testing.B, client rest.Interface, namespace, resource string) time.Duration {
	var times []time.Duration
	for range 3 {
		began := time.Now()
		body, err := client.Get().Namespace(namespace).Resource(resource).Stream(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.Copy(io.Discard, body)
		body.Close()
		if err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(began))
	}
	slices.Sort(times)
	return times[1]
}

// watchListFloor is listFloor for a WatchList: a watch that sends every
// object as an event, then the bookmark that ends them, read undecoded up to
// that bookmark (the line holding its annotation). It is the API server's
// own time for what the plugin's reader asks at start.
func watchListFloor(b *testing.B, client rest.Interface, namespace, resource string) time.Duration {
	var times []time.Duration
	for range 3 {
		began := time.Now()
		body, err := client.Get().Namespace(namespace).Resource(resource).
			Param("watch", "true").Param("sendInitialEvents", "true").Param("allowWatchBookmarks", "true").
			Param("resourceVersionMatch", "NotOlderThan").Stream(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		lines := bufio.NewReaderSize(body, 64<<10)
		for {
			line, err := lines.ReadSlice('\n')
			if err != nil && err != bufio.ErrBufferFull {
				b.Fatalf("the WatchList stream ended before its bookmark: %v", err)
			}
			if bytes.Contains(line, []byte(metav1.InitialEventsAnnotationKey)) {
				break
			}
		}
		body.Close()
		times = append(times, time.Since(began))
	}
	slices.Sort(times)
	return times[1]
}

// eventCost is what changes cost the process per event, above its idle use
// (watch bookmarks, the Go runtime's own work): CPU, and minor page faults,
// first touches of memory the runtime has just mapped or taken back from
// the OS, which the CPU figure includes.
type eventCost struct {
	cpu, idlePerSecond time.Duration
	faults             float64
}

// cpuPerEvent runs changes, which make events events in the process, and
// returns their cost per event above the process's idle use, measured over
// a quiet window as long as quiet just before.
func cpuPerEvent(b *testing.B, p *process, events int, quiet time.Duration, changes func()) eventCost {
	return cpuPerEventOf(b, []*process{p}, events, quiet, changes)[0]
}

// cpuPerEventOf is cpuPerEvent for processes that all see the same events,
// measured over the same windows.
func cpuPerEventOf(b *testing.B, ps []*process, events int, quiet time.Duration, changes func()) []eventCost {
	stats := func() (cpu []time.Duration, faults []int64) {
		for _, p := range ps {
			c, f := processStat(b, p)
			cpu, faults = append(cpu, c), append(faults, f)
		}
		return cpu, faults
	}
	c0, f0 := stats()
	time.Sleep(quiet)
	c1, f1 := stats()
	began := time.Now()
	changes()
	c2, f2 := stats()
	took := time.Since(began).Seconds()
	costs := make([]eventCost, len(ps))
	for i := range ps {
		idlePerSecond := time.Duration(float64(c1[i]-c0[i]) / quiet.Seconds())
		idleFaults := float64(f1[i]-f0[i]) / quiet.Seconds()
		costs[i] = eventCost{
			cpu:           (c2[i] - c1[i] - time.Duration(float64(idlePerSecond)*took)) / time.Duration(events),
			idlePerSecond: idlePerSecond,
			faults:        (float64(f2[i]-f1[i]) - idleFaults*took) / float64(events),
		}
	}
	return costs
}

// processStat is the user+system CPU time the process has used so far, and
// the minor page faults it has taken.
func processStat(b *testing.B, p *process) (time.Duration, int64) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) start at ')';
	// proc(5) numbers them from 1 with the pid, so field n is at n-3.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	minflt, _ := strconv.ParseInt(fields[10-3], 10, 64)
	utime, _ := strconv.ParseInt(fields[14-3], 10, 64)
	stime, _ := strconv.ParseInt(fields[15-3], 10, 64)
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clockTicks, minflt
}

// processCPU is the user+system CPU time the process has used so far.
func processCPU(b *testing.B, p *process) time.Duration {
	cpu, _ := processStat(b, p)
	return cpu
}

// heapStat reads one runtime.MemStats figure from CoreDNS's pprof endpoint,
// after a garbage collection (so heap figures are the live heap).
func heapStat(b testing.TB, pprofAddr, name string) int64 {
	body := httpGet(b, "http://"+pprofAddr+"/debug/pprof/heap?debug=1&gc=1")
	for line := range strings.Lines(string(body)) {
		if rest, ok := strings.CutPrefix(line, "# "+name+" = "); ok {
			v, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			if err != nil {
				b.Fatalf("%s %q: %v", name, rest, err)
			}
			return v
		}
	}
	b.Fatalf("no %s in the heap profile", name)
	return 0
}

// saveProfile stores a pprof profile of CoreDNS in SERVICEENTRY_PROFILES, when
// set (made if missing).
func saveProfile(b *testing.B, pprofAddr, query, file string) {
	dir := os.Getenv("SERVICEENTRY_PROFILES")
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Error(err)
		return
	}
	path := filepath.Join(dir, file)
	if err := os.WriteFile(path, httpGet(b, "http://"+pprofAddr+"/debug/pprof/"+query), 0o644); err != nil {
		b.Error(err)
		return
	}
	b.Logf("profile saved: %s", path)
}

// profileDuring takes a CPU profile and an execution trace of CoreDNS over
// the next length of time, when SERVICEENTRY_PROFILES is set, saved as
// cpu-<name>.pb.gz and trace-<name>.out; the returned function waits for
// both. The trace shows what a latency's tail waited on (collections,
// scheduling, the watch's delivery), which a CPU profile cannot.
func profileDuring(b *testing.B, pprofAddr string, length time.Duration, name string) (wait func()) {
	if os.Getenv("SERVICEENTRY_PROFILES") == "" {
		return func() {}
	}
	seconds := int(length.Round(time.Second) / time.Second)
	var wg sync.WaitGroup
	wg.Go(func() { saveProfile(b, pprofAddr, fmt.Sprintf("profile?seconds=%d", seconds), "cpu-"+name+".pb.gz") })
	wg.Go(func() { saveProfile(b, pprofAddr, fmt.Sprintf("trace?seconds=%d", seconds), "trace-"+name+".out") })
	return wg.Wait
}

// httpOK says whether a pprof server at addr answers.
func httpOK(addr string) bool {
	resp, err := http.Get("http://" + addr + "/debug/pprof/")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func httpGet(b testing.TB, url string) []byte {
	resp, err := http.Get(url)
	if err != nil {
		b.Error(err)
		return nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Errorf("GET %s: %v %s", url, err, resp.Status)
	}
	return body
}
