package serviceentry

import (
	"bytes"
	"cmp"
	"hash/maphash"
	"maps"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/podindex"
	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/coredns-serviceentry/serviceentry/internal/table"
	"k8s.io/utils/clock"
)

// storeClock is what the store needs of time: clock.RealClock, or a clock
// tests move by hand to see a deferred recomputation published.
type storeClock interface {
	Now() time.Time
	Since(time.Time) time.Duration
	AfterFunc(time.Duration, func()) clock.Timer
}

// store keeps the converted entries of one source and publishes the table the
// handler reads. Sources call upsert, replaceAll, beginFullRead and markSynced
// from their own goroutines; the handler only loads the published table. A
// change rebuilds the answers of the hosts it touches and copies only the table
// shards holding them, so an update costs O(hosts changed), not O(all entries).
//
// Nothing is published from a partial read: until the source says a full read
// is complete (markSynced), changes are only gathered.
type store struct {
	mu      sync.Mutex
	entries map[entry.Key]*entry.Entry // by kind and namespace/name
	// held counts the entries of each namespace: a relist of a namespace
	// that holds none (every namespace's first) looks at no entry.
	held   map[string]int
	byHost hostIndex // host -> the entries declaring it
	// envoyResolves counts, by host name, the DNS and DNS_ROUND_ROBIN
	// entries whose Envoy cluster resolves that name (see resolvedBy).
	envoyResolves map[string]int
	building      *table.Table    // the next table; equal to published while synced
	synced        bool            // a full read is complete: changes are published
	dirty         map[string]bool // hosts changed since the last publish

	// legacy is the allocator for "autoallocate legacy"; nil in other modes.
	legacy *legacyAllocator
	// minReallocGap, reallocAt and reallocTimer coalesce legacy
	// recomputations under churn (see publishLocked).
	minReallocGap time.Duration
	reallocAt     time.Time   // earliest time of the next recomputation
	reallocTimer  clock.Timer // a deferred recomputation, nil if none
	clock         storeClock
	closed        bool

	// clients maps a query's source address to its namespace with
	// "exportto client"; nil otherwise. overlaid lists, by host, the
	// namespaces whose overlay holds it (see overlaysLocked); only entries
	// read with "exportto client" make overlays.
	clients  *podindex.Index
	overlaid map[string][]string

	// namespaces index, by namespace, the workloads a selector may pick and
	// the entries that select (see headless.go). endpoints caches the
	// endpoint addresses of an entry during one publish: its hosts and
	// views look them up several times, and share one answer by them. It
	// is dropped after the publish, so that the table's answers are the
	// only copy kept; an entry not rebuilt keeps its answers.
	namespaces map[string]*selection
	endpoints  map[*entry.Entry][]netip.Addr

	// skipped counts what the source left out (see skipTally).
	skipped skipTally

	published   atomic.Pointer[table.Table] // nil until the first full read of the source
	firstSynced chan struct{}               // closed when the first table is published
}

func newStore(legacy bool) *store {
	s := &store{
		entries: make(map[entry.Key]*entry.Entry),
		held:    make(map[string]int),
		byHost:  hostIndex{one: make(map[string]*entry.Entry), many: make(map[string][]*entry.Entry)},

		envoyResolves: make(map[string]int),
		namespaces:    make(map[string]*selection),
		building:      table.NewTable(maphash.MakeSeed()),
		dirty:         make(map[string]bool),

		firstSynced: make(chan struct{}),
		clock:       clock.RealClock{},
	}
	if legacy {
		s.legacy = newLegacyAllocator()
		s.minReallocGap = minReallocGap
	}
	return s
}

// close stops a deferred recomputation; the plugin calls it on shutdown so
// that nothing of an old configuration runs after a reload.
func (s *store) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.reallocTimer != nil {
		s.reallocTimer.Stop()
		s.reallocTimer = nil
	}
}

// table returns the table to answer from, or nil while the source has not
// completed its first full read.
func (s *store) table() *table.Table { return s.published.Load() }

// waitSynced waits up to timeout for the first table and, when the store
// tells clients apart by their pods, the first list of pods, and says what
// is still missing then: "" when both are in.
func (s *store) waitSynced(timeout time.Duration) (missing string) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.firstSynced:
	case <-t.C:
		return missingEntries
	}
	if s.clients == nil {
		return ""
	}
	select {
	case <-s.clients.WaitSynced():
		return ""
	case <-t.C:
		return missingPods
	}
}

// What waitSynced can find missing.
const (
	missingEntries = "entries"
	missingPods    = "pods"
)

// Upsert adds or replaces the entry stored under key; a nil entry removes it.
func (s *store) Upsert(key entry.Key, e *entry.Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(key, e)
	s.publishLocked()
}

// ReplaceEntries makes the store hold exactly the entries of all among
// those of namespaces ("" among them: every namespace), publishes once, and
// returns the keys it removed: a source's relist.
func (s *store) ReplaceEntries(namespaces []string, all map[entry.Key]*entry.Entry) []entry.Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	gone := s.replaceEntriesLocked(namespaces, all)
	s.publishLocked()
	return gone
}

// ReplaceAll makes the store hold exactly the given entries and workloads
// and publishes once. The manifests source uses it after each read of its
// files.
func (s *store) ReplaceAll(entries map[entry.Key]*entry.Entry, workloads map[entry.Key]*entry.Workload) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replaceWorkloadsLocked(func(entry.Key) bool { return true }, []string{""}, workloads)
	s.replaceEntriesLocked([]string{""}, entries)
	s.publishLocked()
}

// replaceEntriesLocked is ReplaceEntries without the publish. A relist of a
// namespace that holds entries looks at every entry held, of every
// namespace: relists are rare (a watch that fell too far behind), and an
// index of keys by namespace would cost every entry what the reader's set
// of keys did.
func (s *store) replaceEntriesLocked(namespaces []string, all map[entry.Key]*entry.Entry) []entry.Key {
	s.reserveLocked(len(all))
	everywhere := slices.Contains(namespaces, "")
	var gone []entry.Key
	if everywhere || slices.ContainsFunc(namespaces, func(ns string) bool { return s.held[ns] > 0 }) {
		for key, e := range s.entries {
			if _, kept := all[key]; !kept && (everywhere || slices.Contains(namespaces, e.Namespace())) {
				gone = append(gone, key)
			}
		}
	}
	for _, key := range gone {
		s.setLocked(key, nil)
	}
	for key, e := range all {
		if s.entries[key] != e {
			s.setLocked(key, e)
		}
	}
	return gone
}

// MarkSynced records that the source has delivered its first full read: from
// now on the table is published and the plugin answers from it.
//
// The first read leaves behind the garbage of decoding everything at once (a
// whole list of full objects); it is returned to the OS right away so that the
// resident size follows the table rather than the startup peak (BENCHMARKS.md
// has the RSS it saves). It runs once per source: a reload that keeps the
// source does not run it again.
func (s *store) MarkSynced() {
	s.mu.Lock()
	first := s.published.Load() == nil
	s.synced = true
	s.publishLocked()
	s.mu.Unlock()
	if first {
		close(s.firstSynced)
		debug.FreeOSMemory()
	}
}

// BeginFullRead starts gathering a new full read without publishing it: the
// table already published keeps answering until markSynced publishes the
// whole read at once. The Kubernetes source uses it when Istio's CRD appears
// after an empty table was served without it.
func (s *store) BeginFullRead() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.synced = false
}

// reserveLocked makes room for n entries in the maps a store fills with
// entries, each map only while it is empty: the first read brings every
// entry at once, and a map grown one entry at a time moves each of them
// several times (BENCHMARKS.md has the build time it saves).
func (s *store) reserveLocked(n int) {
	if len(s.entries) == 0 {
		s.entries = make(map[entry.Key]*entry.Entry, n)
	}
	if len(s.byHost.one) == 0 {
		s.byHost.one = make(map[string]*entry.Entry, n)
	}
	if len(s.dirty) == 0 {
		s.dirty = make(map[string]bool, n)
	}
}

func (s *store) setLocked(key entry.Key, e *entry.Entry) {
	old := s.entries[key]
	if old != nil {
		for _, h := range old.Hosts {
			s.byHost.remove(h.Name, old)
			s.dirty[h.Name] = true
		}
		if s.legacy != nil {
			s.legacy.remove(old)
		}
		s.countResolved(old, -1)
		s.unselect(old)
	}
	switch {
	case old == nil && e != nil:
		s.held[e.Namespace()]++
	case old != nil && e == nil:
		if ns := old.Namespace(); s.held[ns] > 1 {
			s.held[ns]--
		} else {
			delete(s.held, ns)
		}
	}
	if e == nil {
		delete(s.entries, key)
		return
	}
	s.entries[key] = e
	for _, h := range e.Hosts {
		s.byHost.add(h.Name, e)
		s.dirty[h.Name] = true
	}
	s.countResolved(e, 1)
	if s.legacy != nil {
		s.legacy.add(e)
	}
	s.selectFor(e)
}

// Legacy recomputation is positional and costs O(eligible hosts) (figures in
// BENCHMARKS.md). Under churn it runs at most once per
// max(minReallocGap, reallocCostFactor × its last duration), so it never takes
// more than a fifth of a core; a change to the eligible set waits at most that
// long for its address.
const (
	minReallocGap     = 100 * time.Millisecond
	reallocCostFactor = 5
)

// publishLocked rebuilds the answers of the dirty hosts into a new table. Before
// the first sync it does nothing: the initial read is built in one pass when the
// source reports it complete.
//
// When a legacy recomputation is due it runs first. When one is needed but not
// yet due, the changes are published at once against the previous allocation
// (a new eligible host has no address yet, a removed one is gone, every other
// host keeps its address) and a timer publishes the recomputation.
func (s *store) publishLocked() {
	if !s.synced {
		return
	}
	start := s.clock.Now()
	if s.legacy != nil && s.legacy.changed() {
		if wait := s.reallocAt.Sub(start); wait > 0 {
			s.deferReallocLocked(wait)
		} else {
			for host := range s.legacy.reallocate() {
				s.dirty[host] = true
			}
			if s.minReallocGap > 0 { // zero: recompute on every change
				s.reallocAt = start.Add(max(s.minReallocGap, reallocCostFactor*s.clock.Since(start)))
			}
		}
	}
	changes := make(map[string]*table.Answer, len(s.dirty))
	shared := make(map[any]*table.Answer, len(s.dirty))
	for host := range s.dirty {
		changes[host] = s.answerFor(host, "", shared)
	}
	s.building = s.building.With(changes)
	s.building.SetOverlays(s.overlaysLocked(changes))
	s.endpoints = nil
	// A fresh map, not clear: a cleared map keeps the capacity of the
	// initial sync and ranging over it would cost O(all hosts) per change.
	s.dirty = make(map[string]bool)
	s.building.Entries = len(s.entries)
	s.building.Published = start
	if s.legacy != nil {
		s.building.LegacyUnallocated = s.legacy.unallocated
	}
	s.published.Store(s.building)
	observeTableUpdate(start)
}

func (s *store) deferReallocLocked(wait time.Duration) {
	if s.reallocTimer != nil || s.closed {
		return
	}
	s.reallocTimer = s.clock.AfterFunc(wait, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed {
			return
		}
		s.reallocTimer = nil
		s.publishLocked()
	})
}

// overlaysLocked returns the overlays of s.building after the public answers
// of the dirty hosts changed to changes, and the namespaces whose
// overlay it replaced. A dirty host is looked at
// again for every namespace an entry declaring it is exported to, and every
// namespace whose overlay held it: it stays in (or enters) the overlay of
// those where its answer differs from the public one. Only the
// overlays of namespaces with such a host are rebuilt; the others are shared.
func (s *store) overlaysLocked(changes map[string]*table.Answer) (map[string]*table.Overlay, []string) {
	// namespace -> the hosts of its overlay as they become: a host's answer
	// there, nil when it is hidden there, absent when it is as public.
	rebuilt := make(map[string]map[string]*table.Answer)
	shared := make(map[any]*table.Answer)
	for host, public := range changes {
		namespaces := slices.Clone(s.overlaid[host])
		for _, e := range s.byHost.of(host) {
			for _, ns := range e.ExportedTo() {
				if !slices.Contains(namespaces, ns) {
					namespaces = append(namespaces, ns)
				}
			}
		}
		var kept []string
		for _, ns := range namespaces {
			hosts, ok := rebuilt[ns]
			if !ok {
				hosts = s.building.Overlays[ns].Hosts()
				rebuilt[ns] = hosts
			}
			ans := s.answerFor(host, ns, shared)
			if sameAnswer(ans, public) {
				delete(hosts, host)
				continue
			}
			hosts[host] = ans
			kept = append(kept, ns)
		}
		if len(kept) > 0 {
			if s.overlaid == nil {
				s.overlaid = make(map[string][]string)
			}
			s.overlaid[host] = kept
		} else {
			delete(s.overlaid, host)
		}
	}
	if len(rebuilt) == 0 {
		return s.building.Overlays, nil
	}
	out := maps.Clone(s.building.Overlays)
	if out == nil {
		out = make(map[string]*table.Overlay, len(rebuilt))
	}
	for ns, hosts := range rebuilt {
		if len(hosts) == 0 {
			delete(out, ns)
		} else {
			out[ns] = table.NewOverlay(hosts, s.building)
		}
	}
	return out, slices.Collect(maps.Keys(rebuilt))
}

// sameAnswer reports whether a and b answer alike: the same addresses in the
// same order and the same ports, for the same clients.
func sameAnswer(a, b *table.Answer) bool {
	if a == nil || b == nil {
		return a == b
	}
	return bytes.Equal(a.A(), b.A()) && bytes.Equal(a.AAAA(), b.AAAA()) && slices.Equal(a.Ports(), b.Ports()) &&
		a.Target == b.Target && a.Reach == b.Reach && a.Resolved == b.Resolved && sameAnswer(a.Else, b.Else)
}

// addrsKey identifies an address slice by its backing array: the legacy
// allocator's of a host, an entry's endpoint addresses, shared by its hosts.
type addrsKey struct {
	first *netip.Addr
	n     int
}

// hostAddrsKey identifies the addresses an entry gives a host of its own:
// all hosts of an entry share those of its spec.addresses.
type hostAddrsKey struct {
	e     *entry.Entry
	addrs string // Host.AddrsKey
}

// answerFor merges what the entries say about one host. As in Istio, the
// namespace that wins a host declared by several entries is that of the oldest
// entry declaring it (creationTimestamp, then namespace, then name), whether
// that entry has addresses or not, and the addresses of all that namespace's
// entries for the host are merged, oldest first, without duplicates, and so
// are their ports, the host's SRV records. When the
// winning namespace gives the host no address it is not in the table (a
// covering wildcard answers, else the name is not ours): a newer entry in
// another namespace never takes a host over. Map order never decides.
//
// A host with one contributing entry gets the answer of that entry's address
// slice and ports, shared through shared with every other host built from
// them in this publish: an entry with 256 hosts and 256 addresses costs one
// answer, not 256 (memory follows what the entries say, not its product).
func (s *store) answerFor(host, ns string, shared map[any]*table.Answer) *table.Answer {
	ans := s.answerOf(host, ns, shared)
	if ans == nil || ans.Resolved || s.envoyResolves[host] == 0 {
		return ans
	}
	// Envoy resolves this name for a DNS entry: a copy, since answers are
	// shared between the hosts of an entry.
	own := *ans
	own.Resolved = true
	return &own
}

// answerOf is answerFor before the names Envoy resolves are told apart.
func (s *store) answerOf(host, ns string, shared map[any]*table.Answer) *table.Answer {
	contributors := s.contributors(host, ns)
	switch len(contributors) {
	case 0:
		return nil
	case 1:
		e := contributors[0]
		addrs, reach, key := s.addrsOf(e, host)
		if ans := shared[key]; ans != nil && slices.Equal(ans.Ports(), e.Ports) {
			return ans
		}
		ans := table.NewAnswer(addrs, &e.Ports)
		ans.Reach = reach
		if reach > minReach {
			ans.Else, ans.Resolved = s.directOf(contributors, shared)
		}
		shared[key] = ans
		return ans
	}
	var merged []netip.Addr
	most := minReach
	for _, e := range contributors {
		addrs, reach, _ := s.addrsOf(e, host)
		most = max(most, reach)
		for _, ip := range addrs {
			if !slices.Contains(merged, ip) {
				merged = append(merged, ip)
			}
		}
	}
	var ports *[]entry.Port
	if p := mergedPorts(contributors); len(p) > 0 {
		ports = &p
	}
	ans := table.NewAnswer(merged, ports)
	ans.Reach = most
	if most > minReach {
		ans.Else, ans.Resolved = s.directOf(contributors, shared)
	}
	return ans
}

// contributors are the entries whose addresses host answers with for the
// clients of namespace ns ("" for the public table): among the entries they
// see declaring host, with or without addresses, those exported to ns by name
// (or as their own with ".") come before public ones, as in Istio's sidecar
// scope; the first by creationTimestamp, then namespace, then name, chooses
// the namespace; its entries that give host addresses contribute, oldest
// first. None when that namespace gives it no address.
func (s *store) contributors(host, ns string) []*entry.Entry {
	claimants := s.byHost.of(host)
	if !slices.ContainsFunc(claimants, func(e *entry.Entry) bool { return !e.VisibleTo(ns) }) {
		if len(claimants) > 1 {
			claimants = slices.Clone(claimants)
		}
	} else {
		claimants = slices.DeleteFunc(slices.Clone(claimants), func(e *entry.Entry) bool { return !e.VisibleTo(ns) })
	}
	if len(claimants) > 1 {
		explicit := func(e *entry.Entry) int {
			if e.ExportedTo() == nil {
				return 1
			}
			return 0
		}
		slices.SortFunc(claimants, func(a, b *entry.Entry) int {
			return cmp.Or(cmp.Compare(explicit(a), explicit(b)), cmp.Compare(a.Created, b.Created),
				cmp.Compare(a.Namespace(), b.Namespace()), cmp.Compare(a.Name(), b.Name()))
		})
	}
	var out []*entry.Entry
	for _, e := range claimants {
		if e.Namespace() == claimants[0].Namespace() && s.givesAddrs(e, host) {
			out = append(out, e)
		}
	}
	return out
}

// addrsOf returns the addresses entry e gives host (its own, or those the
// legacy allocator computed for it), the least class of client that routes
// them, and what tells them apart in one publish: the hosts of e with the
// same key share one answer.
func (s *store) addrsOf(e *entry.Entry, host string) ([]netip.Addr, reach.Class, any) {
	for _, h := range e.Hosts {
		if h.Name != host {
			continue
		}
		if legacy := e.LegacyHost(host); legacy != nil {
			addrs := s.legacy.addresses(legacy)
			return addrs, reach.Mesh, sliceKey(addrs)
		}
		if e.Headless {
			// Endpoint addresses are where a client connects, with or
			// without a proxy.
			addrs := s.endpointAddrs(e)
			return addrs, reach.Outside, sliceKey(addrs)
		}
		return h.Addrs(), reachOf(e), hostAddrsKey{e, h.AddrsKey()}
	}
	return nil, minReach, nil
}

// givesAddrs reports whether addrsOf(e, host) has an address, without
// unpacking a host's own.
func (s *store) givesAddrs(e *entry.Entry, host string) bool {
	for _, h := range e.Hosts {
		if h.Name != host {
			continue
		}
		if legacy := e.LegacyHost(host); legacy != nil {
			return len(s.legacy.addresses(legacy)) > 0
		}
		if e.Headless {
			return len(s.endpointAddrs(e)) > 0
		}
		return h.HasAddrs()
	}
	return false
}

// sliceKey is the addrsKey of addrs, nil for none.
func sliceKey(addrs []netip.Addr) any {
	if len(addrs) == 0 {
		return nil
	}
	return addrsKey{&addrs[0], len(addrs)}
}

// Skipped logs and counts what the conversion of an object left out; object
// names it with its kind.
func (s *store) Skipped(object string, skips []entry.Skip) { s.skipped.report(object, skips) }

// Rejected counts a whole object or file left out for reason; the source has
// logged it.
func (s *store) Rejected(reason string) { s.skipped.add(reason) }

// mergedPorts are the ports of the entries a host answers with the
// addresses of (store.contributors), oldest first, without duplicates: the
// host's SRV ports.
func mergedPorts(contributors []*entry.Entry) []entry.Port {
	var merged []entry.Port
	for _, e := range contributors {
		for _, p := range e.Ports {
			if !slices.Contains(merged, p) {
				merged = append(merged, p)
			}
		}
	}
	return merged
}

// hostIndex is, by host, the entries declaring it. One entry nearly always
// does, kept alone; a host that several declare keeps them in a list. One
// map of lists cost every host a slice header and an array of its own.
type hostIndex struct {
	one  map[string]*entry.Entry
	many map[string][]*entry.Entry
}

func (x hostIndex) add(host string, e *entry.Entry) {
	if list, ok := x.many[host]; ok {
		x.many[host] = append(list, e)
	} else if first, ok := x.one[host]; ok {
		delete(x.one, host)
		x.many[host] = []*entry.Entry{first, e}
	} else {
		x.one[host] = e
	}
}

func (x hostIndex) remove(host string, e *entry.Entry) {
	list, ok := x.many[host]
	if !ok {
		if x.one[host] == e {
			delete(x.one, host)
		}
		return
	}
	switch list = slices.DeleteFunc(list, func(o *entry.Entry) bool { return o == e }); len(list) {
	case 0:
		delete(x.many, host)
	case 1:
		delete(x.many, host)
		x.one[host] = list[0]
	default:
		x.many[host] = list
	}
}

// of returns the entries declaring host, in the order they came; the list
// is the index's, not to be written.
func (x hostIndex) of(host string) []*entry.Entry {
	if e, ok := x.one[host]; ok {
		return []*entry.Entry{e}
	}
	return x.many[host]
}
