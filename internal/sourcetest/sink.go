// Package sourcetest holds what the tests of the sources (internal/source/...),
// of the entry model and of the plugin share: a Sink that records what a
// source delivers, polling, atomic file writes, goroutine checks, kubeconfigs
// and ServiceEntry fixtures.
//
// It is a normal package so that the tests of several packages can import it,
// but only tests (_test.go files) may: no program code imports it.
package sourcetest

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/source"
	clog "github.com/coredns/coredns/plugin/pkg/log"
)

// log is the plugin's logger, as the internal packages use it.
var log = clog.NewWithPlugin("serviceentry")

// Sink is a source.Sink that records what a source delivers, for tests that
// check a source without the plugin's store. It keeps the entries by key as
// delivered, and what a store would serve: nothing before the first
// MarkSynced, and from a BeginFullRead on what was served until the next
// MarkSynced. It counts skipped items by reason and logs them as the store
// does, and keeps the log of the keys it was given. It is safe for
// concurrent use.
type Sink struct {
	// Delay slows every entry Upsert and ReplaceEntries apply, as a slow store
	// would. Set it before the source starts.
	Delay time.Duration

	mu        sync.Mutex
	entries   map[entry.Key]*entry.Entry    // as delivered
	published map[entry.Key]*entry.Entry    // what a store would serve; nil until the first MarkSynced
	synced    bool                          // published is entries: changes are served
	keys      []string                      // every key given (namespace/name), in order
	given     map[string]bool               // the distinct keys given
	atSynced  []int                         // len(given) at each MarkSynced
	skips     map[string][]entry.Skip       // the last skips reported for each key
	counts    map[string]uint64             // skipped items and rejected objects by reason
	workloads map[entry.Key]*entry.Workload // as delivered

	firstSynced chan struct{} // closed by the first MarkSynced
}

var _ source.Sink = (*Sink)(nil)

// NewSink returns an empty sink, not synced.
func NewSink() *Sink {
	return &Sink{
		entries:     make(map[entry.Key]*entry.Entry),
		given:       make(map[string]bool),
		skips:       make(map[string][]entry.Skip),
		counts:      make(map[string]uint64),
		workloads:   make(map[entry.Key]*entry.Workload),
		firstSynced: make(chan struct{}),
	}
}

// Upsert sets the entry stored under key; nil removes it.
func (s *Sink) Upsert(key entry.Key, e *entry.Entry) {
	time.Sleep(s.Delay)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(key, e)
}

// ReplaceEntries makes the sink hold exactly all among the entries of
// namespaces ("" among them: every namespace), and returns the keys it
// removed.
func (s *Sink) ReplaceEntries(namespaces []string, all map[entry.Key]*entry.Entry) []entry.Key {
	time.Sleep(time.Duration(len(all)) * s.Delay)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.replaceEntriesLocked(namespaces, all)
}

func (s *Sink) replaceEntriesLocked(namespaces []string, all map[entry.Key]*entry.Entry) []entry.Key {
	var gone []entry.Key
	for key := range s.entries {
		ns, _, _ := strings.Cut(key.Name, "/")
		if _, kept := all[key]; !kept && (slices.Contains(namespaces, "") || slices.Contains(namespaces, ns)) {
			gone = append(gone, key)
		}
	}
	for _, key := range gone {
		s.setLocked(key, nil)
	}
	for key, e := range all {
		s.setLocked(key, e)
	}
	return gone
}

// ReplaceAll makes the sink hold exactly all and the workloads.
func (s *Sink) ReplaceAll(all map[entry.Key]*entry.Entry, workloads map[entry.Key]*entry.Workload) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.workloads = maps.Clone(workloads)
	if s.workloads == nil {
		s.workloads = make(map[entry.Key]*entry.Workload)
	}
	s.replaceEntriesLocked([]string{""}, all)
}

// SetWorkloads sets the workloads of changes (nil removes one).
func (s *Sink) SetWorkloads(changes map[entry.Key]*entry.Workload) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, w := range changes {
		s.setWorkloadLocked(key, w)
	}
}

// ReplaceWorkloads makes the sink hold exactly all of the workloads of kind
// in namespaces ("" among them: every namespace).
func (s *Sink) ReplaceWorkloads(kind entry.Kind, namespaces []string, all map[entry.Key]*entry.Workload) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key := range s.workloads {
		ns, _, _ := strings.Cut(key.Name, "/")
		if _, kept := all[key]; !kept && key.Kind == kind && (slices.Contains(namespaces, "") || slices.Contains(namespaces, ns)) {
			delete(s.workloads, key)
		}
	}
	for key, w := range all {
		s.setWorkloadLocked(key, w)
	}
}

func (s *Sink) setWorkloadLocked(key entry.Key, w *entry.Workload) {
	if w == nil {
		delete(s.workloads, key)
	} else {
		s.workloads[key] = w
	}
}

// Workloads returns a copy of the workloads as delivered, by key.
func (s *Sink) Workloads() map[entry.Key]*entry.Workload {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.workloads)
}

func (s *Sink) setLocked(key entry.Key, e *entry.Entry) {
	s.keys = append(s.keys, key.Name)
	s.given[key.Name] = true
	if e == nil {
		delete(s.entries, key)
	} else {
		s.entries[key] = e
	}
}

// BeginFullRead keeps what is served until the next MarkSynced.
func (s *Sink) BeginFullRead() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.synced {
		s.published = maps.Clone(s.entries)
		s.synced = false
	}
}

// MarkSynced serves what was delivered, and every change from now on.
func (s *Sink) MarkSynced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.atSynced = append(s.atSynced, len(s.given))
	first := s.published == nil
	s.published, s.synced = s.entries, true
	if first {
		close(s.firstSynced)
	}
}

// Skipped logs and counts the items the conversion of key left out, as the
// plugin's store does (so that tests capturing the log see its lines), and
// keeps them as the last reported for key.
func (s *Sink) Skipped(object string, skips []entry.Skip) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.skips[object] = skips
	for _, sk := range skips {
		s.counts[sk.Reason]++
		log.Warningf("%s: skipped %q: %s", object, sk.Item, sk.Reason)
	}
}

// Rejected counts an object or file left out for reason (the source logs it).
func (s *Sink) Rejected(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[reason]++
}

// Synced reports whether MarkSynced has come: a store would serve.
func (s *Sink) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.published != nil
}

// WaitSynced waits up to timeout for the first MarkSynced and reports whether
// it came.
func (s *Sink) WaitSynced(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.firstSynced:
		return true
	case <-t.C:
		return false
	}
}

// Entries returns a copy of the entries as delivered, by key, whether or not
// a store would serve them yet.
func (s *Sink) Entries() map[entry.Key]*entry.Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.entries)
}

// Published returns a copy of what a store would serve, by key: nil before
// the first MarkSynced.
func (s *Sink) Published() map[entry.Key]*entry.Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.published)
}

// FirstA returns the first IPv4 address of the served entry declaring host
// (compared without regard to case or a trailing dot, wildcards only as
// written), or "" when none does or nothing is served. Should several
// entries declare it, the one whose key sorts first answers.
func (s *Sink) FirstA(host string) string {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, key := range slices.SortedFunc(maps.Keys(s.published), func(a, b entry.Key) int { return strings.Compare(a.Name, b.Name) }) {
		for _, h := range s.published[key].Hosts {
			if h.Name != host {
				continue
			}
			for _, a := range h.Addrs() {
				if a.Is4() {
					return a.String()
				}
			}
		}
	}
	return ""
}

// Hosts counts the names with an address among what a store would serve, as
// a table counts its hosts.
func (s *Sink) Hosts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make(map[string]bool)
	for _, e := range s.published {
		for _, h := range e.Hosts {
			if h.HasAddrs() {
				names[h.Name] = true
			}
		}
	}
	return len(names)
}

// Count returns the skipped items and rejected objects counted under reason.
func (s *Sink) Count(reason string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[reason]
}

// Counts returns a copy of the counts by reason; reasons never counted are
// absent.
func (s *Sink) Counts() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.counts)
}

// Skips returns the skips last reported for object ("ServiceEntry ns/name",
// "Pod ns/name"), and whether any report
// (even of none) was made for it.
func (s *Sink) Skips(object string) ([]entry.Skip, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	skips, ok := s.skips[object]
	return skips, ok
}

// Keys returns every key the sink was given, in order, a key once per
// Upsert and per key a ReplaceEntries or ReplaceAll holds or removes.
func (s *Sink) Keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.keys)
}

// Partial describes a MarkSynced that came after some but not all of the
// keys given so far had been (a store would have served a partial read; an
// empty one before any key is whole), or returns "".
func (s *Sink) Partial() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, n := range s.atSynced {
		if n != 0 && n != len(s.given) {
			return fmt.Sprintf("MarkSynced #%d after %d of %d entries", i+1, n, len(s.given))
		}
	}
	return ""
}
