package serviceentry

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/features"
	clientfeaturestesting "k8s.io/client-go/features/testing"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
)

// The helpers below are local to this file rather than in helpers_test.go,
// which other work owns.

// clientEpoch is the creation time of the test pods; a pod's age is given in
// seconds after it.
var clientEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// newFakePods returns a fake clientset holding objs.
func newFakePods(t *testing.T, objs ...k8sruntime.Object) *fake.Clientset {
	t.Helper()
	// With WatchListClient on (client-go >= 0.35 default) informers on the
	// fake clientset never sync; real API servers are unaffected.
	clientfeaturestesting.SetFeatureDuringTest(t, features.WatchListClient, false)
	return fake.NewClientset(objs...)
}

// startPods runs a pod source on client and waits for its first list.
func startPods(t *testing.T, client *fake.Clientset, namespaces ...string) (*clientIndex, *podSource) {
	t.Helper()
	idx := newClientIndex()
	p := newPodSource(client, namespaces, idx)
	p.start()
	t.Cleanup(p.stop)
	eventually(t, "pod informer synced", idx.ready.Load)
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

// strippedFullPod is what the cache keeps of fullPod: a host-network pod,
// so it claims no IP.
func strippedFullPod() *clientPod {
	return &clientPod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: "web-0",
		ResourceVersion: "42", CreationTimestamp: metav1.NewTime(clientEpoch)}}
}

// podNetworkFullPod is fullPod on the pod network.
func podNetworkFullPod() *corev1.Pod {
	pod := fullPod()
	pod.Spec.HostNetwork = false
	return pod
}

// strippedPodNetworkFullPod is what the cache keeps of podNetworkFullPod.
func strippedPodNetworkFullPod() *clientPod {
	pod := strippedFullPod()
	pod.ips = []netip.Addr{netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("fd00::5")}
	return pod
}

// clientPodOf is the clientPod of a testPod that claims ips.
func clientPodOf(ns, name string, created int, ips ...string) *clientPod {
	pod := &clientPod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		CreationTimestamp: metav1.NewTime(clientEpoch.Add(time.Duration(created) * time.Second))}}
	for _, ip := range ips {
		pod.ips = append(pod.ips, netip.MustParseAddr(ip))
	}
	return pod
}

func TestPodTransform(t *testing.T) {
	tomb := cache.DeletedFinalStateUnknown{Key: "ns1/web-0", Obj: strippedFullPod()}
	for _, tc := range []struct {
		name string
		in   any
		want any
	}{
		{"full host-network pod keeps only its name, version and age", fullPod(), strippedFullPod()},
		{"full pod keeps only what the index and the informer read", podNetworkFullPod(), strippedPodNetworkFullPod()},
		{"transforming twice changes nothing", strippedPodNetworkFullPod(), strippedPodNetworkFullPod()},
		{"pod without IPs", withPhase(testPod("ns1", "pending", 0), corev1.PodPending), clientPodOf("ns1", "pending", 0)},
		{"succeeded pod claims nothing", withPhase(testPod("ns1", "job", 0, "10.1.0.5"), corev1.PodSucceeded), clientPodOf("ns1", "job", 0)},
		{"failed pod claims nothing", withPhase(testPod("ns1", "crash", 0, "10.1.0.5"), corev1.PodFailed), clientPodOf("ns1", "crash", 0)},
		{"IPv4-mapped and repeated IPs, once each", testPod("ns1", "a", 0, "::ffff:10.1.0.5", "10.1.0.5", "fd00::5"),
			clientPodOf("ns1", "a", 0, "10.1.0.5", "fd00::5")},
		{"not a pod passes through", tomb, tomb},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before *corev1.Pod
			if pod, ok := tc.in.(*corev1.Pod); ok {
				before = pod.DeepCopy()
			}
			got, err := stripPod(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v\nwant %#v", got, tc.want)
			}
			if before != nil && !reflect.DeepEqual(tc.in, before) {
				t.Fatalf("the decoded pod changed:\n%#v\nwas %#v", tc.in, before)
			}
			if pod, ok := tc.in.(*clientPod); ok && got != any(pod) {
				t.Fatal("a clientPod was copied")
			}
		})
	}
}

// TestClientPodDeepCopy: client-go's cache mutation detector compares a
// cached object with its deep copy, so the copy must be equal and share
// nothing mutable.
func TestClientPodDeepCopy(t *testing.T) {
	pod := strippedPodNetworkFullPod()
	pod.Labels = map[string]string{"app": "web"} // never kept; here to see ObjectMeta copied deeply
	cp, ok := pod.DeepCopyObject().(*clientPod)
	if !ok || !reflect.DeepEqual(cp, pod) {
		t.Fatalf("copy %#v\nof %#v", cp, pod)
	}
	cp.ips[0] = netip.MustParseAddr("192.0.2.1")
	cp.Labels["app"] = "changed"
	if want := strippedPodNetworkFullPod(); pod.ips[0] != want.ips[0] || pod.Labels["app"] != "web" {
		t.Fatalf("changing the copy changed the original: %#v", pod)
	}
	if (&clientPod{}).DeepCopyObject().(*clientPod).ips != nil {
		t.Fatal("no IPs copied as an empty slice")
	}
	if kind := pod.GetObjectKind().GroupVersionKind(); !kind.Empty() {
		t.Fatalf("kind %v, want none", kind)
	}
}

// TestPodSourceCachesStrippedPods: the transform is the informer's, so its
// cache holds clientPods, keyed as the pods are.
func TestPodSourceCachesStrippedPods(t *testing.T) {
	_, p := startPods(t, newFakePods(t, fullPod()))
	store := p.informers[0].GetStore()
	objs := store.List()
	if len(objs) != 1 {
		t.Fatalf("%d objects cached, want 1", len(objs))
	}
	if !reflect.DeepEqual(objs[0], strippedFullPod()) {
		t.Fatalf("cached %#v\nwant %#v", objs[0], strippedFullPod())
	}
	if _, ok, _ := store.GetByKey("ns1/web-0"); !ok {
		t.Fatalf("not cached under its namespace/name: %v", store.ListKeys())
	}
}

// TestPodSourceTombstoneCarriesClientPod: a pod found gone at a relist (its
// deletion missed while the watch was down) is handed to the handlers as a
// tombstone holding the cached clientPod, and loses its claim.
func TestPodSourceTombstoneCarriesClientPod(t *testing.T) {
	client := newFakePods(t)
	var lists atomic.Int32
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		if lists.Add(1) == 1 {
			return true, &corev1.PodList{Items: []corev1.Pod{*podNetworkFullPod()}}, nil
		}
		return true, &corev1.PodList{}, nil
	})
	first := watch.NewRaceFreeFake()
	var watches atomic.Int32
	client.PrependWatchReactor("pods", func(k8stesting.Action) (bool, watch.Interface, error) {
		if watches.Add(1) == 1 {
			return true, first, nil
		}
		return true, watch.NewRaceFreeFake(), nil
	})
	idx, p := startPods(t, client)
	ip := netip.MustParseAddr("10.1.0.5")
	if got := idx.namespaceOf(ip); got != "ns1" {
		t.Fatalf("before the relist: %q, want ns1", got)
	}
	deleted := make(chan any, 1)
	if _, err := p.informers[0].AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: func(obj any) { deleted <- obj },
	}); err != nil {
		t.Fatal(err)
	}
	// An expired watch makes the reflector list again.
	first.Error(&metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired})
	select {
	case obj := <-deleted:
		tomb, ok := obj.(cache.DeletedFinalStateUnknown)
		if !ok || tomb.Key != "ns1/web-0" || !reflect.DeepEqual(tomb.Obj, strippedPodNetworkFullPod()) {
			t.Fatalf("deleted %#v, want a tombstone of the cached clientPod", obj)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no deletion after the relist")
	}
	eventually(t, "claim dropped", func() bool { return idx.namespaceOf(ip) == "" })
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
		{"same creation time: the name decides, whatever the order", []podStep{
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
					if got := idx.namespaceOf(netip.MustParseAddr(ip)); got != want {
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
func podBarrier(t *testing.T, client *fake.Clientset, idx *clientIndex, step int) {
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
	eventually(t, "barrier at "+ip, func() bool { return idx.namespaceOf(netip.MustParseAddr(ip)) == "barrier" })
}

// TestPodSourceDeleteForms: a deletion removes the claim whether the
// informer gives the pod or a tombstone, even one whose last known state is
// stale or missing.
func TestPodSourceDeleteForms(t *testing.T) {
	const x = "10.1.0.5"
	for _, tc := range []struct {
		name string
		obj  any
	}{
		{"pod", clientPodOf("ns2", "b", 2, x)},
		{"tombstone", cache.DeletedFinalStateUnknown{Key: "ns2/b", Obj: clientPodOf("ns2", "b", 2, x)}},
		{"tombstone with a stale IP", cache.DeletedFinalStateUnknown{Key: "ns2/b", Obj: clientPodOf("ns2", "b", 2, "10.9.9.9")}},
		{"tombstone without an object", cache.DeletedFinalStateUnknown{Key: "ns2/b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := testPod("ns1", "a", 1, x), testPod("ns2", "b", 2, x)
			idx, p := startPods(t, newFakePods(t, a, b))
			addr := netip.MustParseAddr(x)
			if got := idx.namespaceOf(addr); got != "ns2" {
				t.Fatalf("before the deletion: %q, want ns2", got)
			}
			p.remove(tc.obj)
			if got := idx.namespaceOf(addr); got != "ns1" {
				t.Fatalf("after the deletion: %q, want ns1", got)
			}
			// A stale update after the deletion would be a new pod of that
			// name; a repeated deletion changes nothing.
			p.remove(tc.obj)
			if got := idx.namespaceOf(addr); got != "ns1" {
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
				if got := idx.namespaceOf(ip); got != want {
					t.Errorf("%s -> %q, want %q", ip, got, want)
				}
			}
			if tc.name == "repeated" && len(p.informers) != 1 {
				t.Errorf("%d informers for one namespace", len(p.informers))
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
	idx := newClientIndex()
	p := newPodSource(client, nil, idx)
	p.start()
	defer p.stop()
	defer once.Do(func() { close(release) })

	ip := netip.MustParseAddr("10.1.0.1")
	idx.set("ns1/early", &podClaim{namespace: "ns1", name: "early", ips: []netip.Addr{netip.MustParseAddr("10.1.0.9")}})
	time.Sleep(50 * time.Millisecond)
	if idx.ready.Load() {
		t.Fatal("synced before the list returned")
	}
	if got := idx.namespaceOf(netip.MustParseAddr("10.1.0.9")); got != "" {
		t.Fatalf("before the sync: %q, want none", got)
	}
	once.Do(func() { close(release) })
	eventually(t, "synced", idx.ready.Load)
	if got := idx.namespaceOf(ip); got != "ns1" {
		t.Fatalf("after the sync: %q, want ns1", got)
	}
}

// filledIndex is a synced index of n pods, spread over namespaces, at
// 10.x.y.z and at fd00::x:y:z.
func filledIndex(n int) (*clientIndex, []netip.Addr) {
	idx := newClientIndex()
	ips := make([]netip.Addr, 0, 2*n)
	for i := range n {
		v4 := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		v6 := netip.AddrFrom16([16]byte{0: 0xfd, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
		ns := fmt.Sprintf("ns%d", i%50)
		name := fmt.Sprintf("pod%d", i)
		idx.set(ns+"/"+name, &podClaim{namespace: ns, name: name, ips: []netip.Addr{v4, v6}})
		ips = append(ips, v4, v6)
	}
	idx.markSynced()
	return idx, ips
}

// TestClientIndexNamespaceOfAllocs: the lookup is on the query path.
func TestClientIndexNamespaceOfAllocs(t *testing.T) {
	idx, _ := filledIndex(1000)
	unsynced := newClientIndex()
	for _, tc := range []struct {
		name string
		idx  *clientIndex
		ip   netip.Addr
		want string
	}{
		{"IPv4 hit", idx, netip.MustParseAddr("10.0.0.7"), "ns7"},
		{"IPv4-mapped hit", idx, netip.MustParseAddr("::ffff:10.0.0.7"), "ns7"},
		{"IPv6 hit", idx, netip.MustParseAddr("fd00::7"), "ns7"},
		{"miss", idx, netip.MustParseAddr("192.0.2.1"), ""},
		{"zero address", idx, netip.Addr{}, ""},
		{"not synced", unsynced, netip.MustParseAddr("10.0.0.7"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.idx.namespaceOf(tc.ip); got != tc.want {
				t.Fatalf("%s -> %q, want %q", tc.ip, got, tc.want)
			}
			if n := testing.AllocsPerRun(1000, func() { tc.idx.namespaceOf(tc.ip) }); n != 0 {
				t.Fatalf("%v allocations per lookup, want 0", n)
			}
		})
	}
}

// TestClientIndexCopiesOnlyTouchedShards: an event replaces the shards of the
// IPs it touched and leaves every other shard, and any map a reader holds,
// as it was.
func TestClientIndexCopiesOnlyTouchedShards(t *testing.T) {
	idx, _ := filledIndex(1000)
	var before [clientShards]*map[netip.Addr]string
	for i := range idx.shards {
		before[i] = idx.shards[i].Load()
	}
	moved := netip.MustParseAddr("10.0.0.7")
	fresh := netip.MustParseAddr("10.200.0.1")
	idx.set("ns7/pod7", &podClaim{namespace: "ns7", name: "pod7", ips: []netip.Addr{fresh}})

	touched := map[int]bool{shardOf(moved): true, shardOf(fresh): true,
		shardOf(netip.MustParseAddr("fd00::7")): true}
	for i := range idx.shards {
		if changed := idx.shards[i].Load() != before[i]; changed != touched[i] {
			t.Errorf("shard %d: replaced %v, touched %v", i, changed, touched[i])
		}
	}
	if got := (*before[shardOf(moved)])[moved]; got != "ns7" {
		t.Errorf("a reader's old shard changed under it: %q", got)
	}
	if got := idx.namespaceOf(moved); got != "" {
		t.Errorf("old IP: %q, want none", got)
	}
	if got := idx.namespaceOf(fresh); got != "ns7" {
		t.Errorf("new IP: %q, want ns7", got)
	}
}

// TestClientIndexShardSpread: pod IPs of one small CIDR, as a cluster gives
// them, reach every shard, so no shard grows to hold most of the index.
func TestClientIndexShardSpread(t *testing.T) {
	counts := make([]int, clientShards)
	const n = 4096
	for i := range n {
		counts[shardOf(netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}))]++
	}
	for s, c := range counts {
		if c == 0 || c > 3*n/clientShards {
			t.Errorf("shard %d holds %d of %d addresses", s, c, n)
		}
	}
}

// TestClientIndexConcurrentReaders runs lookups while pods come and go, for
// the race detector.
func TestClientIndexConcurrentReaders(t *testing.T) {
	idx, ips := filledIndex(256)
	var stop atomic.Bool
	var readers sync.WaitGroup
	for r := range 4 {
		readers.Go(func() {
			for i := r; !stop.Load(); i++ {
				idx.namespaceOf(ips[i%len(ips)])
			}
		})
	}
	for i := range 2000 {
		ns, name := fmt.Sprintf("ns%d", i%7), fmt.Sprintf("churn%d", i%100)
		ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
		if i%3 == 0 {
			idx.set(ns+"/"+name, nil)
		} else {
			idx.set(ns+"/"+name, &podClaim{namespace: ns, name: name, created: clientEpoch.Add(time.Duration(i)), ips: []netip.Addr{ip}})
		}
	}
	stop.Store(true)
	readers.Wait()
}

// TestPodSourceStopLeavesNoGoroutine: stop returns after the informers and
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
			defer verifyNoLeaks(t, goleak.IgnoreCurrent())
			before := goroutineIDs()
			idx := newClientIndex()
			p := newPodSource(client, tc.namespaces, idx)
			p.start()
			if tc.waitSync {
				eventually(t, "synced", idx.ready.Load)
				if _, err := client.CoreV1().Pods("ns1").Create(context.Background(), testPod("ns1", "b", 1, "10.1.0.2"), metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				eventually(t, "new pod", func() bool { return idx.namespaceOf(netip.MustParseAddr("10.1.0.2")) == "ns1" })
			}
			p.stop()
			// goleak waits for goroutines to end, while stop promises they
			// have ended when it returns: look once, at once, for any left
			// waiting. One that is runnable is past its last wait (the
			// goroutine that signalled stop, say) and goleak sees it end.
			for id, stack := range goroutineStacks() {
				if !before[id] && !finishing(stack) &&
					(strings.Contains(stack, "k8s.io/client-go/") || strings.Contains(stack, "serviceentry.(*podSource)")) {
					t.Errorf("running after stop returned:\n%s", stack)
				}
			}
			p.stop() // a second stop is harmless
		})
	}
}

// goroutineStacks returns the stack of every goroutine, by ID.
func goroutineStacks() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	stacks := make(map[string]string)
	for _, g := range strings.Split(string(buf), "\n\n") {
		id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
		stacks[id] = g
	}
	return stacks
}

// finishing reports whether a goroutine's stack shows it running rather
// than waiting.
func finishing(stack string) bool {
	header, _, _ := strings.Cut(stack, "\n")
	return strings.Contains(header, "[runnable") || strings.Contains(header, "[running")
}

func goroutineIDs() map[string]bool {
	ids := make(map[string]bool)
	for id := range goroutineStacks() {
		ids[id] = true
	}
	return ids
}

func BenchmarkNamespaceOf(b *testing.B) {
	idx, ips := filledIndex(10000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		idx.namespaceOf(ips[i%len(ips)])
		i++
	}
}

// TestPodSourceStopWaitsForList: client-go leaves a list in progress behind
// when its informer stops; stop waits for it.
func TestPodSourceStopWaitsForList(t *testing.T) {
	client := newFakePods(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		once.Do(func() { close(entered) })
		<-release
		return false, nil, nil
	})
	p := newPodSource(client, nil, newClientIndex())
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
// "B/pod" is everything it holds (the informer's cache and machinery and the
// index), "cache-B/pod" what letting go of the stopped informers frees (the
// cached objects, and the strings that only they hold). The fake clientset's
// list answers with pods built afresh for each call, as an API server's are
// decoded afresh, and its tracker holds none: so no string the cache keeps is
// shared with, and hidden in, the fake's own objects. Run with -benchtime 1x:
// an iteration is a whole list.
func BenchmarkPodCacheMemory(b *testing.B) {
	const pods, namespaces = 10000, 1000
	clientfeaturestesting.SetFeatureDuringTest(b, features.WatchListClient, false)
	var total, cache float64
	n := 0
	for b.Loop() {
		t, c := podCacheMemory(b, pods, namespaces)
		total += t
		cache += c
		n++
	}
	b.ReportMetric(total/float64(n)/pods, "B/pod")
	b.ReportMetric(cache/float64(n)/pods, "cache-B/pod")
}

// podCacheMemory runs a pod source over pods pods and returns the live heap
// it holds once synced, and the part of it that the informers held.
func podCacheMemory(b *testing.B, pods, namespaces int) (total, informers float64) {
	client := fake.NewClientset()
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		list := &corev1.PodList{Items: make([]corev1.Pod, pods)}
		for i := range list.Items {
			list.Items[i] = *benchPod(i, namespaces)
		}
		return true, list, nil
	})
	idx := newClientIndex()
	p := newPodSource(client, nil, idx)
	base := liveHeap()
	p.start()
	for deadline := time.Now().Add(time.Minute); !idx.ready.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("pod informer not synced")
		}
	}
	if got := idx.namespaceOf(benchPodIP(pods - 1)); got != benchPodNamespace(pods-1, namespaces) {
		b.Fatalf("last pod's namespace %q", got)
	}
	synced := liveHeap()
	p.stop() // and p is not used after it, so its informers are garbage
	withoutInformers := liveHeap()
	runtime.KeepAlive(idx)
	return float64(synced) - float64(base), float64(synced) - float64(withoutInformers)
}

func liveHeap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
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
