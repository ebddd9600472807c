package kube

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/podindex"
	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/features"
	clientfeaturestesting "k8s.io/client-go/features/testing"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// clientEpoch is the creation time of the test pods; a pod's age is given in
// seconds after it.
var clientEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// newFakePods returns a fake clientset holding objs.
func newFakePods(t *testing.T, objs ...k8sruntime.Object) *fake.Clientset {
	t.Helper()
	// With WatchListClient on (client-go >= 0.35 default) reflectors on the
	// fake clientset never sync; real API servers are unaffected.
	clientfeaturestesting.SetFeatureDuringTest(t, features.WatchListClient, false)
	return fake.NewClientset(objs...)
}

// startPods runs a pod source on client and waits for its first list.
func startPods(t *testing.T, client *fake.Clientset, namespaces ...string) (*podindex.Index, *podSource) {
	t.Helper()
	idx := podindex.New()
	p := newPodSource(client, namespaces, false, idx, sourcetest.NewSink())
	p.start()
	t.Cleanup(p.stop)
	sourcetest.Eventually(t, "pod reader synced", idx.Synced)
	return idx, p
}

// testPod is a running pod created at clientEpoch plus created seconds,
// holding ips (the first is also status.podIP).
func testPod(ns, name string, created int, ips ...string) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			CreationTimestamp: metav1.NewTime(clientEpoch.Add(time.Duration(created) * time.Second))},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for i, ip := range ips {
		if i == 0 {
			pod.Status.PodIP = ip
		}
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return pod
}

func withPhase(pod *corev1.Pod, phase corev1.PodPhase) *corev1.Pod {
	pod.Status.Phase = phase
	return pod
}

func hostNetwork(pod *corev1.Pod) *corev1.Pod {
	pod.Spec.HostNetwork = true
	return pod
}

// fullPod is a pod as an API server returns it, with all that the cache
// should not keep.
func fullPod() *corev1.Pod {
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "ns1", Name: "web-0", UID: "uid-1",
			CreationTimestamp: metav1.NewTime(clientEpoch),
			ResourceVersion:   "42",
			Labels:            map[string]string{"app": "web"},
			Annotations:       map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"},
			ManagedFields:     []metav1.ManagedFieldsEntry{{Manager: "kubelet"}},
			OwnerReferences:   []metav1.OwnerReference{{Kind: "StatefulSet", Name: "web"}},
			Finalizers:        []string{"example.com/f"},
		},
		Spec: corev1.PodSpec{
			NodeName:    "node-1",
			HostNetwork: true,
			Containers:  []corev1.Container{{Name: "web", Image: "nginx", Env: []corev1.EnvVar{{Name: "A", Value: "b"}}}},
			Volumes:     []corev1.Volume{{Name: "data"}},
		},
		Status: corev1.PodStatus{
			Phase:             corev1.PodRunning,
			PodIP:             "10.1.0.5",
			PodIPs:            []corev1.PodIP{{IP: "10.1.0.5"}, {IP: "fd00::5"}},
			HostIP:            "192.168.0.1",
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "web", Ready: true}},
		},
	}
}

// podNetworkFullPod is fullPod on the pod network.
func podNetworkFullPod() *corev1.Pod {
	pod := fullPod()
	pod.Spec.HostNetwork = false
	return pod
}

// claimOfTest is the claim of a testPod that claims ips, with no Istio mark,
// and its workload: without a Ready condition, it has no address.
func claimOfTest(ns, name string, created int, ips ...string) *podClaim {
	p := &podClaim{keyed: keyed{ns + "/" + name},
		workload: &entry.Workload{Key: entry.PodKey(ns + "/" + name), Labels: entry.MakeLabels(nil)}}
	if len(ips) == 0 {
		return p
	}
	p.claim = &podindex.Claim{Namespace: ns, Created: clientEpoch.Unix() + int64(created)}
	for _, ip := range ips {
		p.claim.IPs = append(p.claim.IPs, netip.MustParseAddr(ip))
	}
	return p
}

func TestPodTransform(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("fd00::5")
	// fullPod is ready: its workload answers with podIP, or every podIPs
	// with dual-stack, on the host network too (the node's address, where
	// it listens).
	workload := func(addrs ...netip.Addr) *entry.Workload {
		return entry.NewWorkload(entry.PodKey("ns1/web-0"), entry.MakeLabels(map[string]string{"app": "web"}), addrs...)
	}
	fullClaim := &podClaim{keyed: keyed{"ns1/web-0"}, version: "42", claim: &podindex.Claim{Namespace: "ns1", Created: clientEpoch.Unix(),
		IPs: []netip.Addr{v4, v6}}, workload: workload(v4)}
	dualClaim := &podClaim{keyed: keyed{"ns1/web-0"}, version: "42", claim: fullClaim.claim, workload: workload(v4, v6)}
	for _, tc := range []struct {
		name      string
		in        any
		dualStack bool
		want      any
	}{
		{"a host-network pod claims nothing but is a workload", fullPod(), false, &podClaim{keyed: keyed{"ns1/web-0"}, version: "42", workload: workload(v4)}},
		{"a pod keeps only what the index and the store read", podNetworkFullPod(), false, fullClaim},
		{"dual-stack: the workload has every pod IP", podNetworkFullPod(), true, dualClaim},
		{"transforming twice changes nothing", fullClaim, false, fullClaim},
		{"pod without IPs", withPhase(testPod("ns1", "pending", 0), corev1.PodPending), false, claimOfTest("ns1", "pending", 0)},
		{"succeeded pod claims nothing", withPhase(testPod("ns1", "job", 0, "10.1.0.5"), corev1.PodSucceeded), false, claimOfTest("ns1", "job", 0)},
		{"failed pod claims nothing", withPhase(testPod("ns1", "crash", 0, "10.1.0.5"), corev1.PodFailed), false, claimOfTest("ns1", "crash", 0)},
		{"IPv4-mapped and repeated IPs, once each", testPod("ns1", "a", 0, "::ffff:10.1.0.5", "10.1.0.5", "fd00::5"), false,
			claimOfTest("ns1", "a", 0, "10.1.0.5", "fd00::5")},
		{"not a pod passes through", "other", false, "other"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before *corev1.Pod
			if pod, ok := tc.in.(*corev1.Pod); ok {
				before = pod.DeepCopy()
			}
			got, err := toClaim(tc.in, tc.dualStack)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v\nwant %#v", got, tc.want)
			}
			if before != nil && !reflect.DeepEqual(tc.in, before) {
				t.Fatalf("the decoded pod changed:\n%#v\nwas %#v", tc.in, before)
			}
			if p, ok := tc.in.(*podClaim); ok && got != any(p) {
				t.Fatal("a podClaim was copied")
			}
			if p, ok := got.(*podClaim); ok && unsafe.StringData(p.key) != unsafe.StringData(p.workload.Key.Name) {
				t.Error("the claim's key is a copy of the workload's")
			}
		})
	}
}

// TestPodMarks: a pod's Istio marks reach the index (package reach decides
// them; its tests hold the classes), and an odd mark is reported once per
// change, with the pod's key.
func TestPodMarks(t *testing.T) {
	sidecar := testPod("ns1", "sidecar", 0, "10.1.0.7")
	sidecar.Annotations = map[string]string{"sidecar.istio.io/status": `{"containers":["istio-proxy"]}`}
	sidecar.Spec.Containers = append(sidecar.Spec.Containers, corev1.Container{Name: "istio-proxy", Args: []string{"proxy", "sidecar"}})
	sidecar.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodInitialized, Status: corev1.ConditionTrue}}
	odd := testPod("ns1", "odd", 0, "10.1.0.8")
	odd.Annotations = map[string]string{"sidecar.istio.io/status": "{not json"}
	odd.Spec.Containers = append(odd.Spec.Containers, corev1.Container{Name: "istio-proxy", Args: []string{"proxy", "sidecar"}})
	client := newFakePods(t, sidecar, odd)
	idx := podindex.New()
	sink := sourcetest.NewSink()
	p := newPodSource(client, nil, false, idx, sink)
	p.start()
	t.Cleanup(p.stop)
	sourcetest.Eventually(t, "pod reader synced", idx.Synced)

	want, _ := reach.MarksOf(sidecar)
	if got := idx.Lookup(netip.MustParseAddr("10.1.0.7")).Marks; got != want || !got.Sidecar() {
		t.Errorf("marks %v, want %v (a sidecar)", got, want)
	}
	if n := sink.Count(reach.ReasonSidecarStatus); n != 1 {
		t.Fatalf("odd status reported %d times, want 1", n)
	}
	if _, ok := sink.Skips("Pod ns1/odd"); !ok {
		t.Errorf("the problem does not name the pod: %v", sink.Keys())
	}
	// An update that keeps the problem reports nothing new.
	odd.Labels = map[string]string{"v": "2"}
	if _, err := client.CoreV1().Pods("ns1").Update(context.Background(), odd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	podBarrier(t, client, idx, 0)
	if n := sink.Count(reach.ReasonSidecarStatus); n != 1 {
		t.Fatalf("an unchanged problem reported again: %d", n)
	}
}

// TestPodRelistRemoves: a pod gone at a relist (its deletion missed while
// the watch was down) loses its claim; a namespace's relist leaves the other
// namespaces' pods alone.
func TestPodRelistRemoves(t *testing.T) {
	idx := podindex.New()
	sink := sourcetest.NewSink()
	workloads := newPodWorkloads(sink, nil)
	a, b := newPodStore("ns1", false, idx, workloads, sink), newPodStore("ns2", false, idx, workloads, sink)
	replace := func(s *podStore, pods ...*corev1.Pod) {
		var list []any
		for _, pod := range pods {
			list = append(list, pod)
		}
		if err := s.Replace(list, ""); err != nil {
			t.Fatal(err)
		}
	}
	replace(a, testPod("ns1", "x", 0, "10.1.0.1"), testPod("ns1", "y", 0, "10.1.0.2"))
	replace(b, testPod("ns2", "z", 0, "10.1.0.3"))
	idx.MarkSynced()
	replace(a, testPod("ns1", "y", 0, "10.1.0.2"))
	for ip, want := range map[string]string{"10.1.0.1": "", "10.1.0.2": "ns1", "10.1.0.3": "ns2"} {
		if got := idx.Lookup(netip.MustParseAddr(ip)).Namespace; got != want {
			t.Errorf("%s after ns1's relist: %q, want %q", ip, got, want)
		}
	}
}

// podStep changes one pod through the API and states the index's answer for
// every IP the case uses.
type podStep struct {
	op   string // create, update or delete
	pod  *corev1.Pod
	want map[string]string // IP -> namespace ("" for none)
}

func TestPodSourceClaims(t *testing.T) {
	const x, y, v6 = "10.1.0.5", "10.1.0.6", "fd00::5"
	for _, tc := range []struct {
		name  string
		steps []podStep
	}{
		{"reused IP: newest wins, next takes over, ended claims nothing", []podStep{
			{"create", testPod("ns1", "a", 1, x), map[string]string{x: "ns1"}},
			{"create", testPod("ns2", "b", 2, x), map[string]string{x: "ns2"}},
			{"delete", testPod("ns2", "b", 2, x), map[string]string{x: "ns1"}},
			{"update", withPhase(testPod("ns1", "a", 1, x), corev1.PodSucceeded), map[string]string{x: ""}},
		}},
		{"an older pod seen later does not win", []podStep{
			{"create", testPod("ns2", "b", 2, x), map[string]string{x: "ns2"}},
			{"create", testPod("ns1", "a", 1, x), map[string]string{x: "ns2"}},
			{"update", withPhase(testPod("ns2", "b", 2, x), corev1.PodFailed), map[string]string{x: "ns1"}},
		}},
		{"same creation time: the same pod wins, whatever the order", []podStep{
			{"create", testPod("ns2", "b", 1, x), map[string]string{x: "ns2"}},
			{"create", testPod("ns1", "a", 1, x), map[string]string{x: "ns2"}},
			{"delete", testPod("ns2", "b", 1, x), map[string]string{x: "ns1"}},
			{"create", testPod("ns2", "b", 1, x), map[string]string{x: "ns2"}},
		}},
		{"host-network pod claims nothing", []podStep{
			{"create", hostNetwork(testPod("ns1", "node-agent", 1, x)), map[string]string{x: ""}},
			{"create", testPod("ns2", "b", 0, x), map[string]string{x: "ns2"}},
		}},
		{"ended pods claim nothing", []podStep{
			{"create", withPhase(testPod("ns1", "job", 2, x), corev1.PodSucceeded), map[string]string{x: ""}},
			{"create", withPhase(testPod("ns1", "crash", 3, y), corev1.PodFailed), map[string]string{y: ""}},
		}},
		{"pending pod claims once it has an IP", []podStep{
			{"create", withPhase(testPod("ns1", "a", 1), corev1.PodPending), map[string]string{x: ""}},
			{"update", testPod("ns1", "a", 1, x), map[string]string{x: "ns1"}},
		}},
		{"dual-stack pod claims every IP", []podStep{
			{"create", testPod("ns1", "a", 1, x, v6), map[string]string{x: "ns1", v6: "ns1"}},
			{"delete", testPod("ns1", "a", 1, x, v6), map[string]string{x: "", v6: ""}},
		}},
		{"an update that changes the IP moves the claim", []podStep{
			{"create", testPod("ns1", "a", 1, x), map[string]string{x: "ns1", y: ""}},
			{"update", testPod("ns1", "a", 1, y), map[string]string{x: "", y: "ns1"}},
		}},
		{"a moved claim hands the old IP to the next claimant", []podStep{
			{"create", testPod("ns1", "a", 1, x), map[string]string{x: "ns1"}},
			{"create", testPod("ns2", "b", 2, x), map[string]string{x: "ns2"}},
			{"update", testPod("ns2", "b", 2, y), map[string]string{x: "ns1", y: "ns2"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newFakePods(t)
			idx, _ := startPods(t, client)
			ctx := context.Background()
			for i, s := range tc.steps {
				pods := client.CoreV1().Pods(s.pod.Namespace)
				var err error
				switch s.op {
				case "create":
					_, err = pods.Create(ctx, s.pod, metav1.CreateOptions{})
				case "update":
					_, err = pods.Update(ctx, s.pod, metav1.UpdateOptions{})
				case "delete":
					err = pods.Delete(ctx, s.pod.Name, metav1.DeleteOptions{})
				default:
					t.Fatalf("step %d: unknown op %q", i, s.op)
				}
				if err != nil {
					t.Fatalf("step %d: %s %s/%s: %v", i, s.op, s.pod.Namespace, s.pod.Name, err)
				}
				podBarrier(t, client, idx, i)
				for ip, want := range s.want {
					if got := idx.Lookup(netip.MustParseAddr(ip)).Namespace; got != want {
						t.Errorf("step %d (%s %s/%s): %s -> %q, want %q", i, s.op, s.pod.Namespace, s.pod.Name, ip, got, want)
					}
				}
			}
		})
	}
}

// podBarrier returns once the index has applied every pod change made
// before it: it moves a pod of its own to a fresh IP and waits for the index
// to see it there, and one informer delivers its events in order.
func podBarrier(t *testing.T, client *fake.Clientset, idx *podindex.Index, step int) {
	t.Helper()
	ip := fmt.Sprintf("198.51.100.%d", step+1)
	pod := testPod("barrier", "barrier", 0, ip)
	pods := client.CoreV1().Pods("barrier")
	var err error
	if step == 0 {
		_, err = pods.Create(context.Background(), pod, metav1.CreateOptions{})
	} else {
		_, err = pods.Update(context.Background(), pod, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatalf("moving the barrier pod: %v", err)
	}
	sourcetest.Eventually(t, "barrier at "+ip, func() bool { return idx.Lookup(netip.MustParseAddr(ip)).Namespace == "barrier" })
}

// TestPodSourceDeleteForms: a deletion removes the claim whether the
// reflector gives the decoded pod or its converted claim, even one whose
// last known addresses are stale or missing: the pod's key decides.
func TestPodSourceDeleteForms(t *testing.T) {
	const x = "10.1.0.5"
	for _, tc := range []struct {
		name string
		obj  any
	}{
		{"pod", testPod("ns2", "b", 2, x)},
		{"claim", claimOfTest("ns2", "b", 2, x)},
		{"claim with a stale IP", claimOfTest("ns2", "b", 2, "10.9.9.9")},
		{"claim without addresses", claimOfTest("ns2", "b", 2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := testPod("ns1", "a", 1, x), testPod("ns2", "b", 2, x)
			idx, p := startPods(t, newFakePods(t, a, b))
			addr := netip.MustParseAddr(x)
			if got := idx.Lookup(addr).Namespace; got != "ns2" {
				t.Fatalf("before the deletion: %q, want ns2", got)
			}
			p.stores[0].Delete(tc.obj)
			if got := idx.Lookup(addr).Namespace; got != "ns1" {
				t.Fatalf("after the deletion: %q, want ns1", got)
			}
			// A stale update after the deletion would be a new pod of that
			// name; a repeated deletion changes nothing.
			p.stores[0].Delete(tc.obj)
			if got := idx.Lookup(addr).Namespace; got != "ns1" {
				t.Fatalf("after a repeated deletion: %q, want ns1", got)
			}
		})
	}
}

func TestPodSourceNamespaces(t *testing.T) {
	pods := []k8sruntime.Object{
		testPod("ns1", "a", 0, "10.1.0.1"),
		testPod("ns2", "b", 0, "10.1.0.2"),
		testPod("ns3", "c", 0, "10.1.0.3"),
	}
	for _, tc := range []struct {
		name       string
		namespaces []string
		want       []string // namespaces of 10.1.0.1, .2, .3
	}{
		{"all", nil, []string{"ns1", "ns2", "ns3"}},
		{"one", []string{"ns2"}, []string{"", "ns2", ""}},
		{"two", []string{"ns1", "ns3"}, []string{"ns1", "", "ns3"}},
		{"repeated", []string{"ns1", "ns1"}, []string{"ns1", "", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idx, p := startPods(t, newFakePods(t, pods...), tc.namespaces...)
			for i, want := range tc.want {
				ip := netip.AddrFrom4([4]byte{10, 1, 0, byte(i + 1)})
				if got := idx.Lookup(ip).Namespace; got != want {
					t.Errorf("%s -> %q, want %q", ip, got, want)
				}
			}
			if tc.name == "repeated" && len(p.stores) != 1 {
				t.Errorf("%d readers for one namespace", len(p.stores))
			}
		})
	}
}

// TestPodSourceSyncedAfterFirstList: until the first list has been handled
// the index answers for no namespace, even for pods it already holds.
func TestPodSourceSyncedAfterFirstList(t *testing.T) {
	client := newFakePods(t, testPod("ns1", "a", 0, "10.1.0.1"))
	release := make(chan struct{})
	var once sync.Once
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		<-release
		return false, nil, nil // the tracker answers
	})
	idx := podindex.New()
	p := newPodSource(client, nil, false, idx, sourcetest.NewSink())
	p.start()
	defer p.stop()
	defer once.Do(func() { close(release) })

	ip := netip.MustParseAddr("10.1.0.1")
	idx.Set("ns1/early", &podindex.Claim{Namespace: "ns1", IPs: []netip.Addr{netip.MustParseAddr("10.1.0.9")}})
	time.Sleep(50 * time.Millisecond)
	if idx.Synced() {
		t.Fatal("synced before the list returned")
	}
	if got := idx.Lookup(netip.MustParseAddr("10.1.0.9")).Namespace; got != "" {
		t.Fatalf("before the sync: %q, want none", got)
	}
	once.Do(func() { close(release) })
	sourcetest.Eventually(t, "synced", idx.Synced)
	if got := idx.Lookup(ip).Namespace; got != "ns1" {
		t.Fatalf("after the sync: %q, want ns1", got)
	}
}

// TestPodSourceStopLeavesNoGoroutine: stop returns after the reflectors and
// the sync wait have ended, whether or not the first list completed.
func TestPodSourceStopLeavesNoGoroutine(t *testing.T) {
	for _, tc := range []struct {
		name       string
		namespaces []string
		waitSync   bool
	}{
		{"all namespaces, synced", nil, true},
		{"two namespaces, synced", []string{"ns1", "ns2"}, true},
		{"stopped at once", []string{"ns1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newFakePods(t, testPod("ns1", "a", 0, "10.1.0.1"))
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			before := sourcetest.GoroutineIDs()
			idx := podindex.New()
			p := newPodSource(client, tc.namespaces, false, idx, sourcetest.NewSink())
			p.start()
			if tc.waitSync {
				sourcetest.Eventually(t, "synced", idx.Synced)
				if _, err := client.CoreV1().Pods("ns1").Create(context.Background(), testPod("ns1", "b", 1, "10.1.0.2"), metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				sourcetest.Eventually(t, "new pod", func() bool { return idx.Lookup(netip.MustParseAddr("10.1.0.2")).Namespace == "ns1" })
			}
			p.stop()
			// goleak waits for goroutines to end, while stop promises they
			// have ended when it returns: look once, at once, for any left
			// waiting. One that is runnable is past its last wait (the
			// goroutine that signalled stop, say) and goleak sees it end.
			for id, stack := range sourcetest.GoroutineStacks() {
				if !before[id] && !sourcetest.Finishing(stack) &&
					(strings.Contains(stack, "k8s.io/client-go/") || strings.Contains(stack, "kube.(*podSource)")) {
					t.Errorf("running after stop returned:\n%s", stack)
				}
			}
			p.stop() // a second stop is harmless
		})
	}
}

// TestPodSourceStopWaitsForList: client-go leaves a list in progress behind
// when its reflector stops; stop waits for it.
func TestPodSourceStopWaitsForList(t *testing.T) {
	client := newFakePods(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		once.Do(func() { close(entered) })
		<-release
		return false, nil, nil
	})
	p := newPodSource(client, nil, false, podindex.New(), sourcetest.NewSink())
	p.start()
	<-entered
	stopped := make(chan struct{})
	go func() {
		p.stop()
		close(stopped)
	}()
	select {
	case <-stopped:
		t.Fatal("stop returned while a list was in progress")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not return once the list had")
	}
}

// BenchmarkPodCacheMemory reports the live heap that 10,000 running pods
// (one IP each, over 1,000 namespaces) cost once the pod source has synced:
// "B/pod" is everything it holds (the reflectors and the index),
// "reader-B/pod" what letting go of the stopped source frees. The fake clientset's
// list answers with pods built afresh for each call, as an API server's are
// decoded afresh, and its tracker holds none: so no string the cache keeps is
// shared with, and hidden in, the fake's own objects. Run with -benchtime 1x:
// an iteration is a whole list.
func BenchmarkPodCacheMemory(b *testing.B) {
	const pods, namespaces = 10000, 1000
	clientfeaturestesting.SetFeatureDuringTest(b, features.WatchListClient, false)
	var total, reader float64
	n := 0
	for b.Loop() {
		t, r := podCacheMemory(b, pods, namespaces)
		total += t
		reader += r
		n++
	}
	b.ReportMetric(total/float64(n)/pods, "B/pod")
	b.ReportMetric(reader/float64(n)/pods, "reader-B/pod")
}

// podCacheMemory runs a pod source over pods pods and returns the live heap
// it holds once synced, and the part of it that the stopped source frees
// (the reflectors and what only they hold); the rest is the index.
func podCacheMemory(b *testing.B, pods, namespaces int) (total, reader float64) {
	client := fake.NewClientset()
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		list := &corev1.PodList{Items: make([]corev1.Pod, pods)}
		for i := range list.Items {
			list.Items[i] = *benchPod(i, namespaces)
		}
		return true, list, nil
	})
	idx := podindex.New()
	p := newPodSource(client, nil, false, idx, sourcetest.NewSink())
	base := sourcetest.LiveHeap()
	p.start()
	for deadline := time.Now().Add(time.Minute); !idx.Synced(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("pod reader not synced")
		}
	}
	if got := idx.Lookup(benchPodIP(pods - 1)).Namespace; got != benchPodNamespace(pods-1, namespaces) {
		b.Fatalf("last pod's namespace %q", got)
	}
	synced := sourcetest.LiveHeap()
	p.stop() // and p is not used after it, so its reflectors are garbage
	withoutReader := sourcetest.LiveHeap()
	runtime.KeepAlive(idx)
	return float64(synced) - float64(base), float64(synced) - float64(withoutReader)
}

func benchPodIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

func benchPodNamespace(i, namespaces int) string { return fmt.Sprintf("team-%d", i%namespaces) }

// benchPod is pod i as an API server returns it: two containers with
// environment, resources and volume mounts, labels, annotations, managed
// fields, conditions. Every string is allocated for it, as decoding does.
func benchPod(i, namespaces int) *corev1.Pod {
	ns := benchPodNamespace(i, namespaces)
	name := fmt.Sprintf("web-%d-7f9c8d6b5-%05d", i/10, i)
	ip := benchPodIP(i).String()
	res := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	container := func(c string) corev1.Container {
		return corev1.Container{
			Name:  c,
			Image: fmt.Sprintf("registry.example.com/%s/%s:1.2.%d", ns, c, i%7),
			Env: []corev1.EnvVar{
				{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				{Name: "LOG_LEVEL", Value: "info"},
				{Name: "UPSTREAM", Value: fmt.Sprintf("http://backend.%s.svc.cluster.local:8080", ns)},
			},
			Resources: res,
			VolumeMounts: []corev1.VolumeMount{
				{Name: "config", MountPath: "/etc/app"},
				{Name: "kube-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
			},
		}
	}
	now := metav1.NewTime(clientEpoch.Add(time.Duration(i) * time.Second))
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name,
			GenerateName:      name[:len(name)-5],
			UID:               types.UID(fmt.Sprintf("0b6c2f1e-%04x-4d2a-9c3b-%012x", i%65536, i)),
			ResourceVersion:   strconv.Itoa(1000000 + i),
			CreationTimestamp: now,
			Labels:            map[string]string{"app": "web", "pod-template-hash": "7f9c8d6b5", "team": ns},
			Annotations:       map[string]string{"kubectl.kubernetes.io/restartedAt": now.Format(time.RFC3339)},
			OwnerReferences:   []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: name[:len(name)-6], UID: types.UID(fmt.Sprintf("rs-%d", i/10))}},
			ManagedFields: []metav1.ManagedFieldsEntry{
				{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1", Time: &now,
					FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:metadata":{"f:generateName":{},"f:labels":{}},"f:spec":{"f:containers":{}}}`)}},
				{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1", Time: &now, Subresource: "status",
					FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:status":{"f:conditions":{},"f:podIP":{},"f:podIPs":{}}}`)}},
			},
		},
		Spec: corev1.PodSpec{
			NodeName:           fmt.Sprintf("node-%d", i%100),
			ServiceAccountName: "default",
			Containers:         []corev1.Container{container("app"), container("sidecar")},
			Volumes: []corev1.Volume{
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "web-config"}}}},
				{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}},
			},
		},
		Status: corev1.PodStatus{
			Phase:  corev1.PodPhase(strings.Clone(string(corev1.PodRunning))),
			HostIP: fmt.Sprintf("192.168.%d.%d", i%100/256, i%100),
			PodIP:  ip,
			PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			},
			ContainerStatuses: []corev1.ContainerStatus{
				{Name: "app", Ready: true, Image: "app", ImageID: fmt.Sprintf("sha256:%064x", i)},
				{Name: "sidecar", Ready: true, Image: "sidecar", ImageID: fmt.Sprintf("sha256:%064x", i+1)},
			},
		},
	}
}

// addrsOf is what the sink holds of the workloads of kind: namespace/name ->
// their addresses, joined ("" for a workload without any).
func addrsOf(st *sourcetest.Sink, kind entry.Kind) map[string]string {
	out := make(map[string]string)
	for key, w := range st.Workloads() {
		if key.Kind != kind {
			continue
		}
		var addrs []string
		for a := range w.Addrs() {
			addrs = append(addrs, a.String())
		}
		out[key.Name] = strings.Join(addrs, ",")
	}
	return out
}

// selecting is a headless entry of ns selecting every workload there.
func selecting(ns, name string) map[entry.Key]*entry.Entry {
	e := &entry.Entry{Key: entry.ServiceEntryKey(ns + "/" + name), Headless: true, Extras: &entry.Extras{Selector: entry.SelectorOf(nil)}}
	return map[entry.Key]*entry.Entry{e.Key: e}
}

// TestPodSourceWorkloads: the pod watch that places clients also gives the
// sink the workload of every pod in a namespace where an entry selects: its
// address while ready (every pod IP with dual-stack), none otherwise, gone
// with the pod; a relist replaces the namespace's pods and nothing else.
// The pods of other namespaces never reach the sink.
func TestPodSourceWorkloads(t *testing.T) {
	ready := func(pod *corev1.Pod, labels map[string]string) *corev1.Pod {
		pod.Labels = labels
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		return pod
	}
	web := map[string]string{"app": "web"}
	client := newFakePods(t, ready(testPod("ns1", "a", 0, "10.1.0.1", "fd00::1"), web), testPod("ns1", "unready", 0, "10.1.0.2"),
		ready(testPod("ns3", "elsewhere", 0, "10.3.0.1"), web))
	idx := podindex.New()
	st := sourcetest.NewSink()
	p := newPodSource(client, nil, true, idx, st)
	p.entriesChanged(selecting("ns1", "db"))
	p.start()
	t.Cleanup(p.stop)
	sourcetest.Eventually(t, "pod reader synced", idx.Synced)
	if got, want := addrsOf(st, entry.KindPod), map[string]string{"ns1/a": "10.1.0.1,fd00::1", "ns1/unready": ""}; !maps.Equal(got, want) {
		t.Fatalf("first list: %v, want %v", got, want)
	}
	if w := st.Workloads()[entry.PodKey("ns1/a")]; !w.Labels.Selects(entry.SelectorOf(web)) {
		t.Fatalf("labels of %+v", w)
	}
	pods := client.CoreV1().Pods("ns1")
	ctx := context.Background()
	steps := []struct {
		name string
		do   func() error
		want map[string]string
	}{
		{"turns ready", func() error {
			_, err := pods.Update(ctx, ready(testPod("ns1", "unready", 0, "10.1.0.2"), nil), metav1.UpdateOptions{})
			return err
		}, map[string]string{"ns1/a": "10.1.0.1,fd00::1", "ns1/unready": "10.1.0.2"}},
		{"turns unready", func() error {
			_, err := pods.Update(ctx, testPod("ns1", "a", 0, "10.1.0.1", "fd00::1"), metav1.UpdateOptions{})
			return err
		}, map[string]string{"ns1/a": "", "ns1/unready": "10.1.0.2"}},
		{"host network: a workload at the node's address", func() error {
			_, err := pods.Create(ctx, hostNetwork(ready(testPod("ns1", "agent", 0, "192.168.0.1"), nil)), metav1.CreateOptions{})
			return err
		}, map[string]string{"ns1/a": "", "ns1/unready": "10.1.0.2", "ns1/agent": "192.168.0.1"}},
		{"deleted", func() error { return pods.Delete(ctx, "unready", metav1.DeleteOptions{}) },
			map[string]string{"ns1/a": "", "ns1/agent": "192.168.0.1"}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		sourcetest.Eventually(t, s.name, func() bool { return maps.Equal(addrsOf(st, entry.KindPod), s.want) })
	}
	if got := idx.Lookup(netip.MustParseAddr("192.168.0.1")).Namespace; got != "" {
		t.Errorf("a host-network pod claims its address for %q", got)
	}

	// ns3's pods reach the sink once an entry selects there, and leave it
	// with the last such entry.
	p.entriesChanged(selecting("ns3", "db"))
	sourcetest.Eventually(t, "ns3's pods listed", func() bool { return addrsOf(st, entry.KindPod)["ns3/elsewhere"] == "10.3.0.1" })
	p.entriesChanged(map[entry.Key]*entry.Entry{entry.ServiceEntryKey("ns3/db"): nil})
	if _, ok := addrsOf(st, entry.KindPod)["ns3/elsewhere"]; ok {
		t.Error("ns3's pods stay in the sink after its last selecting entry")
	}

	// A relist of ns2 leaves ns1's pods and the WorkloadEntries alone.
	wle := &entry.Workload{Key: entry.WorkloadEntryKey("ns2/w")}
	st.SetWorkloads(map[entry.Key]*entry.Workload{wle.Key: wle})
	s2 := newPodStore("ns2", false, idx, p.workloads, st)
	p.entriesChanged(selecting("ns2", "db"))
	if err := s2.Replace([]any{ready(testPod("ns2", "b", 0, "10.2.0.1", "fd00::2"), nil)}, "9"); err != nil {
		t.Fatal(err)
	}
	if err := s2.Replace([]any{ready(testPod("ns2", "c", 0, "10.2.0.3"), nil)}, "10"); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"ns1/a": "", "ns1/agent": "192.168.0.1", "ns2/c": "10.2.0.3"}
	if got := addrsOf(st, entry.KindPod); !maps.Equal(got, want) {
		t.Errorf("after ns2's relists: %v, want %v", got, want)
	}
	if st.Workloads()[wle.Key] == nil {
		t.Error("a pod relist removed a WorkloadEntry")
	}
}
