package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/podindex"
	"github.com/coredns-serviceentry/serviceentry/internal/source"
	"github.com/coredns-serviceentry/serviceentry/internal/source/manifest"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	"go.uber.org/goleak"
	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	clientv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
	"istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/features"
	clientfeaturestesting "k8s.io/client-go/features/testing"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"
)

// newFakeKube returns a fake Istio clientset whose discovery serves
// ServiceEntries and WorkloadEntries in the given versions.
func newFakeKube(t *testing.T, versions ...string) *fake.Clientset {
	t.Helper()
	// With WatchListClient on (client-go >= 0.35 default) reflectors on the
	// fake clientset never sync; real API servers are unaffected.
	clientfeaturestesting.SetFeatureDuringTest(t, features.WatchListClient, false)
	client := fake.NewSimpleClientset()
	disco := client.Discovery().(*fakediscovery.FakeDiscovery)
	for _, v := range versions {
		disco.Resources = append(disco.Resources, &metav1.APIResourceList{
			GroupVersion: entry.Group + "/" + v,
			APIResources: []metav1.APIResource{{Name: "serviceentries", Kind: "ServiceEntry", Namespaced: true},
				{Name: "workloadentries", Kind: "WorkloadEntry", Namespaced: true}},
		})
	}
	return client
}

// fakeSource is a Kubernetes source on a fake clientset, reading discovery
// from it and retrying discovery every few milliseconds.
func fakeSource(client *fake.Clientset, sink source.Sink, opts entry.Options, namespaces ...string) *Source {
	return &Source{lister: fakeLister(client, false), workloadLister: fakeLister(client, true), sink: sink, opts: opts, namespaces: namespaces,
		resources: func(_ context.Context, gv string) (*metav1.APIResourceList, error) {
			return client.Discovery().ServerResourcesForGroupVersion(gv)
		},
		backoff: wait.Backoff{Duration: 5 * time.Millisecond, Factor: 1, Steps: math.MaxInt32}}
}

// fakeLister lists and watches the fake clientset's typed ServiceEntries
// (WorkloadEntries with workloads) and hands the source each one re-encoded
// as the API server sends it and decoded by the slim decoder, as the
// source's own REST client does.
func fakeLister(client *fake.Clientset, workloads bool) func(namespace, version string) (listWatchFuncs, error) {
	return func(namespace, version string) (listWatchFuncs, error) {
		var list func(context.Context, metav1.ListOptions) (runtime.Object, error)
		var watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)
		switch {
		case workloads && version == "v1":
			c := client.NetworkingV1().WorkloadEntries(namespace)
			list = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }
			watchFn = c.Watch
		case workloads && version == "v1beta1":
			c := client.NetworkingV1beta1().WorkloadEntries(namespace)
			list = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }
			watchFn = c.Watch
		case workloads:
			return listWatchFuncs{}, fmt.Errorf("no fake for %s", version)
		case version == "v1":
			c := client.NetworkingV1().ServiceEntries(namespace)
			list = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }
			watchFn = c.Watch
		case version == "v1beta1":
			c := client.NetworkingV1beta1().ServiceEntries(namespace)
			list = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, o) }
			watchFn = c.Watch
		default:
			return listWatchFuncs{}, fmt.Errorf("no fake for %s", version)
		}
		gv := entry.Group + "/" + version
		reencode := func(obj runtime.Object) (runtime.Object, error) {
			raw, err := json.Marshal(obj)
			if err != nil {
				return nil, err
			}
			// The fake's objects carry no kind; the API server's do.
			raw = append([]byte(`{"apiVersion":"`+gv+`","kind":"`+reflect.TypeOf(obj).Elem().Name()+`",`), raw[1:]...)
			return runtime.Decode(slimCodecs.UniversalDeserializer(), raw)
		}
		return listWatchFuncs{
			list: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				typed, err := list(ctx, o)
				if err != nil {
					return nil, err
				}
				return reencode(typed)
			},
			watch: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				w, err := watchFn(ctx, o)
				if err != nil {
					return nil, err
				}
				return watch.Filter(w, func(ev watch.Event) (watch.Event, bool) {
					if ev.Type == watch.Error {
						return ev, true
					}
					obj, err := reencode(ev.Object)
					if err != nil {
						panic(err)
					}
					ev.Object = obj
					return ev, true
				}), nil
			},
		}, nil
	}
}

// startKube runs a source on client into a recording sink and waits for its
// first full read.
func startKube(t *testing.T, client *fake.Clientset, namespaces ...string) *sourcetest.Sink {
	t.Helper()
	return startKubeWith(t, client, "", namespaces...)
}

// startKubeWith is startKube with a label selector.
func startKubeWith(t *testing.T, client *fake.Clientset, labels string, namespaces ...string) *sourcetest.Sink {
	t.Helper()
	sink := sourcetest.NewSink()
	k := fakeSource(client, sink, entry.Options{}, namespaces...)
	k.labels = labels
	watching := signalWatches(&k.lister)
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	if !sink.WaitSynced(10 * time.Second) {
		t.Fatal("not synced within 10s")
	}
	// The fake clientset does not replay to a watch what changed before it
	// began: wait for every reader's watch, so that the test's changes reach
	// the source.
	for range max(len(namespaces), 1) {
		select {
		case <-watching:
		case <-time.After(10 * time.Second):
			t.Fatal("no watch within 10s")
		}
	}
	return sink
}

// signalWatches makes the lister at listerOf (a Source's lister of
// ServiceEntries or of WorkloadEntries) signal on the returned channel each
// watch it has begun, once the fake clientset delivers its events.
func signalWatches(listerOf *func(namespace, version string) (listWatchFuncs, error)) <-chan struct{} {
	watching := make(chan struct{}, 100)
	lister := *listerOf
	*listerOf = func(namespace, version string) (listWatchFuncs, error) {
		lw, err := lister(namespace, version)
		if err != nil {
			return lw, err
		}
		inner := lw.watch
		lw.watch = func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := inner(ctx, o)
			if err == nil {
				select {
				case watching <- struct{}{}:
				default:
				}
			}
			return w, err
		}
		return lw, nil
	}
	return watching
}

func v1Entry(ns, name, host string, addrs ...string) *clientv1.ServiceEntry {
	return &clientv1.ServiceEntry{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Annotations:   map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: networking.ServiceEntry{Hosts: []string{host}, Addresses: addrs,
			Endpoints: []*networking.WorkloadEntry{{Address: "10.0.0.1"}}},
	}
}

func TestKubeSourceEvents(t *testing.T) {
	client := newFakeKube(t, "v1", "v1beta1", "v1alpha3")
	ctx := context.Background()
	ses := client.NetworkingV1().ServiceEntries("ns")
	if _, err := ses.Create(ctx, v1Entry("ns", "a", "a.internal", "192.0.2.1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st := startKube(t, client)
	if !st.Synced() {
		t.Fatal("not synced after start")
	}
	if got := st.FirstA("a.internal"); got != "192.0.2.1" {
		t.Fatalf("initial list: got %q", got)
	}

	if _, err := ses.Create(ctx, v1Entry("ns", "b", "b.internal", "192.0.2.2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sourcetest.Eventually(t, "add", func() bool { return st.FirstA("b.internal") == "192.0.2.2" })

	updated := v1Entry("ns", "a", "renamed.internal", "192.0.2.11")
	if _, err := ses.Update(ctx, updated, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sourcetest.Eventually(t, "update", func() bool {
		return st.FirstA("renamed.internal") == "192.0.2.11" && st.FirstA("a.internal") == ""
	})

	if err := ses.Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sourcetest.Eventually(t, "delete", func() bool { return st.FirstA("b.internal") == "" })
}

// TestKubeSourceOlderVersion: a cluster serving only v1beta1 is read through
// v1beta1.
func TestKubeSourceOlderVersion(t *testing.T) {
	client := newFakeKube(t, "v1beta1", "v1alpha3")
	se := &clientv1beta1.ServiceEntry{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "old"},
		Spec:       networking.ServiceEntry{Hosts: []string{"old.internal"}, Addresses: []string{"192.0.2.5"}},
	}
	if _, err := client.NetworkingV1beta1().ServiceEntries("ns").Create(context.Background(), se, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st := startKube(t, client)
	if got := st.FirstA("old.internal"); got != "192.0.2.5" {
		t.Fatalf("got %q", got)
	}
}

// TestKubeSourceNoCRD: a cluster without Istio is a valid state: the source
// publishes an empty table (ready), keeps checking, and reads the entries once
// the CRD appears, publishing them whole.
func TestKubeSourceNoCRD(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	client := newFakeKube(t, "v1")
	ctx := context.Background()
	for i := range 50 {
		name := fmt.Sprintf("e%d", i)
		if _, err := client.NetworkingV1().ServiceEntries("ns").Create(ctx, v1Entry("ns", name, name+".internal", "192.0.2.1"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var crd atomic.Bool
	sink := sourcetest.NewSink()
	k := fakeSource(client, sink, entry.Options{})
	k.resources = func(ctx context.Context, gv string) (*metav1.APIResourceList, error) {
		if !crd.Load() {
			return nil, apierrors.NewNotFound(schema.GroupResource{}, gv)
		}
		return client.Discovery().ServerResourcesForGroupVersion(gv)
	}
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	defer k.Stop() // before the leak check
	if !sink.WaitSynced(5 * time.Second) {
		t.Fatal("no empty table published without a CRD")
	}
	if n := sink.Hosts(); n != 0 {
		t.Fatalf("without a CRD the table has %d hosts", n)
	}
	crd.Store(true)
	sourcetest.Eventually(t, "entries read once the CRD appears", func() bool { return sink.Hosts() == 50 })
	if got := sink.Partial(); got != "" {
		t.Fatalf("published from a partial read: %s", got)
	}
}

// TestKubeSourceStopIsPrompt: stop returns within a second and leaves no
// goroutine while a request hangs at an API server that never answers it:
// discovery, or the reflector's list once discovery has succeeded.
func TestKubeSourceStopIsPrompt(t *testing.T) {
	// Both kinds in v1, so that discovery asks no other version (which
	// would hang) and the lists are reached.
	discovery := `{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"networking.istio.io/v1",` +
		`"resources":[{"name":"serviceentries","namespaced":true,"kind":"ServiceEntry","verbs":["get","list","watch"]},` +
		`{"name":"workloadentries","namespaced":true,"kind":"WorkloadEntry","verbs":["get","list","watch"]}]}`
	for _, c := range []struct {
		name     string
		answered string // the one path the server answers; every other request hangs
	}{
		{"discovery hangs", ""},
		{"list hangs", "/apis/networking.istio.io/v1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			hung := make(chan string, 16)
			server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == c.answered {
					w.Header().Set("Content-Type", "application/json")
					fmt.Fprint(w, discovery)
					return
				}
				hung <- r.URL.Path
				<-r.Context().Done()
			}))
			defer server.Close()
			defer server.CloseClientConnections()
			sink := sourcetest.NewSink()
			src, err := New(Config{Kubeconfig: sourcetest.Kubeconfig(t, server.URL)}, sink, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := src.Start(); err != nil {
				t.Fatal(err)
			}
			select {
			case path := <-hung:
				t.Logf("hanging at %s", path)
			case <-time.After(10 * time.Second):
				t.Fatal("no request reached the server")
			}
			began := time.Now()
			src.Stop()
			if took := time.Since(began); took > time.Second {
				t.Errorf("stop took %v, want < 1s", took)
			}
			if sink.Synced() {
				t.Error("a read was marked synced without any read")
			}
		})
	}
}

// TestKubeSourceSyncedMeansHandled: with a store slower than the reader,
// the table is published only once the store has applied the whole initial
// list, not when the reader has merely received it.
func TestKubeSourceSyncedMeansHandled(t *testing.T) {
	const n = 2000
	client := newFakeKube(t, "v1")
	ctx := context.Background()
	for i := range n {
		name := fmt.Sprintf("e%d", i)
		if _, err := client.NetworkingV1().ServiceEntries("ns").Create(ctx, v1Entry("ns", name, name+".internal", "192.0.2.1"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sink := sourcetest.NewSink()
	sink.Delay = 500 * time.Microsecond
	k := fakeSource(client, sink, entry.Options{})
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	if !sink.WaitSynced(30 * time.Second) {
		t.Fatal("not synced within 30s")
	}
	if got := sink.Partial(); got != "" {
		t.Fatalf("published from a partial read: %s", got)
	}
	if hosts := sink.Hosts(); hosts != n {
		t.Fatalf("first table has %d hosts, want %d", hosts, n)
	}
}

func TestKubeSourceNamespaces(t *testing.T) {
	client := newFakeKube(t, "v1")
	ctx := context.Background()
	for _, ns := range []string{"in1", "in2", "out"} {
		if _, err := client.NetworkingV1().ServiceEntries(ns).Create(ctx, v1Entry(ns, "se", ns+".internal", "192.0.2.1"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	st := startKube(t, client, "in1", "in2")
	for host, want := range map[string]string{"in1.internal": "192.0.2.1", "in2.internal": "192.0.2.1", "out.internal": ""} {
		if got := st.FirstA(host); got != want {
			t.Errorf("%s: got %q, want %q", host, got, want)
		}
	}
}

// TestKubeSourceSecurityNarrowing: the Security examples (docs/security.md),
// the part that is the source's. A namespace that can write ServiceEntries
// declares hosts for everyone's DNS; namespaces and labels each narrow which
// entries are read, so which are delivered. (ZONES, the handler's part, is
// the plugin's TestSecurityNarrowing; RBAC is TestRBAC's, in
// test/integration.)
func TestKubeSourceSecurityNarrowing(t *testing.T) {
	client := newFakeKube(t, "v1")
	ctx := context.Background()
	for _, se := range []struct {
		ns, name, host, addr string
		published            bool
	}{
		{"platform", "api", "api.mesh.internal", "192.0.2.1", true},
		{"platform", "draft", "draft.mesh.internal", "192.0.2.2", false},
		{"team-a", "team", "team.mesh.internal", "192.0.2.3", true},
		{"team-a", "squat", "login.bank.example", "203.0.113.66", true},
	} {
		obj := v1Entry(se.ns, se.name, se.host, se.addr)
		if se.published {
			obj.Labels = map[string]string{"dns.example.com/publish": "true"}
		}
		if _, err := client.NetworkingV1().ServiceEntries(se.ns).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	everything := startKube(t, client)
	namespaces := startKube(t, client, "platform")
	labels := startKubeWith(t, client, "dns.example.com/publish=true")
	for _, c := range []struct {
		name string
		sink *sourcetest.Sink
		host string
		want string
	}{
		{"no narrowing: any host a namespace declares is delivered", everything, "login.bank.example", "203.0.113.66"},
		{"no narrowing: an entry without the label too", everything, "draft.mesh.internal", "192.0.2.2"},
		{"namespaces: other namespaces' hosts are not read", namespaces, "team.mesh.internal", ""},
		{"namespaces: nor their squatting", namespaces, "login.bank.example", ""},
		{"namespaces: the trusted namespace's are", namespaces, "api.mesh.internal", "192.0.2.1"},
		{"labels: an entry without the label is not read", labels, "draft.mesh.internal", ""},
		{"labels: one with it is", labels, "api.mesh.internal", "192.0.2.1"},
		{"labels: whatever its namespace", labels, "login.bank.example", "203.0.113.66"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := c.sink.FirstA(c.host); got != c.want {
				t.Errorf("%s: got %q, want %q", c.host, got, c.want)
			}
		})
	}
	for _, c := range []struct {
		name string
		sink *sourcetest.Sink
		want []string
	}{
		{"everything", everything, []string{"platform/api", "platform/draft", "team-a/squat", "team-a/team"}},
		{"namespaces", namespaces, []string{"platform/api", "platform/draft"}},
		{"labels", labels, []string{"platform/api", "team-a/squat", "team-a/team"}},
	} {
		var got []string
		for key := range c.sink.Entries() {
			got = append(got, key.Name)
		}
		if slices.Sort(got); !slices.Equal(got, c.want) {
			t.Errorf("%s: delivered %q, want %q", c.name, got, c.want)
		}
	}
}

// TestToCached: the reader keeps the converted entry and the object's
// key only; the transform is idempotent and deep copies keep the entry.
func TestToCached(t *testing.T) {
	k := &Source{opts: entry.Options{AutoAllocate: entry.AutoAllocateStatus}}
	se, _, err := slimSerializer.Decode([]byte(strings.Replace(sourcetest.APIObject("ns", "a", "a.internal", "192.0.2.1"),
		`"hosts":["a.internal"]`, `"hosts":["a.internal","bad_host!"]`, 1)), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := k.toCached(se)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := out.(*cachedEntry)
	if !ok {
		t.Fatalf("transform returned %T", out)
	}
	if c.key != "ns/a" || c.entry == nil || c.entry.Key.Name != "ns/a" || c.entry.Namespace() != "ns" || c.entry.Name() != "a" {
		t.Errorf("cached key %q, entry %+v", c.key, c.entry)
	}
	if key, err := cache.MetaNamespaceKeyFunc(c); err != nil || key != "ns/a" {
		t.Errorf("cache key: %q, %v", key, err)
	}
	if c.entry == nil || len(c.entry.Hosts) != 1 || c.entry.Hosts[0].Addrs()[0].String() != "192.0.2.1" {
		t.Errorf("cached entry: %+v", c.entry)
	}
	if len(c.skips) != 1 || c.skips[0].Reason != entry.ReasonInvalidHost {
		t.Errorf("skips: %+v", c.skips)
	}
	again, err := k.toCached(c)
	if err != nil || again != any(c) {
		t.Errorf("transform of a cached entry: %v, %v", again, err)
	}
	if cp := c.DeepCopyObject().(*cachedEntry); cp == c || cp.entry != c.entry || cp.key != "ns/a" {
		t.Errorf("deep copy: %+v", cp)
	}
}

// TestLegacySameAcrossSources: the same ServiceEntries read through the
// Kubernetes source and through manifests give the same legacy addresses:
// both sources deliver the same entries, so the allocator, which positions
// hosts by what the entries hold, gives them the same addresses.
func TestLegacySameAcrossSources(t *testing.T) {
	docs := sourcetest.LegacyEntries(60)
	opts := entry.Options{AutoAllocate: entry.AutoAllocateLegacy, DualStack: true}
	parsed, _, err := manifest.Parse("test.yaml", []byte(strings.Join(docs, "---\n")), opts, sourcetest.NewSink())
	if err != nil {
		t.Fatal(err)
	}
	fromFiles := make(map[entry.Key]*entry.Entry, len(parsed))
	for _, e := range parsed {
		fromFiles[e.Key] = e
	}

	client := newFakeKube(t, "v1")
	for _, d := range docs {
		var se clientv1.ServiceEntry
		if err := yaml.Unmarshal([]byte(d), &se); err != nil {
			t.Fatal(err)
		}
		if _, err := client.NetworkingV1().ServiceEntries(se.Namespace).Create(context.Background(), &se, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sink := sourcetest.NewSink()
	k := fakeSource(client, sink, opts)
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	if !sink.WaitSynced(10 * time.Second) {
		t.Fatal("not synced")
	}
	fromKube := sink.Published()
	if len(fromFiles) != len(docs) || len(fromKube) != len(docs) {
		t.Fatalf("%d entries from manifests, %d from Kubernetes, want %d each", len(fromFiles), len(fromKube), len(docs))
	}
	for i := range docs {
		meta, _ := sourcetest.LegacyFixture(i)
		key := entry.ServiceEntryKey(meta.Namespace + "/" + meta.Name)
		a, b := fromFiles[key], fromKube[key]
		if a == nil || b == nil || len(a.LegacyHosts()) != 1 || !reflect.DeepEqual(a, b) {
			t.Fatalf("%s: manifests %+v, kubernetes %+v", key, a, b)
		}
	}
}

// TestKubeSourceReportsSkipsOnce: a skipped host is counted when the entry
// brings it, not again on updates that bring the same problems; a new
// problem is counted.
func TestKubeSourceReportsSkipsOnce(t *testing.T) {
	client := newFakeKube(t, "v1")
	ctx := context.Background()
	ses := client.NetworkingV1().ServiceEntries("ns")
	se := v1Entry("ns", "a", "a.internal", "192.0.2.1")
	se.Spec.Hosts = append(se.Spec.Hosts, "bad_host!")
	if _, err := ses.Create(ctx, se, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st := startKube(t, client)
	invalid := func() uint64 { return st.Count(entry.ReasonInvalidHost) }
	if got := invalid(); got != 1 {
		t.Fatalf("after the add: %v skips counted, want 1", got)
	}
	for i := range 3 { // same problems, other changes
		se.Labels = map[string]string{"rev": fmt.Sprint(i)}
		se.Spec.Addresses = []string{fmt.Sprintf("192.0.2.%d", 10+i)}
		if _, err := ses.Update(ctx, se, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("192.0.2.%d", 10+i)
		sourcetest.Eventually(t, "update "+want, func() bool { return st.FirstA("a.internal") == want })
	}
	if got := invalid(); got != 1 {
		t.Fatalf("after updates with the same problem: %v skips counted, want 1", got)
	}
	se.Spec.Hosts = append(se.Spec.Hosts, "another bad host")
	if _, err := ses.Update(ctx, se, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sourcetest.Eventually(t, "the new problem counted", func() bool { return invalid() == 3 })
}

// TestKubeSourceExportToClient: with "exportto client" the source places
// clients through a pod informer of its own, started and stopped with it.
func TestKubeSourceExportToClient(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	asked := make(chan string, 100)
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case asked <- r.URL.Path:
		default:
		}
		http.NotFound(w, r)
	}))
	defer server.Close()
	src, err := New(Config{Kubeconfig: sourcetest.Kubeconfig(t, server.URL), Convert: entry.Options{ExportTo: entry.ExportClient}},
		sourcetest.NewSink(), podindex.New())
	if err != nil {
		t.Fatal(err)
	}
	if src.pods == nil {
		t.Fatal("no pod source for the client index")
	}
	if err := src.Start(); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	for listed := false; !listed; {
		select {
		case path := <-asked:
			listed = path == "/api/v1/pods"
		case <-timeout:
			t.Fatal("the pods were never listed")
		}
	}
	src.Stop()
}

// fakeAPIServer serves ServiceEntries and WorkloadEntries in v1 as the API
// server does: a list, a watch, and a WatchList (initial events ending with
// the annotated bookmark). Objects carry managedFields and kubectl's
// annotation, which the slim decoder skips. It records the request URLs of
// each kind; discovery is answered for every version, v1 alone serving
// anything.
type fakeAPIServer struct {
	objects   []string // JSON ServiceEntries, each with its namespace in metadata
	workloads []string // JSON WorkloadEntries, likewise
	mu        sync.Mutex
	queries   []string
	wleQuery  []string
}

func (f *fakeAPIServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	const discovery = `{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"networking.istio.io/v1",` +
		`"resources":[{"name":"serviceentries","namespaced":true,"kind":"ServiceEntry","verbs":["get","list","watch"]},` +
		`{"name":"workloadentries","namespaced":true,"kind":"WorkloadEntry","verbs":["get","list","watch"]}]}`
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Path == "/apis/networking.istio.io/v1" {
		fmt.Fprint(w, discovery)
		return
	}
	if version, ok := strings.CutPrefix(r.URL.Path, "/apis/networking.istio.io/"); ok && !strings.Contains(version, "/") {
		fmt.Fprintf(w, `{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"networking.istio.io/%s","resources":[]}`, version)
		return
	}
	kind, objects := "ServiceEntry", f.objects
	f.mu.Lock()
	if strings.HasSuffix(r.URL.Path, "/workloadentries") {
		kind, objects = "WorkloadEntry", f.workloads
		f.wleQuery = append(f.wleQuery, r.URL.String())
	} else {
		f.queries = append(f.queries, r.URL.String())
	}
	f.mu.Unlock()
	ns := ""
	if rest, ok := strings.CutPrefix(r.URL.Path, "/apis/networking.istio.io/v1/namespaces/"); ok {
		ns, _, _ = strings.Cut(rest, "/")
	}
	var items []string
	for _, o := range objects {
		if ns == "" || strings.Contains(o, `"namespace":"`+ns+`"`) {
			items = append(items, o)
		}
	}
	q := r.URL.Query()
	switch {
	case q.Get("watch") != "true":
		fmt.Fprintf(w, `{"kind":"%sList","apiVersion":"networking.istio.io/v1","metadata":{"resourceVersion":"10"},"items":[%s]}`, kind, strings.Join(items, ","))
	case q.Get("sendInitialEvents") == "true":
		for _, o := range items {
			fmt.Fprintf(w, `{"type":"ADDED","object":%s}`+"\n", o)
		}
		fmt.Fprintf(w, `{"type":"BOOKMARK","object":{"kind":"%s","apiVersion":"networking.istio.io/v1",`+
			`"metadata":{"resourceVersion":"10","creationTimestamp":null,"annotations":{"%s":"true"}},"spec":{}}}`+"\n", kind, metav1.InitialEventsAnnotationKey)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	default:
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}
}

func (f *fakeAPIServer) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.queries)
}

func (f *fakeAPIServer) seenWorkloads() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.wleQuery)
}

// TestKubeSourceSlimREST: the source's own REST clients read ServiceEntries
// and WorkloadEntries from an API server, with WatchList (the reflector's
// default, which needs the bookmark's annotation to end its sync) and with a
// list then a watch, for all namespaces or some, with the label selector in
// every ServiceEntry request and in no WorkloadEntry request (it chooses
// entries, not their endpoints). The first table waits for both.
func TestKubeSourceSlimREST(t *testing.T) {
	for _, c := range []struct {
		name       string
		watchList  bool
		namespaces []string
		want       map[string]string
		workloads  map[string]string // WorkloadEntry namespace/name -> address
	}{
		{"watchlist, all namespaces", true, nil, map[string]string{"a.internal": "192.0.2.1", "b.internal": "192.0.2.2"},
			map[string]string{"ns1/w": "10.0.0.1", "ns2/w": "10.0.0.2"}},
		{"watchlist, one namespace", true, []string{"ns1"}, map[string]string{"a.internal": "192.0.2.1", "b.internal": ""},
			map[string]string{"ns1/w": "10.0.0.1"}},
		{"list and watch, all namespaces", false, nil, map[string]string{"a.internal": "192.0.2.1", "b.internal": "192.0.2.2"},
			map[string]string{"ns1/w": "10.0.0.1", "ns2/w": "10.0.0.2"}},
		{"list and watch, two namespaces", false, []string{"ns1", "ns2"}, map[string]string{"a.internal": "192.0.2.1", "b.internal": "192.0.2.2"},
			map[string]string{"ns1/w": "10.0.0.1", "ns2/w": "10.0.0.2"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			clientfeaturestesting.SetFeatureDuringTest(t, features.WatchListClient, c.watchList)
			api := &fakeAPIServer{objects: []string{sourcetest.APIObject("ns1", "a", "a.internal", "192.0.2.1"), sourcetest.APIObject("ns2", "b", "b.internal", "192.0.2.2")},
				workloads: []string{apiWorkloadEntry("ns1", "w", "10.0.0.1"), apiWorkloadEntry("ns2", "w", "10.0.0.2")}}
			server := httptest.NewServer(api)
			defer server.Close()
			defer server.CloseClientConnections()
			st := sourcetest.NewSink()
			src, err := New(Config{Kubeconfig: sourcetest.Kubeconfig(t, server.URL), Namespaces: c.namespaces, Labels: "app=x"}, st, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := src.Start(); err != nil {
				t.Fatal(err)
			}
			defer src.Stop()
			if !st.WaitSynced(10 * time.Second) {
				t.Fatalf("not synced within 10s; requests: %q", api.seen())
			}
			for host, want := range c.want {
				if got := st.FirstA(host); got != want {
					t.Errorf("%s: got %q, want %q", host, got, want)
				}
			}
			for _, q := range api.seen() {
				if !strings.Contains(q, "labelSelector=app%3Dx") {
					t.Errorf("request without the label selector: %s", q)
				}
				if watchList := strings.Contains(q, "sendInitialEvents=true"); watchList != c.watchList {
					t.Errorf("WatchList %v, request %s", c.watchList, q)
				}
				if len(c.namespaces) > 0 && !strings.Contains(q, "/namespaces/ns") {
					t.Errorf("request for all namespaces: %s", q)
				}
			}
			got := make(map[string]string)
			for key, w := range st.Workloads() {
				if key.Kind != entry.KindWorkloadEntry || w.NumAddrs() != 1 {
					t.Errorf("%s: %+v", key, w)
					continue
				}
				got[key.Name] = slices.Collect(w.Addrs())[0].String()
			}
			if !maps.Equal(got, c.workloads) {
				t.Errorf("WorkloadEntries when synced: %v, want %v", got, c.workloads)
			}
			wle := api.seenWorkloads()
			if len(wle) == 0 {
				t.Error("no WorkloadEntry request")
			}
			for _, q := range wle {
				if strings.Contains(q, "labelSelector") {
					t.Errorf("WorkloadEntry request with the ServiceEntries' label selector: %s", q)
				}
				if watchList := strings.Contains(q, "sendInitialEvents=true"); watchList != c.watchList {
					t.Errorf("WatchList %v, request %s", c.watchList, q)
				}
				if len(c.namespaces) > 0 && !strings.Contains(q, "/namespaces/ns") {
					t.Errorf("request for all namespaces: %s", q)
				}
			}
		})
	}
}

// TestKubeSourceNoPartialRead: when the reader of one of the namespaces
// cannot be made, the read is not complete: nothing is published (the other
// namespace's entries are not served as if they were all there).
func TestKubeSourceNoPartialRead(t *testing.T) {
	client := newFakeKube(t, "v1")
	if _, err := client.NetworkingV1().ServiceEntries("a").Create(context.Background(),
		v1Entry("a", "e", "a.internal", "192.0.2.1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st := sourcetest.NewSink()
	k := fakeSource(client, st, entry.Options{}, "a", "b")
	lister := k.lister
	k.lister = func(namespace, version string) (listWatchFuncs, error) {
		if namespace == "b" {
			return listWatchFuncs{}, errors.New("no reader for b")
		}
		return lister(namespace, version)
	}
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	if st.WaitSynced(time.Second) {
		t.Fatalf("published a read of namespace a alone: a.internal = %q", st.FirstA("a.internal"))
	}
}

// watchedObject is a ServiceEntry as the API server sends it in a watch event
// after a create and a merge patch of its addresses: uid, generation,
// timestamps and two managedFields entries.
func watchedObject(i int) string {
	return fmt.Sprintf(`{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"creationTimestamp":"2026-12-02T16:12:01Z",`+
		`"generation":2,"managedFields":[{"apiVersion":"networking.istio.io/v1","fieldsType":"FieldsV1","fieldsV1":{"f:spec":{".":{},"f:hosts":{},`+
		`"f:ports":{},"f:resolution":{}}},"manager":"integration.test","operation":"Update","time":"2026-12-02T16:12:01Z"},`+
		`{"apiVersion":"networking.istio.io/v1","fieldsType":"FieldsV1","fieldsV1":{"f:spec":{"f:addresses":{}}},"manager":"integration.test",`+
		`"operation":"Update","time":"2026-12-02T16:15:42Z"}],"name":"svc-%[1]d","namespace":"scale","resourceVersion":"%[2]d",`+
		`"uid":"3f0e8d1c-5b7a-4c21-9e0d-%012[1]d"},"spec":{"addresses":["10.1.%[3]d.%[4]d"],"hosts":["svc-%[1]d.ns-%[5]d.scale.internal"],`+
		`"ports":[{"name":"https","number":443,"protocol":"TLS"}],"resolution":"STATIC"}}`, i, 200000+i, i>>8&0xff, i&0xff, i%100)
}

// BenchmarkWatchEvents: the CPU of one watch event from the API server's
// bytes to the reflector's object, through the source's own REST client: a
// server streams b.N MODIFIED events of distinct entries.
func BenchmarkWatchEvents(b *testing.B) {
	var events bytes.Buffer
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(events.Bytes())
	}))
	defer server.Close()
	cfg, err := RESTConfig(sourcetest.Kubeconfig(b, server.URL), "")
	if err != nil {
		b.Fatal(err)
	}
	lw, err := slimLister(cfg, false)("", "v1")
	if err != nil {
		b.Fatal(err)
	}
	for i := range b.N {
		fmt.Fprintf(&events, `{"type":"MODIFIED","object":%s}`+"\n", watchedObject(i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	w, err := lw.watch(context.Background(), metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	var last *entry.ServiceEntry
	for i := range b.N {
		ev := <-w.ResultChan()
		var ok bool
		if last, ok = ev.Object.(*entry.ServiceEntry); !ok || ev.Type != watch.Modified {
			b.Fatalf("event %d: %v %v", i, ev.Type, ev.Object)
		}
	}
	if want := fmt.Sprintf("svc-%d", b.N-1); last.Name != want || len(last.Spec.Hosts) != 1 {
		b.Fatalf("last event: %s %v, want %s", last.Name, last.Spec.Hosts, want)
	}
}

// BenchmarkSourceMemory reports the live heap per entry of a kube source
// that has read 20,000 ServiceEntries from an API server (WatchList, as by
// default): the reader's record and the entries delivered, which a recording
// sink holds by key (the plugin's store and table are measured with the
// plugin); "inuse-B/entry" adds the room left free in the spans they hold,
// and "objects/entry" counts the live objects the collector marks.
// The timed part is the whole read.
func BenchmarkSourceMemory(b *testing.B) {
	const n = 20_000
	api := &fakeAPIServer{}
	for i := range n {
		api.objects = append(api.objects, watchedObject(i))
	}
	server := httptest.NewServer(api)
	defer server.Close()
	defer server.CloseClientConnections()
	kubeconfig := sourcetest.Kubeconfig(b, server.URL)
	for b.Loop() {
		base, baseInUse, baseObjects := sourcetest.LiveHeap(), sourcetest.HeapInUse(), sourcetest.LiveObjects()
		st := sourcetest.NewSink()
		src, err := New(Config{Kubeconfig: kubeconfig}, st, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := src.Start(); err != nil {
			b.Fatal(err)
		}
		if !st.WaitSynced(time.Minute) {
			b.Fatal("not synced within a minute")
		}
		if got := st.Hosts(); got != n {
			b.Fatalf("%d hosts, want %d", got, n)
		}
		b.ReportMetric(float64(sourcetest.LiveHeap()-base)/n, "B/entry")
		b.ReportMetric(float64(sourcetest.HeapInUse()-baseInUse)/n, "inuse-B/entry")
		b.ReportMetric(float64(sourcetest.LiveObjects()-baseObjects)/n, "objects/entry")
		src.Stop()
	}
}

// TestReaderStore: what a reflector hands the source reaches the store. A
// relist removes what it no longer holds or holds with nothing to serve, a
// delete removes its object, and a problem in an object is counted once,
// not again at each relist.
func TestReaderStore(t *testing.T) {
	obj := func(name, host string) any {
		o, _, err := slimSerializer.Decode([]byte(strings.Replace(sourcetest.APIObject("ns", name, host, "192.0.2.1"),
			`"hosts":[`, `"hosts":["bad_host!",`, 1)), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	st := sourcetest.NewSink()
	rs := newReaderStore(&Source{sink: st}, "")
	served := func() string {
		return st.FirstA("a.internal") + "," + st.FirstA("b.internal")
	}
	steps := []struct {
		name   string
		do     func() error
		served string
		skips  uint64
	}{
		{"first read", func() error { return rs.Replace([]any{obj("a", "a.internal"), obj("b", "b.internal")}, "1") }, "192.0.2.1,192.0.2.1", 2},
		{"relist without b", func() error { return rs.Replace([]any{obj("a", "a.internal")}, "2") }, "192.0.2.1,", 2},
		{"b added", func() error { return rs.Add(obj("b", "b.internal")) }, "192.0.2.1,192.0.2.1", 3},
		{"b updated alike", func() error { return rs.Update(obj("b", "b.internal")) }, "192.0.2.1,192.0.2.1", 3},
		{"a deleted", func() error { return rs.Delete(obj("a", "a.internal")) }, ",192.0.2.1", 3},
		{"a added again", func() error { return rs.Add(obj("a", "a.internal")) }, "192.0.2.1,192.0.2.1", 4},
		{"relist with none of a's hosts valid", func() error {
			return rs.Replace([]any{obj("a", "also_bad!"), obj("b", "b.internal")}, "3")
		}, ",192.0.2.1", 6},
	}
	for i, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if i == 0 {
			select {
			case <-rs.synced:
			default:
				t.Fatal("the first Replace did not mark the namespace read")
			}
			st.MarkSynced()
		}
		if got := served(); got != s.served {
			t.Errorf("%s: serves %q, want %q", s.name, got, s.served)
		}
		if got := st.Count(entry.ReasonInvalidHost); got != s.skips {
			t.Errorf("%s: %d skips counted, want %d", s.name, got, s.skips)
		}
	}
}

// TestKubeSourceReadsPodsWhereEntriesSelect: the pods of a namespace reach
// the sink as workloads while a ServiceEntry there selects workloads, and the
// pods of other namespaces never do.
func TestKubeSourceReadsPodsWhereEntriesSelect(t *testing.T) {
	client := newFakeKube(t, "v1")
	ctx := context.Background()
	headless := v1Entry("ns1", "db", "db.internal")
	headless.Spec.Resolution = networking.ServiceEntry_NONE
	headless.Spec.Ports = []*networking.ServicePort{{Number: 5432, Name: "tcp", Protocol: "TCP"}}
	headless.Spec.WorkloadSelector = &networking.WorkloadSelector{Labels: map[string]string{"app": "db"}}
	headless.Spec.Endpoints = nil
	ses := client.NetworkingV1().ServiceEntries("ns1")
	if _, err := ses.Create(ctx, headless, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	readyPod := func(ns, name, ip string) *corev1.Pod {
		pod := testPod(ns, name, 0, ip)
		pod.Labels = map[string]string{"app": "db"}
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		return pod
	}
	pods := newFakePods(t, readyPod("ns1", "db-0", "10.1.0.1"), readyPod("ns2", "db-0", "10.2.0.1"))
	sink := sourcetest.NewSink()
	idx := podindex.New()
	k := fakeSource(client, sink, entry.Options{})
	k.pods = newPodSource(pods, nil, false, idx, sink)
	watching := signalWatches(&k.lister)
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	sourcetest.Eventually(t, "ns1's pods in the sink", func() bool {
		return maps.Equal(addrsOf(sink, entry.KindPod), map[string]string{"ns1/db-0": "10.1.0.1"})
	})
	<-watching
	if err := ses.Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sourcetest.Eventually(t, "ns1's pods gone with its entry", func() bool { return len(addrsOf(sink, entry.KindPod)) == 0 })
}
