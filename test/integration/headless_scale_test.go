package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	"istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// Issue 25's layout: each headless entry selects headlessPodsPerEntry pods,
// and a namespace holds headlessPodsPerNamespace pods and so a tenth as many
// entries, as a cluster has them.
const (
	headlessScaleZone        = "hscale.internal"
	headlessPodsPerEntry     = 10
	headlessPodsPerNamespace = 100
	// benchLabel tells the entry sets apart: a server reads one of them
	// with "labels" and the pods whatever it reads.
	benchLabel = "serviceentry-bench"
)

// headlessHost is entry e's name; e's pods are pod-(10e) to pod-(10e+9).
func headlessHost(e int) string { return fmt.Sprintf("db-%d.%s", e, headlessScaleZone) }

// headlessAnswer is entry e's A answer with every pod ready but pod-(10e+j)
// for j in unready.
func headlessAnswer(e int, unready ...int) string {
	var ips []string
	for j := range headlessPodsPerEntry {
		if !slices.Contains(unready, j) {
			ips = append(ips, scalePodIP(e*headlessPodsPerEntry+j))
		}
	}
	slices.Sort(ips)
	return "NOERROR " + strings.Join(ips, " ")
}

// BenchmarkHeadlessScale measures issue 25's scale against a real API
// server: n ready pods (SERVICEENTRY_SCALE_PODS) selected by n/10 headless
// entries (resolution NONE, no addresses, a port, selector app: db-<e>),
// ten entries and a hundred pods to a namespace, read by the real binary with
// "clients pods". Three configurations of the same binary, on the same API
// server, started in turn three times each (compareStarts), each reading
// every pod as a client:
//
//   - bare: no entries ("labels" selects none), so no pod is a workload;
//   - hollow: n/10 entries of the same form in namespaces without pods, so
//     that they select nothing;
//   - headless: the entries that select the pods.
//
// start -> ready of each (next to a bare LIST of every pod; at ready a
// sample of the headless entries must already answer with all their pods),
// settled RSS and heap: hollow - bare is the cost of the entries, headless -
// hollow that of the selected pods as workloads and answers. Then, on a fresh
// headless server, pods' readiness flips through the status subresource at a
// steady rate, each timed until its entry's answer follows. It runs once
// whatever -benchtime says.
func BenchmarkHeadlessScale(b *testing.B) {
	n := scalePods(b)
	if n%headlessPodsPerNamespace != 0 {
		b.Fatalf("SERVICEENTRY_SCALE_PODS=%d: want a multiple of %d", n, headlessPodsPerNamespace)
	}
	entries := n / headlessPodsPerEntry
	corednsBinary(b)
	c := startCluster(b, "AlwaysAllow")
	c.installCRDs(b, istioCRDs(b))
	client, kube := c.unthrottled(b)

	began := time.Now()
	plain := readFixturePod(b, "plain") // ready, outside the mesh
	createPods(b, kube, n, headlessPodsPerNamespace, "db", func(i int) *corev1.Pod {
		pod := plain.DeepCopy()
		e := i / headlessPodsPerEntry
		// The hash a ReplicaSet's pods share: a label every pod has,
		// which no selector uses.
		pod.Labels = map[string]string{"app": fmt.Sprintf("db-%d", e), "pod-template-hash": fmt.Sprintf("5d8f7c%04x", e)}
		return pod
	})
	createHeadlessEntries(b, client, entries, "db", "headless", headlessHost)
	createNamespaces(b, kube, "hollow", entries*headlessPodsPerEntry/headlessPodsPerNamespace)
	createHeadlessEntries(b, client, entries, "hollow", "hollow", func(e int) string {
		return fmt.Sprintf("hollow-%d.%s", e, headlessScaleZone)
	})
	created := time.Since(began)
	b.Logf("created %d pods and %d headless entries in %d namespaces, and %d entries selecting nothing in %d more, in %v",
		n, entries, n/headlessPodsPerNamespace, entries, n/headlessPodsPerNamespace, created.Round(time.Millisecond))
	floor := listFloor(b, kube.CoreV1().RESTClient(), "", "pods")

	kubeconfig := "kubeconfig " + c.kubeconfig(b, adminToken)
	classed := func(s *coredns, metricsAddr string) {
		if classed := metricSum(b, metricsAddr, "coredns_serviceentry_client_pods"); int(classed) != n {
			b.Fatalf("ready: %v pods classed, want %d", classed, n)
		}
	}
	// Ready waits for the pods of every namespace where an entry selects:
	// a sample of entries spread over the set must answer in full at once.
	answered := func(s *coredns, metricsAddr string) {
		classed(s, metricsAddr)
		sample := []int{entries - 1}
		for k := range 20 {
			sample = append(sample, k*entries/20)
		}
		for _, e := range sample {
			if got, want := s.answer(b, headlessHost(e), dns.TypeA, "udp"), headlessAnswer(e); got != want {
				b.Errorf("headless, ready: %s answers %q, want %q", headlessHost(e), got, want)
				late := time.Now()
				s.waitAnswer(b, time.Minute, headlessHost(e), dns.TypeA, want)
				b.Logf("%s answered in full %v after ready", headlessHost(e), time.Since(late).Round(time.Millisecond))
			}
		}
	}
	reading := func(set string) []string {
		return []string{kubeconfig, "clients pods", "labels " + benchLabel + "=" + set}
	}
	const reps = 3
	runs := compareStarts(b, headlessScaleZone, reps, []startConfig{
		{name: "bare", plugin: reading("none"), check: classed},
		{name: "hollow", plugin: reading("hollow"), check: classed},
		{name: "headless", plugin: reading("headless"), check: answered},
	})
	bare, hollow, headless := runs["bare"], runs["hollow"], runs["headless"]

	// The change latency, on a headless server that stays.
	pprofAddr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
	s := startCoreDNSWith(b, []string{"pprof " + pprofAddr}, headlessScaleZone, reading("headless")...)
	waitFor(b, 10*time.Minute, "CoreDNS (headless) ready", s.isReady)
	// First the CPU of the flips alone (no DNS polling), then the latency.
	const rate, cpuPhase, length = 20, 20 * time.Second, 20 * time.Second
	cost := cpuPerEvent(b, s.process, rate*int(cpuPhase/time.Second), cpuPhase, func() {
		flipReadiness(b, kube, s, entries, rate, cpuPhase, 0, false)
	})
	profiled := profileDuring(b, pprofAddr, length, "flips")
	times := flipReadiness(b, kube, s, entries, rate, length, rate*int(cpuPhase/time.Second), true)
	profiled()
	p50, p99 := times.percentile(50), times.percentile(99)
	// The flips' cost again, 800 flips after the first read: the first ones
	// after it also touch the memory the plugin returned to the OS then.
	// Two other clients of the pod watch go through them too, for the floor
	// of the cost (bench/watchfloor).
	floors := startWatchFloors(b, c.kubeconfig(b, adminToken), "pods", "")
	flips := rate * int(cpuPhase/time.Second)
	costs := cpuPerEventOf(b, []*process{s.process, floors[0].process, floors[1].process}, flips, cpuPhase, func() {
		flipReadiness(b, kube, s, entries, rate, cpuPhase, 2*flips, false)
		for _, f := range floors {
			f.waitChanges(b, flips)
		}
	})
	later, raw, informer := costs[0], costs[1], costs[2]
	for _, f := range floors {
		f.stop()
	}

	// Fills: a server that reads the hollow set has no entry selecting in
	// the pods' namespaces; each entry created for it there is the first
	// of its namespace, whose pods it then lists on their own. First their
	// CPU (not polled), then their latency, in other namespaces. The rate
	// stays under the pod client's 5 requests a second (client-go's
	// default): faster fills wait for its rate limiter, one list each.
	// Each phase takes 10 s, or less where there are fewer namespaces.
	const fillRate = 4
	fillPhase := min(10*time.Second, time.Duration(n/headlessPodsPerNamespace/2/fillRate)*time.Second)
	if fillPhase < time.Second {
		b.Fatalf("%d pods: too few namespaces for two phases of fills", n)
	}
	fills := fillRate * int(fillPhase/time.Second)
	hollowServer := startCoreDNSWith(b, nil, headlessScaleZone, reading("hollow")...)
	waitFor(b, 10*time.Minute, "CoreDNS (hollow) ready", hollowServer.isReady)
	fillCost := cpuPerEvent(b, hollowServer.process, fills, fillPhase, func() {
		fillNamespaces(b, client, s, hollowServer, fillRate, fillPhase, 0, false)
	})
	fillTimes := fillNamespaces(b, client, s, hollowServer, fillRate, fillPhase, fills, true)
	b.Logf("%d fills at %d/s (a namespace's first selecting entry, its %d pods listed): create -> answer %v; CoreDNS CPU %v per fill above %v per second idle (%d fills, not polled)",
		len(fillTimes.latencies), fillRate, headlessPodsPerNamespace, fillTimes, fillCost.cpu.Round(time.Microsecond), fillCost.idlePerSecond.Round(time.Millisecond), fills)
	b.ReportMetric(float64(fillTimes.percentile(99).Microseconds())/1000, "fill-p99-ms")
	b.ReportMetric(float64(fillCost.cpu.Microseconds()), "fill-cpu-us")

	perEntry := func(get func(startFigures) float64) float64 { return (get(hollow) - get(bare)) / float64(entries) }
	perPod := func(get func(startFigures) float64) float64 { return (get(headless) - get(hollow)) / float64(n) }
	together := func(get func(startFigures) float64) float64 { return (get(headless) - get(bare)) / float64(n) }
	rss := func(f startFigures) float64 { return f.rss }
	heap := func(f startFigures) float64 { return f.heap }
	peak := func(f startFigures) float64 { return f.peak }
	mib := func(get func(startFigures) float64) string {
		return fmt.Sprintf("bare %.1f, hollow %.1f, headless %.1f MiB", get(bare)/(1<<20), get(hollow)/(1<<20), get(headless)/(1<<20))
	}
	b.Logf("%d pods, %d headless entries, medians of %d runs each: start -> ready headless %v (%.2f× a bare LIST of every pod, %v; bare %v, hollow %v); "+
		"settled RSS %s: %.0f B per entry, %.0f B per selected pod (%.0f B per pod with the entries' share); "+
		"heap in use %s: %.0f B per entry, %.0f B per selected pod (%.0f B with the entries' share); "+
		"peak RSS %s: %.0f B per entry, %.0f B per selected pod; "+
		"%d readiness flips at %d/s: status patch -> answer %v; CoreDNS CPU %v per flip above %v per second idle, %.1f page faults (%d flips, not polled); 800 flips later %v, %.1f page faults; "+
		"the same flips' floor: %v for the pod watch read undecoded, %v for client-go's typed informer",
		n, entries, reps, headless.ready.Round(time.Millisecond), headless.ready.Seconds()/floor.Seconds(), floor.Round(time.Millisecond),
		bare.ready.Round(time.Millisecond), hollow.ready.Round(time.Millisecond),
		mib(rss), perEntry(rss), perPod(rss), together(rss),
		mib(heap), perEntry(heap), perPod(heap), together(heap),
		mib(peak), perEntry(peak), perPod(peak),
		len(times.latencies), rate, times, cost.cpu.Round(time.Microsecond), cost.idlePerSecond.Round(time.Millisecond), cost.faults, rate*int(cpuPhase/time.Second),
		later.cpu.Round(time.Microsecond), later.faults, raw.cpu.Round(time.Microsecond), informer.cpu.Round(time.Microsecond))
	b.ReportMetric(headless.ready.Seconds(), "ready-s")
	b.ReportMetric(headless.ready.Seconds()/floor.Seconds(), "ready/bare-list")
	b.ReportMetric(perEntry(rss), "rss-B/entry")
	b.ReportMetric(perPod(rss), "rss-B/pod")
	b.ReportMetric(perEntry(heap), "heap-B/entry")
	b.ReportMetric(perPod(heap), "heap-B/pod")
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(cost.cpu.Microseconds()), "cpu-us/event")
	b.ReportMetric(cost.faults, "faults/event")
	b.ReportMetric(float64(later.cpu.Microseconds()), "later-cpu-us/event")
	b.ReportMetric(float64(raw.cpu.Microseconds()), "raw-watch-cpu-us/event")
	b.ReportMetric(float64(informer.cpu.Microseconds()), "informer-cpu-us/event")
}

// createHeadlessEntries creates n headless entries labelled benchLabel=set,
// entry e named host(e) in namespace <prefix>-<e/10> (ten to a namespace, as
// its pods are) and selecting app: db-<e>.
func createHeadlessEntries(b testing.TB, client versioned.Interface, n int, prefix, set string, host func(e int) string) {
	createEntries(b, client, n, func(e int) *clientv1.ServiceEntry {
		ns := fmt.Sprintf("%s-%d", prefix, e*headlessPodsPerEntry/headlessPodsPerNamespace)
		se := headlessEntry(ns, fmt.Sprintf("db-%d", e), host(e), map[string]string{"app": fmt.Sprintf("db-%d", e)})
		se.Labels = map[string]string{benchLabel: set}
		return se
	})
}

// fillNamespaces creates, at rate per second for length, entries of the
// hollow set in the pods' namespaces, from namespace first on, one per
// namespace: each selects the pods of that namespace's first headless entry
// and, for hollow (which reads that set), is the first entry selecting
// there. With poll, each is timed until hollow answers its host as headless
// answers that entry's; without, only the last one is waited for.
func fillNamespaces(b *testing.B, client versioned.Interface, headless, hollow *coredns, rate int, length time.Duration, first int, poll bool) changeTimes {
	return measureChanges(b, rate, length, poll, func(u int) change {
		namespace := first + u
		e := namespace * headlessPodsPerNamespace / headlessPodsPerEntry
		ns, host := fmt.Sprintf("db-%d", namespace), fmt.Sprintf("fill-%d.%s", e, headlessScaleZone)
		want := headless.answer(b, headlessHost(e), dns.TypeA, "udp")
		se := headlessEntry(ns, fmt.Sprintf("fill-%d", e), host, map[string]string{"app": fmt.Sprintf("db-%d", e)})
		se.Labels = map[string]string{benchLabel: "hollow"}
		return change{what: "create " + ns + "/" + se.Name,
			apply: func(ctx context.Context) error {
				_, err := client.NetworkingV1().ServiceEntries(ns).Create(ctx, se, metav1.CreateOptions{})
				return err
			},
			answered: func() bool { return hollow.answer(b, host, dns.TypeA, "udp") == want }}
	})
}

// flipReadiness flips the Ready condition of the first pod of distinct
// entries, spread over the set, at rate per second for the given time, as
// the kubelet writes it (a strategic merge patch of the status subresource),
// and, with poll, times each until its entry's answer follows
// (measureChanges); without, it waits for the last one only. Change u of a
// call is change first+u of the series, so that two calls flip different
// entries. With fewer entries than changes, an entry's pod turns unready on
// its first change, ready again on its second, and so on: entries/rate
// seconds apart.
func flipReadiness(b *testing.B, kube kubernetes.Interface, s *coredns, entries, rate int, length time.Duration, first int, poll bool) changeTimes {
	return measureChanges(b, rate, length, poll, func(u int) change {
		u += first
		e := u * 7919 % entries // 7919 is prime: distinct entries until every one has had its turn
		i := e * headlessPodsPerEntry
		ns, name := fmt.Sprintf("db-%d", i/headlessPodsPerNamespace), fmt.Sprintf("pod-%d", i)
		ready, want := "False", headlessAnswer(e, 0)
		if u/entries%2 == 1 {
			ready, want = "True", headlessAnswer(e)
		}
		patch := fmt.Sprintf(`{"status":{"conditions":[{"type":"Ready","status":%q}]}}`, ready)
		return change{what: fmt.Sprintf("pod %s/%s Ready %s", ns, name, ready),
			apply: func(ctx context.Context) error {
				_, err := kube.CoreV1().Pods(ns).Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status")
				return err
			},
			answered: func() bool { return s.answer(b, headlessHost(e), dns.TypeA, "udp") == want }}
	})
}
