package serviceentry

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	clientv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
	"istio.io/client-go/pkg/clientset/versioned/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/features"
	clientfeaturestesting "k8s.io/client-go/features/testing"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"
)

// newFakeKube returns a fake Istio clientset whose discovery serves
// ServiceEntries in the given versions.
func newFakeKube(t *testing.T, versions ...string) *fake.Clientset {
	t.Helper()
	// With WatchListClient on (client-go >= 0.35 default) informers on the
	// fake clientset never sync; real API servers are unaffected.
	clientfeaturestesting.SetFeatureDuringTest(t, features.WatchListClient, false)
	client := fake.NewSimpleClientset()
	disco := client.Discovery().(*fakediscovery.FakeDiscovery)
	for _, v := range versions {
		disco.Resources = append(disco.Resources, &metav1.APIResourceList{
			GroupVersion: istioGroup + "/" + v,
			APIResources: []metav1.APIResource{{Name: "serviceentries", Kind: "ServiceEntry", Namespaced: true}},
		})
	}
	return client
}

func startKube(t *testing.T, client *fake.Clientset, namespaces ...string) *store {
	t.Helper()
	st := newStore(false)
	k := &kubeSource{client: client, namespaces: namespaces, store: st}
	if err := k.start(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.stop)
	return st
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
	if st.table() == nil {
		t.Fatal("not synced after start")
	}
	if got := lookupA(st, "a.internal"); got != "192.0.2.1" {
		t.Fatalf("initial list: got %q", got)
	}

	if _, err := ses.Create(ctx, v1Entry("ns", "b", "b.internal", "192.0.2.2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "add", func() bool { return lookupA(st, "b.internal") == "192.0.2.2" })

	updated := v1Entry("ns", "a", "renamed.internal", "192.0.2.11")
	if _, err := ses.Update(ctx, updated, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "update", func() bool {
		return lookupA(st, "renamed.internal") == "192.0.2.11" && lookupA(st, "a.internal") == ""
	})

	if err := ses.Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delete", func() bool { return lookupA(st, "b.internal") == "" })
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
	if got := lookupA(st, "old.internal"); got != "192.0.2.5" {
		t.Fatalf("got %q", got)
	}
}

// TestKubeSourceNoCRD: without Istio's CRD the source keeps trying, the store
// stays unsynced (SERVFAIL, not ready), and stop returns promptly.
func TestKubeSourceNoCRD(t *testing.T) {
	client := newFakeKube(t)
	st := newStore(false)
	k := &kubeSource{client: client, store: st}
	if err := k.start(100 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if st.table() != nil {
		t.Error("synced without a CRD")
	}
	done := make(chan struct{})
	go func() { k.stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("stop did not return")
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
		if got := lookupA(st, host); got != want {
			t.Errorf("%s: got %q, want %q", host, got, want)
		}
	}
}

// TestToCached: the informer cache keeps the converted entry and the object's
// key only; the transform is idempotent and deep copies keep the entry.
func TestToCached(t *testing.T) {
	k := &kubeSource{opts: convertOptions{autoAllocate: autoAllocateStatus}}
	se := v1Entry("ns", "a", "a.internal", "192.0.2.1")
	se.Spec.Hosts = append(se.Spec.Hosts, "bad_host!")
	out, err := k.toCached(se)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := out.(*cachedEntry)
	if !ok {
		t.Fatalf("transform returned %T", out)
	}
	if c.key() != "ns/a" {
		t.Errorf("cached key %q", c.key())
	}
	if key, err := cache.MetaNamespaceKeyFunc(c); err != nil || key != "ns/a" {
		t.Errorf("informer cache key: %q, %v", key, err)
	}
	if c.entry == nil || len(c.entry.hosts) != 1 || c.entry.hosts[0].addrs[0].String() != "192.0.2.1" {
		t.Errorf("cached entry: %+v", c.entry)
	}
	if len(c.skips) != 1 || c.skips[0].reason != reasonInvalidHost {
		t.Errorf("skips: %+v", c.skips)
	}
	again, err := k.toCached(c)
	if err != nil || again != any(c) {
		t.Errorf("transform of a cached entry: %v, %v", again, err)
	}
	if cp := c.DeepCopyObject().(*cachedEntry); cp == c || cp.entry != c.entry || cp.key() != "ns/a" {
		t.Errorf("deep copy: %+v", cp)
	}
}

// TestLegacySameAcrossSources: the same ServiceEntries read through the
// Kubernetes source and through manifests give the same legacy addresses.
func TestLegacySameAcrossSources(t *testing.T) {
	docs := legacyEntries(60)
	opts := convertOptions{autoAllocate: autoAllocateLegacy}
	fromFiles := storeFrom(t, opts, strings.Join(docs, "---\n"))

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
	st := newStore(true)
	k := &kubeSource{client: client, opts: opts, store: st}
	if err := k.start(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.stop)
	if st.table() == nil {
		t.Fatal("not synced")
	}
	for i := range docs {
		name := fmt.Sprintf("h%d.legacy.internal", i)
		a, b := fromFiles.table().lookup(name), st.table().lookup(name)
		if a == nil || b == nil || !a.a[0].Equal(b.a[0]) || !a.aaaa[0].Equal(b.aaaa[0]) {
			t.Fatalf("%s: manifests %v, kubernetes %v", name, a, b)
		}
	}
}
