package table

import (
	"strings"

	"github.com/miekg/dns"
)

// In the cluster's "." stanza every query passes through the plugin, and
// nearly none is ours: Services, external names, and each search-list
// expansion of both. Find on such a name probes the exact map, then the
// wildcard map once per label, then each search form the same way, and with
// "exportto client" first looks up the client's pod. tails lets a name that
// no view can serve be told in one probe, before any of that.
//
// tails counts, for every owner name served by the public table or by any
// overlay, its tail: the last two labels of an exact host, or of a
// wildcard's suffix ("b.c" for "*.a.b.c" and for "*.b.c"), or the name
// itself when it has one label. A name can be served only if its own tail
// is counted: an exact host equal to it has the same tail, and so does a
// wildcard suffix of two labels or more that it lies under. A wildcard with
// a one-label suffix ("*.com") is the exception, counted apart in
// shortWild so that its top-level label is probed only when one exists.

// tailOf is the tail of a name without a trailing dot, and whether the name
// has two labels or more. Query names may hold escapes: dns.PrevLabel keeps
// an escaped dot inside its label, as the table's other lookups do.
func tailOf(name string) (string, bool) {
	i, start := dns.PrevLabel(name, 2)
	return name[i:], !start
}

// countTail adds delta to the count of the tail of an owner name (an exact
// host, or "*.a.com" for a wildcard).
func (t *Table) countTail(owner string, delta int32, copied map[any]bool) {
	suffix, wild := strings.CutPrefix(owner, "*.")
	tail, long := tailOf(suffix)
	if wild && !long {
		t.shortWild += delta
	}
	h := t.hash(tail)
	if n := t.tails.at(h, tail) + delta; n > 0 {
		t.tails.set(h, tail, n, copied)
	} else {
		t.tails.del(h, tail, copied)
	}
}

// MayServe reports whether some view of t may serve name (lower case,
// without the trailing dot): false means that Find, through any overlay,
// finds nothing for it, and costs one probe (two when a one-label wildcard
// is served). Service names ("_http._tcp.<host>") are not filtered, since
// their host may have a tail of one label.
func (t *Table) MayServe(name string) bool {
	if name == "" || name[0] == '_' {
		return true
	}
	// A name of one label is its own tail: only an exact host can equal it.
	tail, _ := tailOf(name)
	if _, ok := t.tails.get(t.hash(tail), tail); ok {
		return true
	}
	if t.shortWild > 0 {
		top := tail[strings.LastIndexByte(tail, '.')+1:]
		_, ok := t.tails.get(t.hash(top), top)
		return ok
	}
	return false
}

// SetOverlays replaces the overlays of t, a table being built (the one With
// returned, not yet published), by overlays, in which only the namespaces
// in changed may differ from t's: the tails of the hosts they serve are
// counted again.
func (t *Table) SetOverlays(overlays map[string]*Overlay, changed []string) {
	copied := make(map[any]bool)
	for _, ns := range changed {
		t.Overlays[ns].countTails(t, -1, copied)
		overlays[ns].countTails(t, 1, copied)
	}
	t.Overlays = overlays
}

// countTails adds delta to the tail of every host o serves (one with an
// answer: a nil answer only hides a public host); a nil overlay has none.
func (o *Overlay) countTails(t *Table, delta int32, copied map[any]bool) {
	if o == nil {
		return
	}
	for host, ans := range o.exact {
		if ans != nil {
			t.countTail(host, delta, copied)
		}
	}
	for suffix, ans := range o.wild {
		if ans != nil {
			t.countTail("*."+suffix, delta, copied)
		}
	}
}
