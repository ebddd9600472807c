package serviceentry

import (
	"context"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/podindex"
	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/coredns-serviceentry/serviceentry/internal/source"
	"github.com/coredns-serviceentry/serviceentry/internal/source/manifest"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	"github.com/coredns-serviceentry/serviceentry/internal/table"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The helpers the tests of the sources share live in internal/sourcetest.
var (
	seYAML           = sourcetest.SEYAML
	writeFile        = sourcetest.WriteFile
	eventually       = sourcetest.Eventually
	eventuallyWithin = sourcetest.EventuallyWithin
	legacyFixture    = sourcetest.LegacyFixture
	legacyEntries    = sourcetest.LegacyEntries
	kubeconfigFor    = sourcetest.Kubeconfig
)

// lookupA returns the first IPv4 answer for name, or "".
func lookupA(st *store, name string) string {
	tbl := st.table()
	if tbl == nil {
		return ""
	}
	ans := lookupIn(tbl, name)
	if ans == nil || len(ans.A()) == 0 {
		return ""
	}
	return ans.A().At(0).String()
}

// answerAddrs lists an answer's addresses, both families, sorted, separated
// by spaces; "" for none.
func answerAddrs(ans *table.Answer) string {
	if ans == nil {
		return ""
	}
	var out []string
	for _, ip := range table.AddressesOf(ans) {
		out = append(out, ip.String())
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// storeFrom builds a synced store from ServiceEntry and WorkloadEntry
// manifests, as the manifests source would.
func storeFrom(t testing.TB, opts entry.Options, yamlDocs string) *store {
	t.Helper()
	st := newStore(opts.AutoAllocate == entry.AutoAllocateLegacy)
	entries, workloads, err := manifest.Parse("test.yaml", []byte(yamlDocs), opts, st)
	if err != nil {
		t.Fatalf("parsing test manifests: %v", err)
	}
	all := make(map[entry.Key]*entry.Entry, len(entries))
	for _, e := range entries {
		all[e.Key] = e
	}
	byKey := make(map[entry.Key]*entry.Workload, len(workloads))
	for _, w := range workloads {
		byKey[w.Key] = w
	}
	st.ReplaceAll(all, byKey)
	st.MarkSynced()
	return st
}

// startManifests runs a manifests source over paths into a new store, stopped
// when the test ends.
func startManifests(t *testing.T, paths ...string) *store {
	t.Helper()
	st := newStore(false)
	startManifestsInto(t, st, paths...)
	return st
}

// startManifestsInto runs a manifests source over paths into sink, stopped
// when the test ends.
func startManifestsInto(t *testing.T, sink source.Sink, paths ...string) {
	t.Helper()
	src := manifest.New(paths, entry.Options{}, sink)
	if err := src.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Stop)
}

// churnLegacy adds and removes random entries ops times (a third of the
// changes to a present entry remove it) and returns the entries left.
func churnLegacy(st *store, entries []*entry.Entry, seed uint64, ops int) map[entry.Key]*entry.Entry {
	r := rand.New(rand.NewPCG(seed, seed))
	present := make(map[entry.Key]*entry.Entry)
	for range ops {
		e := entries[r.IntN(len(entries))]
		if present[e.Key] != nil && r.IntN(3) == 0 {
			st.Upsert(e.Key, nil)
			delete(present, e.Key)
		} else {
			st.Upsert(e.Key, e)
			present[e.Key] = e
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
func churnAgainstFresh(t *testing.T, entries []*entry.Entry, seed uint64, ops int, check func(op int, got, fresh *table.Table)) (*store, map[entry.Key]*entry.Entry) {
	t.Helper()
	st := newStore(false)
	st.MarkSynced()
	r := rand.New(rand.NewPCG(seed, seed+1))
	present := make(map[entry.Key]*entry.Entry)
	for op := range ops {
		e := entries[r.IntN(len(entries))]
		if present[e.Key] != nil {
			st.Upsert(e.Key, nil)
			delete(present, e.Key)
		} else {
			st.Upsert(e.Key, e)
			present[e.Key] = e
		}
		fresh := newStore(false)
		fresh.ReplaceAll(maps.Clone(present), nil)
		fresh.MarkSynced()
		check(op, st.table(), fresh.table())
	}
	return st, present
}

// parseOne parses a manifest holding exactly one valid ServiceEntry.
func parseOne(t testing.TB, doc string, opts entry.Options) *entry.Entry {
	t.Helper()
	entries, _, err := manifest.Parse("test.yaml", []byte(doc), opts, newStore(false))
	if err != nil || len(entries) != 1 {
		t.Fatalf("parsing %q: %v, %d entries", doc, err, len(entries))
	}
	return entries[0]
}

// legacyParsed gives the legacy allocator's fixtures (see
// sourcetest.LegacyFixture) as entries for the store, converted without YAML
// so that benchmarks can make 100,000.
func legacyParsed(t testing.TB, n int, opts entry.Options) []*entry.Entry {
	t.Helper()
	out := make([]*entry.Entry, n)
	for i := range out {
		meta, spec := legacyFixture(i)
		e, skips := entry.Convert(meta, spec, nil, opts)
		if e == nil {
			t.Fatalf("legacy fixture %d: %v", i, skips)
		}
		out[i] = e
	}
	return out
}

// clientsOf is a synced client index holding one pod per address (key) in
// the namespace it maps to.
func clientsOf(t testing.TB, byIP map[string]string) *podindex.Index {
	t.Helper()
	idx := podindex.New()
	for ip, ns := range byIP {
		idx.Set(ns+"/"+ip, &podindex.Claim{Namespace: ns, IPs: []netip.Addr{netip.MustParseAddr(ip)}})
	}
	idx.MarkSynced()
	return idx
}

// lookupIn is the public view's lookup, for tests that read a table.
func lookupIn(t *table.Table, name string) *table.Answer {
	return t.ViewFor("").Lookup(name)
}

// podClaim is the claim of the pod of fixture file (internal/reach/testdata,
// shaped as Istio's injector and istio-cni leave pods) at address ip.
func podClaim(t testing.TB, file, ip string) *podindex.Claim {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(fixturesOfReach, file))
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.Unmarshal(raw, &pod); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	marks, _ := reach.MarksOf(&pod)
	return &podindex.Claim{Namespace: pod.Namespace, Marks: marks, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
}
