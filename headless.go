package serviceentry

import (
	"cmp"
	"iter"
	"net/netip"
	"slices"
	"strings"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
)

// A headless entry (entry.Entry.Headless) answers with the addresses of its
// endpoints, as Istio's name table does (BuildNameTable,
// pkg/dns/server/name_table.go): those of the workloads its selector picks
// in its own namespace, else those of spec.endpoints. A STATIC or DNS entry
// with a selector answers a client outside the mesh with those of its
// workloads (directOf).
//
// selection is one namespace's part of it: its workloads, and its entries
// that select workloads, each filed under one label of its selector (its
// "pair", entry.SelectorPair). The workloads holding a label that some
// selector is filed under are indexed by it too, so that a workload's change
// looks only at the entries filed under its own labels, and an entry's
// endpoints are found among the workloads holding its pair: both cost what
// they touch, not the namespace's size, however many entries and pods it
// holds.
type selection struct {
	// workloads are by kind, then by name: a map keyed by name alone has
	// the smaller slot, and a selected pod's slot is paid per pod.
	workloads [entry.KindPod + 1]map[string]*entry.Workload
	count     int            // of workloads, every kind
	selectAll []*entry.Entry // entries with an empty selector
	labels    map[string]*filedLabel
	pending   bool // some label's holders are not built yet
}

// filedLabel is a label ("k=v") that selectors are filed under: the entries
// filed there and the workloads holding it, in no order. The holders of a
// label just filed are nil until built, in one pass over the namespace for
// all such labels (build), so that a sync filing many entries scans the
// namespace once, not once per entry. A slice, not a set: a map per label
// costs several times its pointers, and the linear search a change makes in
// it costs less than the rebuild of the entries filed under it, which read
// every holder. One record for both: a map each cost a selecting entry two
// slots.
type filedLabel struct {
	entries []*entry.Entry
	holders []*entry.Workload
}

func (s *store) selectionOf(ns string) *selection {
	sel := s.namespaces[ns]
	if sel == nil {
		sel = &selection{labels: make(map[string]*filedLabel)}
		s.namespaces[ns] = sel
	}
	return sel
}

// dropIfEmpty forgets a namespace with nothing in it.
func (s *store) dropIfEmpty(ns string, sel *selection) {
	if sel.count == 0 && len(sel.selectAll) == 0 && len(sel.labels) == 0 {
		delete(s.namespaces, ns)
	}
}

func (sel *selection) workload(key entry.Key) *entry.Workload {
	return sel.workloads[key.Kind][key.Name]
}

// all yields every workload of the namespace, with the key it is stored
// under.
func (sel *selection) all() iter.Seq2[entry.Key, *entry.Workload] {
	return func(yield func(entry.Key, *entry.Workload) bool) {
		for kind, byName := range sel.workloads {
			for name, w := range byName {
				if !yield(entry.Key{Kind: entry.Kind(kind), Name: name}, w) {
					return
				}
			}
		}
	}
}

// put stores w under key, or removes the workload there (nil), with the
// labels it holds.
func (sel *selection) put(key entry.Key, old, w *entry.Workload) {
	if old != nil {
		delete(sel.workloads[key.Kind], key.Name)
		sel.count--
		for pair := range old.Labels.Pairs() {
			if l := sel.labels[pair]; l != nil {
				if i := slices.Index(l.holders, old); i >= 0 {
					last := len(l.holders) - 1
					l.holders[i], l.holders[last] = l.holders[last], nil
					l.holders = l.holders[:last]
				}
			}
		}
	}
	if w != nil {
		if sel.workloads[key.Kind] == nil {
			sel.workloads[key.Kind] = make(map[string]*entry.Workload)
		}
		sel.workloads[key.Kind][key.Name] = w
		sel.count++
		for pair := range w.Labels.Pairs() {
			if l := sel.labels[pair]; l != nil && l.holders != nil {
				l.holders = append(l.holders, w)
			}
		}
	}
}

// build fills the holders of the labels filed since the last build, in one
// pass.
func (sel *selection) build() {
	if !sel.pending {
		return
	}
	sel.pending = false
	fresh := make(map[string]*filedLabel)
	for pair, l := range sel.labels {
		if l.holders == nil {
			fresh[pair] = l
			l.holders = []*entry.Workload{}
		}
	}
	for _, w := range sel.all() {
		for pair := range w.Labels.Pairs() {
			if l := fresh[pair]; l != nil {
				l.holders = append(l.holders, w)
			}
		}
	}
}

// SetWorkloads sets the workloads stored under the keys of changes (nil
// removes one) and publishes once.
func (s *store) SetWorkloads(changes map[entry.Key]*entry.Workload) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, w := range changes {
		s.setWorkloadLocked(key, w)
	}
	s.publishLocked()
}

// ReplaceWorkloads makes the store hold exactly all of the workloads of kind
// in namespaces ("" among them: every namespace), and publishes once.
func (s *store) ReplaceWorkloads(kind entry.Kind, namespaces []string, all map[entry.Key]*entry.Workload) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replaceWorkloadsLocked(func(k entry.Key) bool { return k.Kind == kind }, namespaces, all)
	s.publishLocked()
}

// replaceWorkloadsLocked removes the workloads of namespaces ("" among them:
// all) that of says are replaced and all does not hold, then sets all.
func (s *store) replaceWorkloadsLocked(of func(entry.Key) bool, namespaces []string, all map[entry.Key]*entry.Workload) {
	var gone []entry.Key
	drop := func(sel *selection) {
		for key := range sel.all() {
			if _, kept := all[key]; !kept && of(key) {
				gone = append(gone, key)
			}
		}
	}
	if slices.Contains(namespaces, "") {
		for _, sel := range s.namespaces {
			drop(sel)
		}
	} else {
		for _, ns := range namespaces {
			if sel := s.namespaces[ns]; sel != nil {
				drop(sel)
			}
		}
	}
	for _, key := range gone {
		s.setWorkloadLocked(key, nil)
	}
	for key, w := range all {
		s.setWorkloadLocked(key, w)
	}
}

// setWorkloadLocked stores w under key (nil removes it). Only a workload with
// addresses is kept: one without can never be answered with, and a pod
// becoming ready arrives as a change like any other.
func (s *store) setWorkloadLocked(key entry.Key, w *entry.Workload) {
	ns, _, _ := strings.Cut(key.Name, "/")
	if w != nil && w.NumAddrs() == 0 {
		w = nil
	}
	sel := s.namespaces[ns]
	var old *entry.Workload
	if sel != nil {
		old = sel.workload(key)
	}
	if old == nil && w == nil {
		return
	}
	if sel == nil {
		sel = s.selectionOf(ns)
	}
	if old == nil || w == nil || old.Labels != w.Labels || !old.SameAddrs(w) {
		s.touchSelecting(sel, old)
		s.touchSelecting(sel, w)
	}
	sel.put(key, old, w)
	s.dropIfEmpty(ns, sel)
}

// touchSelecting rebuilds the entries of sel that select w (nil: none).
func (s *store) touchSelecting(sel *selection, w *entry.Workload) {
	if w == nil {
		return
	}
	for _, e := range sel.selectAll {
		s.touchSelected(e)
	}
	for pair := range w.Labels.Pairs() {
		l := sel.labels[pair]
		if l == nil {
			continue
		}
		for _, e := range l.entries {
			if w.Labels.Selects(e.Selector()) {
				s.touchSelected(e)
			}
		}
	}
}

// selectFor files an entry that selects workloads; unselect takes it out.
func (s *store) selectFor(e *entry.Entry) {
	if !e.SelectsWorkloads() {
		return
	}
	sel := s.selectionOf(e.Namespace())
	pair := entry.SelectorPair(e.Selector())
	if pair == "" {
		sel.selectAll = append(sel.selectAll, e)
		return
	}
	l := sel.labels[pair]
	if l == nil {
		l = &filedLabel{}
		sel.labels[pair] = l
		sel.pending = true
	}
	l.entries = append(l.entries, e)
}

func (s *store) unselect(e *entry.Entry) {
	sel := s.namespaces[e.Namespace()]
	if !e.SelectsWorkloads() || sel == nil {
		return
	}
	isE := func(x *entry.Entry) bool { return x == e }
	if pair := entry.SelectorPair(e.Selector()); pair == "" {
		sel.selectAll = slices.DeleteFunc(sel.selectAll, isE)
	} else if l := sel.labels[pair]; l != nil {
		if l.entries = slices.DeleteFunc(l.entries, isE); len(l.entries) == 0 {
			delete(sel.labels, pair)
		}
	}
	s.dropIfEmpty(e.Namespace(), sel)
}

// touchSelected rebuilds e's hosts at the next publish.
func (s *store) touchSelected(e *entry.Entry) {
	for _, h := range e.Hosts {
		s.dirty[h.Name] = true
	}
}

// endpointAddrs returns the addresses of a headless entry's endpoints, or
// of the workloads of an entry that selects them: those of the workloads
// its selector picks in its namespace (Istio's ServiceEntry controller
// selects workloads of the entry's namespace only), pods before
// WorkloadEntries and each kind by name, or, without a selector, the IPs of
// spec.endpoints in order; without duplicates. Istio ignores spec.endpoints
// when there is a selector.
func (s *store) endpointAddrs(e *entry.Entry) []netip.Addr {
	if addrs, ok := s.endpoints[e]; ok {
		return addrs
	}
	var addrs []netip.Addr
	if e.Selector() == nil {
		for _, ep := range e.Endpoints() {
			if ep.IP.IsValid() {
				addrs = append(addrs, ep.IP)
			}
		}
	} else if sel := s.namespaces[e.Namespace()]; sel != nil {
		var picked []*entry.Workload
		total := 0
		pick := func(w *entry.Workload) {
			if w.Labels.Selects(e.Selector()) {
				picked = append(picked, w)
				total += w.NumAddrs()
			}
		}
		if pair := entry.SelectorPair(e.Selector()); pair != "" {
			sel.build()
			if l := sel.labels[pair]; l != nil {
				for _, w := range l.holders {
					pick(w)
				}
			}
		} else {
			for _, w := range sel.all() {
				pick(w)
			}
		}
		slices.SortFunc(picked, func(a, b *entry.Workload) int {
			return cmp.Or(cmp.Compare(b.Key.Kind, a.Key.Kind), cmp.Compare(a.Key.Name, b.Key.Name))
		})
		// Sized once: the table's answer copies them, and a publish's
		// cache holds them meanwhile.
		addrs = make([]netip.Addr, 0, total)
		seen := make(map[netip.Addr]bool, total)
		for _, w := range picked {
			for ip := range w.Addrs() {
				if !seen[ip] {
					seen[ip] = true
					addrs = append(addrs, ip)
				}
			}
		}
	}
	if s.endpoints == nil {
		s.endpoints = make(map[*entry.Entry][]netip.Addr)
	}
	s.endpoints[e] = addrs
	return addrs
}
