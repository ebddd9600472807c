package serviceentry

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
	networking "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// seYAML is a ServiceEntry in namespace ns declaring host with addr.
func seYAML(name, host, addr string) string {
	return "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: " + name + ", namespace: ns}\n" +
		"spec: {hosts: [" + host + "], addresses: [" + addr + "]}\n"
}

// writeFile replaces path with content atomically (a hidden temporary file in
// the same folder, then a rename), so that a source watching the folder never
// sees it half-written. Tests of in-place writes write on their own.
func writeFile(t testing.TB, path, content string) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tmp.WriteString(content)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		t.Fatal(err)
	}
}

// lookupA returns the first IPv4 answer for name, or "".
func lookupA(st *store, name string) string {
	tbl := st.table()
	if tbl == nil {
		return ""
	}
	ans := tbl.lookup(name)
	if ans == nil || len(ans.a) == 0 {
		return ""
	}
	return ans.a[0].String()
}

// storeFrom builds a synced store from ServiceEntry manifests, as the
// manifests source would.
func storeFrom(t testing.TB, opts convertOptions, yamlDocs string) *store {
	t.Helper()
	st := newStore(opts.autoAllocate == autoAllocateLegacy)
	entries, err := parseManifests("test.yaml", []byte(yamlDocs), opts, &st.skipped)
	if err != nil {
		t.Fatalf("parsing test manifests: %v", err)
	}
	all := make(map[string]*entry, len(entries))
	for _, e := range entries {
		all[e.key] = e
	}
	st.replaceAll(all)
	st.markSynced()
	return st
}

// startManifests runs a manifests source over paths into a new store, stopped
// when the test ends.
func startManifests(t *testing.T, paths ...string) (*store, *manifestSource) {
	t.Helper()
	return startManifestsWith(t, nil, paths...)
}

// startManifestsWith is startManifests with a chance to change the source
// (its intervals, its publish hook) before it starts.
func startManifestsWith(t *testing.T, configure func(*manifestSource), paths ...string) (*store, *manifestSource) {
	t.Helper()
	st := newStore(false)
	src := newManifestSource(paths, convertOptions{}, st)
	if configure != nil {
		configure(src)
	}
	if err := src.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.stop)
	return st, src
}

// eventuallyTimeout bounds eventually. Sources promise about a second; the
// bound is ten times that so that a loaded 2-core machine under -race does
// not fail a test that is only slow. A failure still names what was awaited.
const eventuallyTimeout = 10 * time.Second

// eventually polls cond until it holds or eventuallyTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	eventuallyWithin(t, eventuallyTimeout, what, cond)
}

// eventuallyWithin polls cond until it holds or timeout passes.
func eventuallyWithin(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	began := time.Now()
	for !cond() {
		if time.Since(began) > timeout {
			t.Fatalf("%s: still not the case after %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// churnLegacy adds and removes random entries ops times (a third of the
// changes to a present entry remove it) and returns the entries left.
func churnLegacy(st *store, entries []*entry, seed uint64, ops int) map[string]*entry {
	r := rand.New(rand.NewPCG(seed, seed))
	present := make(map[string]*entry)
	for range ops {
		e := entries[r.IntN(len(entries))]
		if present[e.key] != nil && r.IntN(3) == 0 {
			st.upsert(e.key, nil)
			delete(present, e.key)
		} else {
			st.upsert(e.key, e)
			present[e.key] = e
		}
	}
	return present
}

// namedCase is one row of a handler table.
type namedCase struct {
	name string
	tc   test.Case
}

// checkCases runs each case through checkCase as a subtest.
func checkCases(t *testing.T, se *ServiceEntry, cases []namedCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { checkCase(t, se, c.tc) })
	}
}

// checkCase asks se the case's question and checks the reply: written, the
// sections (with test.SortAndCheck), and a CNAME, if any, before every other
// answer, as resolvers that do not chase the chain expect. It returns the
// rcode ServeDNS returned and the reply, for checks of the caller's own.
func checkCase(t *testing.T, se *ServiceEntry, tc test.Case) (int, *dns.Msg) {
	t.Helper()
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	rcode, err := se.ServeDNS(context.Background(), rec, tc.Msg())
	if err != nil {
		t.Fatalf("ServeDNS: %v", err)
	}
	if rec.Msg == nil {
		t.Fatal("no reply written")
	}
	for i, rr := range rec.Msg.Answer {
		if _, ok := rr.(*dns.CNAME); ok && i > 0 {
			t.Errorf("CNAME at position %d of the answer, want first: %v", i, rec.Msg.Answer)
		}
	}
	// SortAndCheck sorts the reply's sections, not the case's.
	for _, sec := range [][]dns.RR{tc.Answer, tc.Ns, tc.Extra} {
		sort.Sort(test.RRSet(sec))
	}
	if err := test.SortAndCheck(rec.Msg, tc); err != nil {
		t.Error(err)
	}
	return rcode, rec.Msg
}

// churnAgainstFresh adds and removes random entries ops times on one store
// and, after each change, hands check that store's table and a table built
// from scratch out of the same entries. It returns the store and the entries
// left in it.
func churnAgainstFresh(t *testing.T, entries []*entry, seed uint64, ops int, check func(op int, got, fresh *table)) (*store, map[string]*entry) {
	t.Helper()
	st := newStore(false)
	st.markSynced()
	r := rand.New(rand.NewPCG(seed, seed+1))
	present := make(map[string]*entry)
	for op := range ops {
		e := entries[r.IntN(len(entries))]
		if present[e.key] != nil {
			st.upsert(e.key, nil)
			delete(present, e.key)
		} else {
			st.upsert(e.key, e)
			present[e.key] = e
		}
		fresh := newStore(false)
		fresh.replaceAll(maps.Clone(present))
		fresh.markSynced()
		check(op, st.table(), fresh.table())
	}
	return st, present
}

// parseOne parses a manifest holding exactly one valid ServiceEntry.
func parseOne(t testing.TB, doc string, opts convertOptions) *entry {
	t.Helper()
	entries, err := parseManifests("test.yaml", []byte(doc), opts, new(skipTally))
	if err != nil || len(entries) != 1 {
		t.Fatalf("parsing %q: %v, %d entries", doc, err, len(entries))
	}
	return entries[0]
}

// The legacy allocator's fixtures: entry i is e<i> in namespace ns<i%3>,
// created i%5 seconds after a fixed time, declaring h<i>.legacy.internal with
// DNS resolution, so that Istio's order (creation time, then namespace and
// name) is exercised. legacyEntries gives them as manifests for the sources,
// legacyParsed as entries for the store, converted without YAML so that
// benchmarks can make 100,000.
func legacyFixture(i int) (meta *metav1.ObjectMeta, spec *networking.ServiceEntry) {
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	meta = &metav1.ObjectMeta{Name: fmt.Sprintf("e%d", i), Namespace: fmt.Sprintf("ns%d", i%3),
		CreationTimestamp: metav1.NewTime(base.Add(time.Duration(i%5) * time.Second))}
	spec = &networking.ServiceEntry{Hosts: []string{fmt.Sprintf("h%d.legacy.internal", i)}, Resolution: networking.ServiceEntry_DNS}
	return meta, spec
}

func legacyEntries(n int) []string {
	docs := make([]string, n)
	for i := range docs {
		meta, spec := legacyFixture(i)
		docs[i] = fmt.Sprintf("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"+
			"metadata: {name: %s, namespace: %s, creationTimestamp: %q}\nspec:\n  hosts: [%s]\n  resolution: DNS\n",
			meta.Name, meta.Namespace, meta.CreationTimestamp.UTC().Format(time.RFC3339), spec.Hosts[0])
	}
	return docs
}

func legacyParsed(t testing.TB, n int, opts convertOptions) []*entry {
	t.Helper()
	out := make([]*entry, n)
	for i := range out {
		meta, spec := legacyFixture(i)
		e, skips := convert(meta, spec, nil, opts)
		if e == nil {
			t.Fatalf("legacy fixture %d: %v", i, skips)
		}
		out[i] = e
	}
	return out
}

// kubeconfigFor writes a kubeconfig for the API server at url and returns its
// path.
func kubeconfigFor(t testing.TB, url string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	writeFile(t, path, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, url))
	return path
}

// clientsOf is a synced client index holding one pod per address (key) in
// the namespace it maps to.
func clientsOf(t testing.TB, byIP map[string]string) *clientIndex {
	t.Helper()
	idx := newClientIndex()
	for ip, ns := range byIP {
		idx.set(ns+"/"+ip, &podClaim{namespace: ns, name: ip, ips: []netip.Addr{netip.MustParseAddr(ip)}})
	}
	idx.markSynced()
	return idx
}

// lookup is the public view's lookup, for tests that read a table.
func (t *table) lookup(name string) *answer {
	return view{table: t}.lookup(name)
}

// all yields every key and value of a sharded map, in no order, for tests
// that list a table.
func (s *sharded[K, V]) all() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for _, g := range s.groups {
			if g == nil {
				continue
			}
			for _, m := range g.shards {
				for k, v := range m {
					if !yield(k, v) {
						return
					}
				}
			}
		}
	}
}

// listItems returns the items of a kind List document; isList is false for
// any other document (the manifests source reads the type once, in
// jsonDocument; the tests split streams with this).
func listItems(raw json.RawMessage) (items []runtime.RawExtension, isList bool, err error) {
	var tm metav1.TypeMeta
	if json.Unmarshal(raw, &tm) != nil || !isListType(tm) {
		return nil, false, nil
	}
	items, err = decodeList(raw)
	return items, true, err
}

// convertDocument decodes one JSON document into the slim struct (as the
// Kubernetes reader does) and converts it, as the manifests source does; key is the entry's store key. Documents of
// other kinds give nil and no error. All three served versions share one
// schema. It reads the document as encoding/json reads it into Istio's types:
// the object's keys regardless of case, the spec's as jsonpb does.
func convertDocument(raw json.RawMessage, opts convertOptions) (e *entry, key string, skips []skip, err error) {
	return decodeJSONDocument(raw).convert(opts)
}
