package serviceentry

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/table"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
)

// TestAllocateLegacyIstioVectors reproduces the addresses of Istio's own
// auto-allocation tests (namespace "" so the key is "/a.com", in this order).
func TestAllocateLegacyIstioVectors(t *testing.T) {
	want := []struct{ host, v4 string }{
		{"a.com", "240.240.109.8"},
		{"c.com", "240.240.234.51"},
		{"e.com", "240.240.85.60"},
		{"g.com", "240.240.23.172"},
		{"i.com", "240.240.15.2"},
		{"k.com", "240.240.160.161"},
		{"l.com", "240.240.42.96"},
		{"n.com", "240.240.121.61"},
		{"o.com", "240.240.122.71"},
	}
	var hosts []*entry.LegacyHost
	for _, w := range want {
		hosts = append(hosts, &entry.LegacyHost{Host: w.host})
	}
	got, overflow := allocateLegacy(hosts)
	if overflow != 0 {
		t.Fatalf("overflow: %d", overflow)
	}
	for i, w := range want {
		if g := got[i].v4.String(); g != w.v4 {
			t.Errorf("%s: got %s, want %s", w.host, g, w.v4)
		}
	}
	if g := got[0].v6.String(); g != "2001:2::f0f0:6d8" {
		t.Errorf("a.com IPv6: got %s, want 2001:2::f0f0:6d8", g)
	}
}

func TestAllocateLegacyAlone(t *testing.T) {
	got, _ := allocateLegacy([]*entry.LegacyHost{{Namespace: "default", Host: "foo.example.com"}})
	if g := got[0]; g.v4.String() != "240.240.111.74" || g.v6.String() != "2001:2::f0f0:6f4a" {
		t.Errorf("got %s %s, want 240.240.111.74 2001:2::f0f0:6f4a", g.v4, g.v6)
	}
}

// TestLegacyAddressesFormat pins Istio's unpadded IPv6 text, collisions
// included: (1, 0x23) and (0x12, 3) both print as f0f0:123.
func TestLegacyAddressesFormat(t *testing.T) {
	for _, c := range []struct {
		a, b   int
		v4, v6 string
	}{
		{0, 1, "240.240.0.1", "2001:2::f0f0:1"},
		{0, 0xfe, "240.240.0.254", "2001:2::f0f0:fe"},
		{1, 0x23, "240.240.1.35", "2001:2::f0f0:123"},
		{0x12, 3, "240.240.18.3", "2001:2::f0f0:123"},
		{255, 254, "240.240.255.254", "2001:2::f0f0:fffe"},
	} {
		got := legacyAddresses(c.a, c.b)
		if got.v4.String() != c.v4 || got.v6.String() != c.v6 {
			t.Errorf("(%d,%d): got %s %s, want %s %s", c.a, c.b, got.v4, got.v6, c.v4, c.v6)
		}
	}
}

// TestAllocateLegacyDuplicateKey: the same namespace/host in two entries takes
// two slots (shifting later numbers, as in Istio) and both get one address.
func TestAllocateLegacyDuplicateKey(t *testing.T) {
	got, _ := allocateLegacy([]*entry.LegacyHost{
		{Namespace: "ns", Host: "dup.com", Entry: "one"},
		{Namespace: "ns", Host: "dup.com", Entry: "two"},
		{Namespace: "ns", Host: "other.com", Entry: "three"},
	})
	if got[0] != got[1] || !got[0].v4.IsValid() || got[2] == got[0] {
		t.Fatalf("got %v, want the duplicates to share one valid address and the third to differ", got)
	}
}

// TestAllocateLegacyProperties: distinct namespace/host keys never share an
// IPv4 address, no address ends in .0 or .255, and beyond 65024 hosts the rest
// is reported as overflow instead of hanging or wrapping.
func TestAllocateLegacyProperties(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates the whole range")
	}
	const n = legacySlots + 100
	hosts := make([]*entry.LegacyHost, n)
	for i := range hosts {
		hosts[i] = &entry.LegacyHost{Namespace: fmt.Sprintf("ns%d", i%7), Host: fmt.Sprintf("h%d.example.com", i)}
	}
	got, overflow := allocateLegacy(hosts)
	allocated := 0
	for _, a := range got {
		if a.v4.IsValid() {
			allocated++
		}
	}
	if allocated+overflow != n {
		t.Fatalf("%d allocated + %d overflow != %d hosts", allocated, overflow, n)
	}
	if overflow < 100 {
		t.Fatalf("overflow %d, want at least 100", overflow)
	}
	seen := make(map[netip.Addr]*entry.LegacyHost, len(got))
	for i, a := range got {
		if !a.v4.IsValid() {
			continue
		}
		h := hosts[i]
		if other, dup := seen[a.v4]; dup {
			t.Fatalf("%v and %v share %s", h, other, a.v4)
		}
		seen[a.v4] = h
		b := a.v4.As4()
		if b[0] != 240 || b[1] != 240 || b[3] == 0 || b[3] == 255 {
			t.Fatalf("%v got %s, outside 240.240.x.1-254", h, a.v4)
		}
	}
}

// FuzzAllocateLegacyUnique checks, for arbitrary small sets, that distinct keys
// get distinct IPv4 addresses and equal keys (the same host in one namespace,
// declared by several entries) equal ones.
func FuzzAllocateLegacyUnique(f *testing.F) {
	f.Add("a.com,b.com,c.com", "ns")
	f.Add("x,x,y", "")
	f.Fuzz(func(t *testing.T, names, ns string) {
		var hosts []*entry.LegacyHost
		for i, n := range strings.Split(names, ",") {
			hosts = append(hosts, &entry.LegacyHost{Namespace: ns, Host: n, Entry: fmt.Sprint(i)})
		}
		got, _ := allocateLegacy(hosts)
		hostOf := make(map[netip.Addr]string)
		addrOf := make(map[string]netip.Addr)
		for i, a := range got {
			h := hosts[i]
			if !a.v4.IsValid() {
				continue // left unallocated: the range is full
			}
			if k, ok := hostOf[a.v4]; ok && k != h.Host {
				t.Fatalf("%q and %q share %s", k, h.Host, a.v4)
			}
			if prev, ok := addrOf[h.Host]; ok && prev != a.v4 {
				t.Fatalf("%q got %s and %s", h.Host, prev, a.v4)
			}
			hostOf[a.v4], addrOf[h.Host] = h.Host, a.v4
		}
	})
}

// TestLegacyEventOrderIndependent: two replicas that see the same entries in
// different orders (and with churn on the way) serve identical addresses.
func TestLegacyEventOrderIndependent(t *testing.T) {
	entries := legacyParsed(t, 300, entry.Options{AutoAllocate: entry.AutoAllocateLegacy, DualStack: true})
	replica := func(seed uint64) *store {
		st := newStore(true)
		st.minReallocGap = 0 // every event recomputes: the order is what is tested
		st.MarkSynced()
		r := rand.New(rand.NewPCG(seed, seed))
		for _, i := range r.Perm(len(entries)) {
			st.Upsert(entries[i].Key, entries[i])
			if r.IntN(4) == 0 { // churn: remove and re-add one already seen
				j := r.IntN(len(entries))
				st.Upsert(entries[j].Key, nil)
				st.Upsert(entries[j].Key, entries[j])
			}
		}
		return st
	}
	a, b := replica(1), replica(2)
	for _, e := range entries {
		name := e.Hosts[0].Name
		ansA, ansB := lookupIn(a.table(), name), lookupIn(b.table(), name)
		if ansA == nil || ansB == nil {
			t.Fatalf("%s: not answered (%v, %v)", name, ansA, ansB)
		}
		if !ansA.A().At(0).Equal(ansB.A().At(0)) || !ansA.AAAA().At(0).Equal(ansB.AAAA().At(0)) {
			t.Fatalf("%s: replicas disagree: %v vs %v", name, table.AddressesOf(ansA), table.AddressesOf(ansB))
		}
	}
	// And both equal the allocation computed from scratch in Istio's order.
	fresh := newStore(true)
	all := make(map[entry.Key]*entry.Entry)
	for _, e := range entries {
		all[e.Key] = e
	}
	fresh.ReplaceAll(all, nil)
	fresh.MarkSynced()
	for _, e := range entries {
		name := e.Hosts[0].Name
		if !lookupIn(fresh.table(), name).A().At(0).Equal(lookupIn(a.table(), name).A().At(0)) {
			t.Fatalf("%s: incremental and fresh allocations differ", name)
		}
	}
}

// TestLegacyServing: legacy mode serves the allocation through the handler,
// never for NONE, wildcards or entries with addresses; hidden entries (exportTo
// ".") are not served but still take their slot, as in istiod; off serves none.
func TestLegacyServing(t *testing.T) {
	const docs = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: foo, namespace: default}
spec: {hosts: [foo.example.com], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: none, namespace: default}
spec: {hosts: [none.example.com], resolution: NONE}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: default}
spec: {hosts: ["*.wild.example.com"], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden, namespace: other}
spec: {hosts: [hidden.example.com], resolution: DNS, exportTo: ["."]}
`
	legacy := (&ServiceEntry{Zones: []string{"example.com."}, TTL: 30}).attach(storeFrom(t, entry.Options{AutoAllocate: entry.AutoAllocateLegacy}, docs))
	off := (&ServiceEntry{Zones: []string{"example.com."}, TTL: 30}).attach(storeFrom(t, entry.Options{AutoAllocate: entry.AutoAllocateOff}, docs))

	// The expected addresses are computed over both eligible hosts.
	alloc, _ := allocateLegacy([]*entry.LegacyHost{
		{Namespace: "default", Host: "foo.example.com", Entry: "foo"},
		{Namespace: "other", Host: "hidden.example.com", Entry: "hidden"},
	})
	foo := alloc[0]
	soaRR := test.SOA("example.com. 30 IN SOA ns.dns.example.com. hostmaster.example.com. 1 7200 1800 86400 30")
	nx := func(q string) test.Case {
		return test.Case{Qname: q, Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []dns.RR{soaRR}}
	}
	for _, c := range []struct {
		name string
		se   *ServiceEntry
		tc   test.Case
	}{
		{"legacy A", legacy, test.Case{Qname: "foo.example.com.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("foo.example.com. 30 IN A " + foo.v4.String())}}},
		{"legacy AAAA: IPv4 only by default", legacy, test.Case{Qname: "foo.example.com.", Qtype: dns.TypeAAAA, Ns: []dns.RR{soaRR}}},
		{"legacy NONE", legacy, nx("none.example.com.")},
		{"legacy wildcard", legacy, nx("a.wild.example.com.")},
		{"legacy hidden", legacy, nx("hidden.example.com.")},
		{"off", off, nx("foo.example.com.")},
	} {
		t.Run(c.name, func(t *testing.T) { checkCase(t, c.se, c.tc) })
	}
}

func BenchmarkAllocateLegacy(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		hosts := make([]*entry.LegacyHost, n)
		for i := range hosts {
			hosts[i] = &entry.LegacyHost{Namespace: fmt.Sprintf("ns%d", i%50), Host: fmt.Sprintf("svc-%d.example.internal", i)}
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				allocateLegacy(hosts)
			}
		})
	}
}

// TestLegacyCoalescing: a change to the eligible set that comes sooner than the
// recomputation gap is published at once against the previous allocation (the
// new host waits, nobody else moves), and the recomputation is published when
// the gap has passed; close stops a pending one.
func TestLegacyCoalescing(t *testing.T) {
	entries := legacyParsed(t, 4, entry.Options{AutoAllocate: entry.AutoAllocateLegacy})
	fake := &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	st := newStore(true)
	st.clock = fake
	st.minReallocGap = time.Minute
	st.MarkSynced()
	st.Upsert(entries[0].Key, entries[0]) // first change: recomputed at once
	first := lookupIn(st.table(), entries[0].Hosts[0].Name)
	if first == nil {
		t.Fatal("first legacy host not answered after its own change")
	}

	st.Upsert(entries[1].Key, entries[1]) // within the gap: deferred
	if got := lookupIn(st.table(), entries[1].Hosts[0].Name); got != nil {
		t.Errorf("deferred host answered before the recomputation: %v", table.AddressesOf(got))
	}
	if got := lookupIn(st.table(), entries[0].Hosts[0].Name); got == nil || !got.A().At(0).Equal(first.A().At(0)) {
		t.Errorf("first host moved while the recomputation was deferred: %v", got)
	}
	declared := &entry.Entry{Key: entry.ServiceEntryKey("ns/declared"),
		Hosts: []entry.Host{entry.NewHost("declared.internal", netip.MustParseAddr("192.0.2.7"))}}
	st.Upsert(declared.Key, declared)
	if lookupIn(st.table(), "declared.internal") == nil {
		t.Error("a declared address waited for the legacy recomputation")
	}

	fake.advance(time.Minute)
	if lookupIn(st.table(), entries[1].Hosts[0].Name) == nil {
		t.Fatal("the deferred recomputation was not published when its time came")
	}
	want := freshLegacyTable(t, entries[0], entries[1], declared)
	for _, e := range []*entry.Entry{entries[0], entries[1]} {
		name := e.Hosts[0].Name
		if got, exp := lookupIn(st.table(), name), lookupIn(want, name); got == nil || !got.A().At(0).Equal(exp.A().At(0)) {
			t.Errorf("%s after the recomputation: %v, a fresh build gives %v", name, got, exp)
		}
	}

	st.Upsert(entries[2].Key, entries[2]) // deferred again, then closed
	st.close()
	fake.advance(time.Hour)
	if got := lookupIn(st.table(), entries[2].Hosts[0].Name); got != nil {
		t.Errorf("a recomputation ran after close: %s answers %v", entries[2].Hosts[0].Name, table.AddressesOf(got))
	}
	if fake.pending != nil {
		t.Error("close left the recomputation timer pending")
	}
}

// manualClock is a storeClock that moves only when the test advances it and
// runs a due callback on the test's goroutine. (client-go's fake clock runs
// callbacks under its own lock, so one that reads the clock deadlocks.)
type manualClock struct {
	mu      sync.Mutex
	now     time.Time
	at      time.Time
	pending func()
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

func (c *manualClock) AfterFunc(d time.Duration, f func()) clock.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.at, c.pending = c.now.Add(d), f
	return manualTimer{c}
}

// advance moves the clock by d and runs the pending callback if it is due.
func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	f := c.pending
	if f != nil && !c.now.Before(c.at) {
		c.pending = nil
	} else {
		f = nil
	}
	c.mu.Unlock()
	if f != nil {
		f()
	}
}

type manualTimer struct{ c *manualClock }

func (t manualTimer) C() <-chan time.Time { return nil }

func (t manualTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.c.pending != nil
	t.c.pending = nil
	return was
}

func (t manualTimer) Reset(time.Duration) bool { panic("the store never resets its timer") }

// freshLegacyTable builds a table from entries in one pass, as a new source
// would.
func freshLegacyTable(t *testing.T, entries ...*entry.Entry) *table.Table {
	t.Helper()
	st := newStore(true)
	all := make(map[entry.Key]*entry.Entry, len(entries))
	for _, e := range entries {
		all[e.Key] = e
	}
	st.ReplaceAll(all, nil)
	st.MarkSynced()
	return st.table()
}

// TestLegacyUpdateWithoutChange: an update of a legacy entry that changes
// nothing the allocator reads (here its labels) is no change to the eligible
// set, so it costs no recomputation; a change of its hosts is one.
func TestLegacyUpdateWithoutChange(t *testing.T) {
	docs := legacyEntries(2)
	parse := func(doc string) *entry.Entry {
		return parseOne(t, doc, entry.Options{AutoAllocate: entry.AutoAllocateLegacy})
	}
	l := newLegacyAllocator()
	first := parse(docs[0])
	l.add(first)
	l.reallocate()

	relabelled := parse(strings.Replace(docs[0], "metadata: {", "metadata: {labels: {rev: b}, ", 1))
	if relabelled == first || &relabelled.LegacyHosts()[0] == &first.LegacyHosts()[0] {
		t.Fatal("the test needs a new entry object")
	}
	l.remove(first)
	l.add(relabelled)
	if l.changed() {
		t.Error("an update that changes no legacy host counts as a change")
	}
	if got := l.addresses(relabelled.LegacyHost(relabelled.Hosts[0].Name)); len(got) == 0 {
		t.Error("the updated entry's host has no address")
	}

	moved := parse(strings.Replace(docs[0], "h0.legacy.internal", "h0-moved.legacy.internal", 1))
	l.remove(relabelled)
	l.add(moved)
	if !l.changed() {
		t.Error("an update that changes a legacy host is not a change")
	}
}
