package kube

import (
	"context"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	"go.uber.org/goleak"
	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stesting "k8s.io/client-go/testing"
)

func v1WorkloadEntry(ns, name, address string, labels map[string]string) *clientv1.WorkloadEntry {
	return &clientv1.WorkloadEntry{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: networking.WorkloadEntry{Address: address, Labels: labels, Ports: map[string]uint32{"tcp": 5432}},
	}
}

func waitSignal(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
	}
}

// TestKubeSourceWorkloadEntries: WorkloadEntries reach the sink as workloads
// from the first read (before it is published) and on every add, update
// and delete, in every namespace read and in no other; an address DNS
// cannot use is reported once per change, with the object's key.
func TestKubeSourceWorkloadEntries(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	client := newFakeKube(t, "v1", "v1beta1", "v1alpha3")
	ctx := context.Background()
	wles := client.NetworkingV1().WorkloadEntries("ns")
	if _, err := wles.Create(ctx, v1WorkloadEntry("ns", "a", "10.0.0.1", map[string]string{"app": "db"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.NetworkingV1().WorkloadEntries("other").Create(ctx, v1WorkloadEntry("other", "o", "10.0.0.9", nil),
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st := sourcetest.NewSink()
	k := fakeSource(client, st, entry.Options{}, "ns")
	watching := signalWatches(&k.workloadLister)
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	defer k.Stop() // before the leak check
	if !st.WaitSynced(10 * time.Second) {
		t.Fatal("not synced within 10s")
	}
	// Read before the first table: no later event could have brought it.
	if got := addrsOf(st, entry.KindWorkloadEntry); !maps.Equal(got, map[string]string{"ns/a": "10.0.0.1"}) {
		t.Fatalf("when synced: %v", got)
	}
	if w := st.Workloads()[entry.WorkloadEntryKey("ns/a")]; !w.Labels.Selects(entry.SelectorOf(map[string]string{"app": "db"})) || w.Namespace() != "ns" {
		t.Fatalf("workload %+v", w)
	}
	waitSignal(t, watching, "WorkloadEntry watch")

	steps := []struct {
		name string
		do   func() error
		want map[string]string
	}{
		{"add", func() error {
			_, err := wles.Create(ctx, v1WorkloadEntry("ns", "b", "fd00::2", nil), metav1.CreateOptions{})
			return err
		}, map[string]string{"ns/a": "10.0.0.1", "ns/b": "fd00::2"}},
		{"update", func() error {
			_, err := wles.Update(ctx, v1WorkloadEntry("ns", "a", "10.0.0.11", nil), metav1.UpdateOptions{})
			return err
		}, map[string]string{"ns/a": "10.0.0.11", "ns/b": "fd00::2"}},
		{"a host name: a workload without addresses", func() error {
			_, err := wles.Update(ctx, v1WorkloadEntry("ns", "b", "db.example.com", nil), metav1.UpdateOptions{})
			return err
		}, map[string]string{"ns/a": "10.0.0.11", "ns/b": ""}},
		{"delete", func() error { return wles.Delete(ctx, "a", metav1.DeleteOptions{}) }, map[string]string{"ns/b": ""}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		sourcetest.Eventually(t, s.name, func() bool { return maps.Equal(addrsOf(st, entry.KindWorkloadEntry), s.want) })
	}

	// An invalid address: reported once, not again on an update that keeps
	// it; a new problem is reported.
	bad := v1WorkloadEntry("ns", "bad", "not an address!", nil)
	if _, err := wles.Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sourcetest.Eventually(t, "the invalid address reported", func() bool { return st.Count(entry.ReasonInvalidAddress) == 1 })
	if _, ok := st.Skips("WorkloadEntry ns/bad"); !ok {
		t.Errorf("the problem does not name the WorkloadEntry: %v", st.Keys())
	}
	bad.Labels = map[string]string{"v": "2"}
	if _, err := wles.Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sourcetest.Eventually(t, "the update", func() bool {
		w := st.Workloads()[entry.WorkloadEntryKey("ns/bad")]
		return w != nil && w.NumAddrs() == 0
	})
	bad.Spec.Address = "another bad one!"
	if _, err := wles.Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sourcetest.Eventually(t, "the new problem reported", func() bool { return st.Count(entry.ReasonInvalidAddress) == 2 })
}

// TestWorkloadStoreRelist: a relist replaces the namespace's WorkloadEntries
// (what it no longer holds is gone, the other namespaces' and the pods are
// kept), and a problem is reported once, not again at each relist.
func TestWorkloadStoreRelist(t *testing.T) {
	st := sourcetest.NewSink()
	other := &entry.Workload{Key: entry.WorkloadEntryKey("ns2/x")}
	pod := &entry.Workload{Key: entry.PodKey("ns1/p")}
	st.SetWorkloads(map[entry.Key]*entry.Workload{other.Key: other, pod.Key: pod})
	ws := newWorkloadStore("ns1", st)
	obj := func(name, address string) any {
		var wle entry.WorkloadEntry
		wle.Namespace, wle.Name, wle.Spec.Address = "ns1", name, address
		return &wle
	}
	steps := []struct {
		name  string
		list  []any
		want  map[string]string
		skips uint64
	}{
		{"first read", []any{obj("a", "10.0.0.1"), obj("b", "bad!")}, map[string]string{"ns1/a": "10.0.0.1", "ns1/b": "", "ns2/x": ""}, 1},
		{"relist without a", []any{obj("b", "bad!")}, map[string]string{"ns1/b": "", "ns2/x": ""}, 1},
		{"relist with b fixed", []any{obj("b", "10.0.0.2")}, map[string]string{"ns1/b": "10.0.0.2", "ns2/x": ""}, 1},
		{"relist with b bad again", []any{obj("b", "bad!")}, map[string]string{"ns1/b": "", "ns2/x": ""}, 2},
	}
	for i, s := range steps {
		if err := ws.Replace(s.list, ""); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			select {
			case <-ws.synced:
			default:
				t.Fatal("the first Replace did not mark the namespace read")
			}
		}
		if got := addrsOf(st, entry.KindWorkloadEntry); !maps.Equal(got, s.want) {
			t.Errorf("%s: %v, want %v", s.name, got, s.want)
		}
		if got := st.Count(entry.ReasonInvalidAddress); got != s.skips {
			t.Errorf("%s: %d problems reported, want %d", s.name, got, s.skips)
		}
	}
	if st.Workloads()[pod.Key] == nil {
		t.Error("a WorkloadEntry relist removed a pod")
	}
	// A deletion by the converted object (as a WatchList may hand it) or
	// by the decoded one removes it alike.
	c, err := toWorkload(obj("b", "bad!"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Delete(c); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Workloads()[entry.WorkloadEntryKey("ns1/b")]; ok {
		t.Error("deleted by its converted object, still held")
	}
}

// TestKubeSourceWaitsForWorkloadEntries: the first table waits for the
// WorkloadEntries' first read when they can be read: published without them,
// a headless entry would answer with part of its endpoints.
func TestKubeSourceWaitsForWorkloadEntries(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	client := newFakeKube(t, "v1")
	ctx := context.Background()
	if _, err := client.NetworkingV1().ServiceEntries("ns").Create(ctx, v1Entry("ns", "a", "a.internal", "192.0.2.1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.NetworkingV1().WorkloadEntries("ns").Create(ctx, v1WorkloadEntry("ns", "w", "10.0.0.1", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var enter, leave sync.Once
	st := sourcetest.NewSink()
	k := fakeSource(client, st, entry.Options{})
	// The list is held here, not in a reactor of the fake clientset, which
	// runs its reactors under one lock: the ServiceEntries' list would wait
	// too.
	lister := k.workloadLister
	k.workloadLister = func(namespace, version string) (listWatchFuncs, error) {
		lw, err := lister(namespace, version)
		inner := lw.list
		lw.list = func(ctx context.Context, o metav1.ListOptions) (k8sruntime.Object, error) {
			enter.Do(func() { close(entered) })
			<-release
			return inner(ctx, o)
		}
		return lw, err
	}
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	// Before stop, which waits for the list: deferred calls run last first.
	defer leave.Do(func() { close(release) })
	waitSignal(t, entered, "WorkloadEntry list")
	sourcetest.Eventually(t, "the ServiceEntries read", func() bool { return len(st.Entries()) == 1 })
	if st.WaitSynced(200 * time.Millisecond) {
		t.Fatal("published before the WorkloadEntries were read")
	}
	leave.Do(func() { close(release) })
	if !st.WaitSynced(10 * time.Second) {
		t.Fatal("not published once the WorkloadEntries were read")
	}
	if got := addrsOf(st, entry.KindWorkloadEntry); !maps.Equal(got, map[string]string{"ns/w": "10.0.0.1"}) {
		t.Fatalf("published with WorkloadEntries %v", got)
	}
}

// TestKubeSourceWorkloadEntriesRefused: WorkloadEntries that cannot be read
// never hold up the ServiceEntries. Refused (RBAC not updated: forbidden) or
// gone (not found), the plugin is ready without them, not never, and
// serves its entries; the reader keeps trying, and once allowed the
// WorkloadEntries arrive as changes. Not served at all (no CRD for them),
// they are not read.
func TestKubeSourceWorkloadEntriesRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error // of every WorkloadEntry list until allowed; nil: not served
	}{
		{"forbidden", apierrors.NewForbidden(schema.GroupResource{Group: entry.Group, Resource: "workloadentries"}, "", nil)},
		{"not found", apierrors.NewNotFound(schema.GroupResource{Group: entry.Group, Resource: "workloadentries"}, "")},
		{"not served", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			client := newFakeKube(t, "v1")
			if tc.err == nil {
				for _, r := range client.Fake.Resources {
					r.APIResources = slices.DeleteFunc(r.APIResources, func(r metav1.APIResource) bool { return r.Name == "workloadentries" })
				}
			}
			ctx := context.Background()
			if _, err := client.NetworkingV1().ServiceEntries("ns").Create(ctx, v1Entry("ns", "a", "a.internal", "192.0.2.1"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := client.NetworkingV1().WorkloadEntries("ns").Create(ctx, v1WorkloadEntry("ns", "w", "10.0.0.1", nil), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			var refused, allowed atomic.Int32
			var allow atomic.Bool
			client.PrependReactor("list", "workloadentries", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
				if tc.err == nil {
					t.Error("a WorkloadEntry list, while not served")
				}
				if !allow.Load() {
					refused.Add(1)
					return true, nil, tc.err
				}
				allowed.Add(1)
				return false, nil, nil
			})
			st := sourcetest.NewSink()
			k := fakeSource(client, st, entry.Options{})
			if err := k.Start(); err != nil {
				t.Fatal(err)
			}
			defer k.Stop() // before the leak check
			if !st.WaitSynced(10 * time.Second) {
				t.Fatal("not ready within 10s")
			}
			if got := st.FirstA("a.internal"); got != "192.0.2.1" {
				t.Fatalf("ServiceEntries not served: %q", got)
			}
			if len(st.Workloads()) != 0 {
				t.Fatalf("workloads %v", st.Workloads())
			}
			if tc.err == nil {
				time.Sleep(100 * time.Millisecond)
				return
			}
			if refused.Load() == 0 {
				t.Fatal("synced without trying to list WorkloadEntries")
			}
			// The reflector retries after its backoff (about a second at
			// first).
			allow.Store(true)
			sourcetest.EventuallyWithin(t, 20*time.Second, "WorkloadEntries once allowed", func() bool {
				return maps.Equal(addrsOf(st, entry.KindWorkloadEntry), map[string]string{"ns/w": "10.0.0.1"})
			})
		})
	}
}

// TestWorkloadStoreRefusalLoggedOnce: a refusal settles the first read and
// is logged once until a read succeeds; other errors settle nothing.
func TestWorkloadStoreRefusalLoggedOnce(t *testing.T) {
	ws := newWorkloadStore("", sourcetest.NewSink())
	settled := func() bool {
		select {
		case <-ws.settled:
			return true
		default:
			return false
		}
	}
	ws.readResult(apierrors.NewServiceUnavailable("down"))
	if settled() || ws.refusing.Load() {
		t.Fatal("an outage settled the first read")
	}
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: entry.Group, Resource: "workloadentries"}, "", nil)
	ws.readResult(forbidden)
	if !settled() || !ws.refusing.Load() {
		t.Fatal("a refusal did not settle the first read")
	}
	ws.readResult(forbidden) // logged once: refusing stays set, no second close panics
	ws.readResult(nil)
	if ws.refusing.Load() {
		t.Fatal("a successful read did not end the refusal")
	}
	if err := ws.Replace(nil, "1"); err != nil { // the first list after a refusal
		t.Fatal(err)
	}
}

// TestKubeSourceStopWithWorkloadEntryListHanging: stop returns at once and
// leaves no goroutine while the WorkloadEntry list hangs at the API server,
// and the table is not published meanwhile.
func TestKubeSourceStopWithWorkloadEntryListHanging(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	api := &fakeAPIServer{objects: []string{sourcetest.APIObject("ns1", "a", "a.internal", "192.0.2.1")}}
	hung := make(chan struct{}, 16)
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/workloadentries") {
			hung <- struct{}{}
			<-r.Context().Done()
			return
		}
		api.ServeHTTP(w, r)
	}))
	defer server.Close()
	defer server.CloseClientConnections()
	st := sourcetest.NewSink()
	src, err := New(Config{Kubeconfig: sourcetest.Kubeconfig(t, server.URL)}, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Start(); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, hung, "WorkloadEntry request")
	sourcetest.Eventually(t, "the ServiceEntries read", func() bool { return len(st.Entries()) == 1 })
	if st.Synced() {
		t.Error("published while the WorkloadEntries were being read")
	}
	began := time.Now()
	src.Stop()
	if took := time.Since(began); took > time.Second {
		t.Errorf("stop took %v, want < 1s", took)
	}
}
