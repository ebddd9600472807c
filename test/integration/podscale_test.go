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
// namespaces pods-0, pods-1, ... of podsPerNamespace pods each (createPods).
func createScalePods(b testing.TB, kube kubernetes.Interface, n int) {
	templates := make([]*corev1.Pod, len(scalePodTemplates))
	for t, file := range scalePodTemplates {
		templates[t] = readFixturePod(b, file)
	}
	createPods(b, kube, n, podsPerNamespace, "pods", func(i int) *corev1.Pod { return templates[i%len(templates)].DeepCopy() })
}

// createPods creates n pods, pod(i) each (status included), named pod-i in
// namespaces <prefix>-0, <prefix>-1, ... of perNamespace pods each, at
// scalePodIP(i). Each pod's status is written through the status
// subresource after its create, as the kubelet would. 16 at a time.
func createPods(b testing.TB, kube kubernetes.Interface, n, perNamespace int, prefix string, pod func(i int) *corev1.Pod) {
	createNamespaces(b, kube, prefix, (n+perNamespace-1)/perNamespace)
	parallel(b, n, func(i int) error {
		p := pod(i)
		p.Namespace, p.Name = fmt.Sprintf("%s-%d", prefix, i/perNamespace), fmt.Sprintf("pod-%d", i)
		status := p.Status
		p.Status = corev1.PodStatus{}
		created, err := kube.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("creating pod %d: %w", i, err)
		}
		created.Status = status
		ip := scalePodIP(i)
		created.Status.PodIP, created.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		if _, err := kube.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("status of pod %d: %w", i, err)
		}
		return nil
	})
}

// createNamespaces creates namespaces <prefix>-0 to <prefix>-(n-1), with the
// ServiceAccounts that admission wants for the fixtures' pods.
func createNamespaces(b testing.TB, kube kubernetes.Interface, prefix string, n int) {
	parallel(b, n, func(ns int) error {
		name := fmt.Sprintf("%s-%d", prefix, ns)
		if _, err := kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating namespace %s: %w", name, err)
		}
		for _, sa := range []string{"default", "checkout", "catalog"} {
			if _, err := kube.CoreV1().ServiceAccounts(name).Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}},
				metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("creating ServiceAccount %s/%s: %w", name, sa, err)
			}
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
	client, kube := c.unthrottled(b)
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
	classed := func(s *coredns, metricsAddr string) {
		// Ready means the first list of pods is in: no waiting.
		if classed := metricSum(b, metricsAddr, "coredns_serviceentry_client_pods"); int(classed) != n+podScaleFlippers {
			b.Fatalf("clients pods, ready: %v pods classed, want %d", classed, n+podScaleFlippers)
		}
		if got := s.answerFrom(b, podScaleHost, dns.TypeA, "udp", flipperIP(0)); got != podScaleOutside { // a plain pod
			b.Fatalf("clients pods, ready: %s from %s: %q, want %q", podScaleHost, flipperIP(0), got, podScaleOutside)
		}
	}
	const reps = 3
	runs := compareStarts(b, podScaleZone, reps, []startConfig{
		{name: "mesh", plugin: []string{kubeconfig, "clients mesh"}, check: func(s *coredns, _ string) {
			if got := s.answerFrom(b, podScaleHost, dns.TypeA, "udp", flipperIP(0)); got != podScaleMesh {
				b.Fatalf("clients mesh, ready: %s from %s: %q, want %q", podScaleHost, flipperIP(0), got, podScaleMesh)
			}
		}},
		{name: "pods", plugin: []string{kubeconfig, "clients pods"}, check: classed},
	})
	pods, mesh := runs["pods"], runs["mesh"]
	rssPerPod := (pods.rss - mesh.rss) / float64(n)
	heapPerPod := (pods.heap - mesh.heap) / float64(n)
	peakPerPod := (pods.peak - mesh.peak) / float64(n)

	// The change latency, on a server with the pod watch that stays.
	s := startCoreDNS(b, podScaleZone, kubeconfig, "clients pods")
	waitFor(b, 10*time.Minute, "CoreDNS (clients pods) ready", s.isReady)
	const rate, length = 20, 20 * time.Second
	times := flipPods(b, kube, s, rate, length)
	p50, p99 := times.percentile(50), times.percentile(99)

	b.Logf("%d pods, medians of %d runs each: clients pods start -> ready %v (%.2f× a bare LIST of the pods, %v; clients mesh %v); "+
		"settled RSS %.1f MiB (clients mesh %.1f MiB): %.0f B per pod; heap in use %.1f MiB (mesh %.1f MiB): %.0f B per pod; "+
		"peak RSS %.1f MiB (mesh %.1f MiB): %.0f B per pod; %d changes of class at %d/s: update -> answer %v",
		n, reps, pods.ready.Round(time.Millisecond), pods.ready.Seconds()/floor.Seconds(), floor.Round(time.Millisecond), mesh.ready.Round(time.Millisecond),
		pods.rss/(1<<20), mesh.rss/(1<<20), rssPerPod, pods.heap/(1<<20), mesh.heap/(1<<20), heapPerPod,
		pods.peak/(1<<20), mesh.peak/(1<<20), peakPerPod, len(times.latencies), rate, times)
	b.ReportMetric(float64(n)/created.Seconds(), "created-pods/s")
	b.ReportMetric(pods.ready.Seconds(), "ready-s")
	b.ReportMetric(pods.ready.Seconds()/floor.Seconds(), "ready/bare-list")
	b.ReportMetric(rssPerPod, "rss-B/pod")
	b.ReportMetric(heapPerPod, "heap-B/pod")
	b.ReportMetric(peakPerPod, "peak-rss-B/pod")
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
}

// startConfig is one way compareStarts starts CoreDNS: the serviceentry
// block's lines, and a check of what must hold once it is ready (given the
// server and its Prometheus address).
type startConfig struct {
	name   string
	plugin []string
	check  func(s *coredns, metricsAddr string)
}

// startFigures are one start's figures, or the medians of several.
type startFigures struct {
	ready           time.Duration
	peak, rss, heap float64 // VmHWM, RSS after 5 s quiet, heap in use after a GC; bytes
}

// compareStarts starts CoreDNS reps times in each configuration, in turn and
// in reverse order every other time (a, b, b, a, ...) so that slow drift of
// the machine's load falls on all alike, each with pprof and prometheus on
// and "startup_timeout 1s" (so that CoreDNS listens at once and ready says
// when it has read everything); it returns each configuration's medians. With
// SERVICEENTRY_PROFILES set, each configuration's heap profile is saved
// there.
func compareStarts(b *testing.B, zone string, reps int, configs []startConfig) map[string]startFigures {
	runs := map[string][]startFigures{}
	for rep := range reps {
		order := slices.Clone(configs)
		if rep%2 == 1 {
			slices.Reverse(order)
		}
		for _, cfg := range order {
			pprofAddr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
			metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
			start := time.Now()
			s := startCoreDNSWith(b, []string{"pprof " + pprofAddr, "prometheus " + metricsAddr}, zone,
				append(slices.Clone(cfg.plugin), "startup_timeout 1s")...)
			waitFor(b, 10*time.Minute, "CoreDNS ("+cfg.name+") ready", s.isReady)
			r := startFigures{ready: time.Since(start)}
			cfg.check(s, metricsAddr)
			r.peak = float64(procStatus(b, s.process, "VmHWM"))
			r.rss = float64(settledRSS(b, s.process))
			r.heap = float64(heapStat(b, pprofAddr, "HeapInuse"))
			saveProfile(b, pprofAddr, "heap?gc=1", fmt.Sprintf("heap-%s.pb.gz", cfg.name))
			b.Logf("rep %d %s: start -> ready %v; peak RSS %.1f MiB, settled %.1f MiB, heap in use %.1f MiB",
				rep+1, cfg.name, r.ready.Round(time.Millisecond), r.peak/(1<<20), r.rss/(1<<20), r.heap/(1<<20))
			runs[cfg.name] = append(runs[cfg.name], r)
			s.stop()
		}
	}
	medians := map[string]startFigures{}
	for name, rs := range runs {
		median := func(get func(startFigures) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = get(r)
			}
			slices.Sort(v)
			return v[len(v)/2]
		}
		medians[name] = startFigures{
			ready: time.Duration(median(func(r startFigures) float64 { return float64(r.ready) })),
			peak:  median(func(r startFigures) float64 { return r.peak }),
			rss:   median(func(r startFigures) float64 { return r.rss }),
			heap:  median(func(r startFigures) float64 { return r.heap }),
		}
	}
	return medians
}

// flipperIP is the loopback address of flipping pod f.
func flipperIP(f int) string { return fmt.Sprintf("127.0.1.%d", f+1) }

// flipPods changes the class of the flipping pods at rate per second for the
// given time, each in turn (so each pod changes every podScaleFlippers/rate
// seconds), between ambient with redirection enabled (mesh) and plain
// (outside), by its annotation as istio-cni writes it, and times each until
// the answer from the pod's address follows the new class (measureChanges).
func flipPods(b *testing.B, kube kubernetes.Interface, s *coredns, rate int, length time.Duration) changeTimes {
	pods := kube.CoreV1().Pods("flip")
	return measureChanges(b, rate, length, true, func(u int) change {
		f := u % podScaleFlippers
		patch, want := `{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled"}}}`, podScaleMesh
		if u/podScaleFlippers%2 == 1 {
			patch, want = `{"metadata":{"annotations":{"ambient.istio.io/redirection":null}}}`, podScaleOutside
		}
		name := fmt.Sprintf("flip-%d", f)
		return change{what: "patch " + name,
			apply: func(ctx context.Context) error {
				_, err := pods.Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
				return err
			},
			answered: func() bool { return s.answerFrom(b, podScaleHost, dns.TypeA, "udp", flipperIP(f)) == want }}
	})
}
