package integration

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// scalePods is how many pods BenchmarkPodScale creates:
// SERVICEENTRY_SCALE_PODS, 3,000 unless set (scripts/bench-pods takes it as
// its argument).
func scalePods(b *testing.B) int {
	n := 3_000
	if s := os.Getenv("SERVICEENTRY_SCALE_PODS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			b.Fatalf("SERVICEENTRY_SCALE_PODS=%q: want a positive number", s)
		}
	}
	return n
}

// podsPerNamespace spreads the pods over many namespaces, as a cluster has
// them, rather than one namespace of a size no cluster has.
const podsPerNamespace = 150

// scalePodTemplates are the pods the background pods are copies of, one of
// each in turn: a classic sidecar (declared_only), an ambient pod (mesh) and
// a plain pod (outside), as Istio's injector and istio-cni leave them.
var scalePodTemplates = []string{"sidecar-no-dns", "ambient-enabled", "plain"}

// scalePodIP is background pod i's address: 10.0.0.0/8, no loopback address,
// so no query comes from one of them.
func scalePodIP(i int) string {
	return fmt.Sprintf("10.%d.%d.%d", i>>16&0xff, i>>8&0xff, i&0xff)
}

// createScalePods creates n pods, copies of scalePodTemplates in turn, in
// namespaces pods-0, pods-1, ... of podsPerNamespace pods each, with the
// namespaces and the ServiceAccounts admission wants; each pod's status (its
// address) is then written through the status subresource, as the kubelet
// would. 16 at a time.
func createScalePods(b testing.TB, kube kubernetes.Interface, n int) {
	templates := make([]*corev1.Pod, len(scalePodTemplates))
	for t, file := range scalePodTemplates {
		templates[t] = readFixturePod(b, file)
	}
	namespaces := (n + podsPerNamespace - 1) / podsPerNamespace
	parallel(b, namespaces, func(ns int) error {
		name := fmt.Sprintf("pods-%d", ns)
		if _, err := kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			return err
		}
		for _, sa := range []string{"default", "checkout", "catalog"} {
			if _, err := kube.CoreV1().ServiceAccounts(name).Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}},
				metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
		}
		return nil
	})
	parallel(b, n, func(i int) error {
		pod := templates[i%len(templates)].DeepCopy()
		pod.Namespace, pod.Name = fmt.Sprintf("pods-%d", i/podsPerNamespace), fmt.Sprintf("pod-%d", i)
		status := pod.Status
		pod.Status = corev1.PodStatus{}
		created, err := kube.CoreV1().Pods(pod.Namespace).Create(context.Background(), pod, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("creating pod %d: %w", i, err)
		}
		created.Status = status
		ip := scalePodIP(i)
		created.Status.PodIP, created.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		if _, err := kube.CoreV1().Pods(pod.Namespace).UpdateStatus(context.Background(), created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("status of pod %d: %w", i, err)
		}
		return nil
	})
}

// parallel calls do for 0..n-1, 16 at a time, and fails on the first error.
func parallel(b testing.TB, n int, do func(i int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				if err := do(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// The entry BenchmarkPodScale asks for: a mesh client gets its VIP, a client
// outside the mesh its endpoint, so the answer shows the client's class.
const (
	podScaleZone     = "podscale.internal"
	podScaleHost     = "probe." + podScaleZone
	podScaleMesh     = "NOERROR 240.240.30.1"
	podScaleOutside  = "NOERROR 198.51.100.30"
	podScaleFlippers = 20 // pods whose class changes, at 127.0.1.1 and on
)

// BenchmarkPodScale measures the pod watch of "clients pods" against a real
// API server holding n pods: CoreDNS's start -> ready (ready waits for the
// first pod list) next to a bare LIST of the pods, its settled RSS and heap
// next to the same server with "clients mesh" (which reads no pods), per pod,
// and how soon a pod's change of class is answered: pods at loopback
// addresses flip between ambient (redirection enabled) and plain at a steady
// rate, and each is asked from its address until its answer follows. Servers
// with and without the pod watch are started in turn (mesh, pods, pods,
// mesh, ...) so that slow drift of the machine's load falls on both. It runs
// once whatever -benchtime says.
func BenchmarkPodScale(b *testing.B) {
	n := scalePods(b)
	corednsBinary(b)
	c := startCluster(b, "AlwaysAllow")
	c.installCRDs(b, istioCRDs(b))
	createNamespace(b, c, "scale", "flip")
	cfg := c.restConfig(b)
	cfg.QPS = -1 // no client-side limit: creating the pods is setup, not measured
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	client := c.istio(b)
	createEntries(b, client, 1, func(int) *clientv1.ServiceEntry {
		se := serviceEntry("scale", "probe", []string{podScaleHost})
		se.Spec.Endpoints = []*networking.WorkloadEntry{{Address: "198.51.100.30"}}
		se.Status.Addresses = []*networking.ServiceEntryAddress{{Host: podScaleHost, Value: "240.240.30.1"}}
		return se
	})
	for f := range podScaleFlippers {
		createPodAt(b, kube, "flip", fmt.Sprintf("flip-%d", f), flipperIP(f))
	}

	began := time.Now()
	createScalePods(b, kube, n)
	created := time.Since(began)
	b.Logf("created %d pods in %d namespaces in %v (%.0f/s, a create and a status update each)",
		n, (n+podsPerNamespace-1)/podsPerNamespace, created.Round(time.Millisecond), float64(n)/created.Seconds())
	floor := listFloor(b, kube.CoreV1().RESTClient(), "", "pods")

	kubeconfig := "kubeconfig " + c.kubeconfig(b, adminToken)
	type run struct {
		ready           time.Duration
		peak, rss, heap int64
	}
	runs := map[string][]run{}
	const reps = 3
	for rep := range reps {
		order := []string{"mesh", "pods"}
		if rep%2 == 1 {
			slices.Reverse(order)
		}
		for _, mode := range order {
			pprofAddr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
			metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
			start := time.Now()
			s := startCoreDNSWith(b, []string{"pprof " + pprofAddr, "prometheus " + metricsAddr}, podScaleZone,
				kubeconfig, "clients "+mode, "startup_timeout 1s")
			waitFor(b, 10*time.Minute, "CoreDNS (clients "+mode+") ready", s.isReady)
			r := run{ready: time.Since(start)}
			// Ready means the first list of pods is in: no waiting.
			want := podScaleMesh
			if mode == "pods" {
				want = podScaleOutside // a plain pod
				if classed := metricSum(b, metricsAddr, "coredns_serviceentry_client_pods"); int(classed) != n+podScaleFlippers {
					b.Fatalf("clients pods, ready: %v pods classed, want %d", classed, n+podScaleFlippers)
				}
			}
			if got := s.answerFrom(b, podScaleHost, dns.TypeA, "udp", flipperIP(0)); got != want {
				b.Fatalf("clients %s, ready: %s from %s: %q, want %q", mode, podScaleHost, flipperIP(0), got, want)
			}
			r.peak = procStatus(b, s.process, "VmHWM")
			r.rss = settledRSS(b, s.process)
			r.heap = heapStat(b, pprofAddr, "HeapInuse")
			b.Logf("rep %d clients %-4s: start -> ready %v; peak RSS %.1f MiB, settled %.1f MiB, heap in use %.1f MiB",
				rep+1, mode, r.ready.Round(time.Millisecond), float64(r.peak)/(1<<20), float64(r.rss)/(1<<20), float64(r.heap)/(1<<20))
			runs[mode] = append(runs[mode], r)
			s.stop()
		}
	}
	median := func(mode string, get func(run) float64) float64 {
		v := make([]float64, len(runs[mode]))
		for i, r := range runs[mode] {
			v[i] = get(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	ready := time.Duration(median("pods", func(r run) float64 { return float64(r.ready) }))
	meshReady := time.Duration(median("mesh", func(r run) float64 { return float64(r.ready) }))
	rss := func(mode string) float64 { return median(mode, func(r run) float64 { return float64(r.rss) }) }
	heap := func(mode string) float64 { return median(mode, func(r run) float64 { return float64(r.heap) }) }
	peak := func(mode string) float64 { return median(mode, func(r run) float64 { return float64(r.peak) }) }
	rssPerPod := (rss("pods") - rss("mesh")) / float64(n)
	heapPerPod := (heap("pods") - heap("mesh")) / float64(n)
	peakPerPod := (peak("pods") - peak("mesh")) / float64(n)

	// The change latency, on a server with the pod watch that stays.
	s := startCoreDNS(b, podScaleZone, kubeconfig, "clients pods")
	waitFor(b, 10*time.Minute, "CoreDNS (clients pods) ready", s.isReady)
	const rate, length = 20, 20 * time.Second
	latencies, calls := flipPods(b, kube, s, rate, length)
	afterCall := make([]time.Duration, len(latencies))
	for u := range latencies {
		afterCall[u] = latencies[u] - calls[u]
	}
	for _, d := range [][]time.Duration{latencies, calls, afterCall} {
		slices.Sort(d)
	}
	p50, p99 := latencies[len(latencies)/2], latencies[len(latencies)*99/100]

	b.Logf("%d pods, medians of %d runs each: clients pods start -> ready %v (%.2f× a bare LIST of the pods, %v; clients mesh %v); "+
		"settled RSS %.1f MiB (clients mesh %.1f MiB): %.0f B per pod; heap in use %.1f MiB (mesh %.1f MiB): %.0f B per pod; "+
		"peak RSS %.1f MiB (mesh %.1f MiB): %.0f B per pod; "+
		"%d changes of class at %d/s: update -> answer p50 %v, p99 %v, max %v (the API call alone: p50 %v, p99 %v; from its return to the answer: p50 %v, p99 %v)",
		n, reps, ready.Round(time.Millisecond), ready.Seconds()/floor.Seconds(), floor.Round(time.Millisecond), meshReady.Round(time.Millisecond),
		rss("pods")/(1<<20), rss("mesh")/(1<<20), rssPerPod, heap("pods")/(1<<20), heap("mesh")/(1<<20), heapPerPod,
		peak("pods")/(1<<20), peak("mesh")/(1<<20), peakPerPod,
		len(latencies), rate, p50.Round(100*time.Microsecond), p99.Round(100*time.Microsecond), latencies[len(latencies)-1].Round(100*time.Microsecond),
		calls[len(calls)/2].Round(100*time.Microsecond), calls[len(calls)*99/100].Round(100*time.Microsecond),
		afterCall[len(afterCall)/2].Round(100*time.Microsecond), afterCall[len(afterCall)*99/100].Round(100*time.Microsecond))
	b.ReportMetric(float64(n)/created.Seconds(), "created-pods/s")
	b.ReportMetric(ready.Seconds(), "ready-s")
	b.ReportMetric(ready.Seconds()/floor.Seconds(), "ready/bare-list")
	b.ReportMetric(rssPerPod, "rss-B/pod")
	b.ReportMetric(heapPerPod, "heap-B/pod")
	b.ReportMetric(peakPerPod, "peak-rss-B/pod")
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
}

// flipperIP is the loopback address of flipping pod f.
func flipperIP(f int) string { return fmt.Sprintf("127.0.1.%d", f+1) }

// flipPods changes the class of the flipping pods at rate per second for the
// given time, each in turn (so each pod changes every podScaleFlippers/rate
// seconds), between ambient with redirection enabled (mesh) and plain
// (outside), by its annotation as istio-cni writes it. For each change it
// returns how long the API call took and the time from its start to the
// first answer from the pod's address that follows the new class.
func flipPods(b *testing.B, kube kubernetes.Interface, s *coredns, rate int, length time.Duration) (latencies, calls []time.Duration) {
	pods := kube.CoreV1().Pods("flip")
	total := rate * int(length/time.Second)
	latencies, calls = make([]time.Duration, total), make([]time.Duration, total)
	var wg sync.WaitGroup
	failed := make(chan string, total)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for u := range total {
		<-tick.C
		f := u % podScaleFlippers
		patch, want := `{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled"}}}`, podScaleMesh
		if u/podScaleFlippers%2 == 1 {
			patch, want = `{"metadata":{"annotations":{"ambient.istio.io/redirection":null}}}`, podScaleOutside
		}
		wg.Go(func() {
			start := time.Now()
			if _, err := pods.Patch(context.Background(), fmt.Sprintf("flip-%d", f), types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				failed <- fmt.Sprintf("patch flip-%d: %v", f, err)
				return
			}
			calls[u] = time.Since(start)
			for s.answerFrom(b, podScaleHost, dns.TypeA, "udp", flipperIP(f)) != want {
				if time.Since(start) > 10*time.Second {
					failed <- fmt.Sprintf("%s from %s not answering %q after 10s", podScaleHost, flipperIP(f), want)
					return
				}
				time.Sleep(time.Millisecond)
			}
			latencies[u] = time.Since(start)
		})
	}
	wg.Wait()
	close(failed)
	for f := range failed {
		b.Fatal(f)
	}
	return latencies, calls
}
