package table

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// Overlay is what one client namespace sees differently from the public
// table with "exportto client": only the hosts whose answer differs for it,
// because an entry is exported to it without being public. It is immutable
// once published, like the table that holds it.
type Overlay struct {
	// exact and wild (keyed by the wildcard's suffix, as in table) hold the
	// namespace's own answer for a host; a nil answer means the
	// host is not served to this namespace although it is public (a private
	// claimant won it and gives it no address).
	exact map[string]*Answer
	wild  map[string]*Answer
	// below is added to the table's counts of served names under a name.
	below map[string]int32
	// reverse lists, by address, the exact hosts of the overlay answering
	// with it, fully qualified, sorted.
	reverse map[netip.Addr][]string
}

// View is the table as one client sees it: the public table, through the
// overlay of the client's namespace when it has one. Clients of a namespace
// without overlay, and clients of no known namespace, read the table alone.
type View struct {
	*Table
	o *Overlay
}

// ViewFor returns the view of the clients of namespace ns ("" for unknown).
func (t *Table) ViewFor(ns string) View {
	if ns == "" || t.Overlays == nil {
		return View{Table: t}
	}
	return View{Table: t, o: t.Overlays[ns]}
}

// Lookup finds the answer for a lower-case name without a trailing dot, in
// presentation format. An exact name beats any wildcard; among wildcards the
// most specific wins; a wildcard never covers its own apex.
func (v View) Lookup(name string) *Answer {
	h, _ := v.host(name, true)
	return h.Answer
}

// Find returns what serves name (same form as lookup's): a service name of a
// host before the host itself, since underscore labels never belong to a
// valid host; with wild false, exact hosts only.
func (v View) Find(name string, wild bool) (Hit, bool) {
	if name != "" && name[0] == '_' {
		if off, end := dns.NextLabel(name, 0); !end {
			if name[off] == '_' {
				if off2, end := dns.NextLabel(name, off); !end {
					if h, ok := v.host(name[off2:], wild); ok {
						h.Service, h.HostOffset = true, off2
						h.Port, h.Proto = name[1:off-1], name[off+1:off2-1]
						return h, true
					}
				}
			}
			if h, ok := v.host(name[off:], wild); ok {
				h.Service, h.HostOffset = true, off
				return h, true
			}
		}
	}
	return v.host(name, wild)
}

// host finds the host that serves name: the exact one, else (with wild) the
// most specific wildcard. The overlay's word on an exact name or a wildcard
// suffix replaces the table's.
func (v View) host(name string, wild bool) (Hit, bool) {
	if ans, ok := v.o.exactHost(name); ok {
		if ans != nil {
			return Hit{Answer: ans, Key: name}, true
		}
	} else if ans := v.exact.at(v.hash(name), name); ans != nil {
		return Hit{Answer: ans, Key: name}, true
	}
	if !wild {
		return Hit{}, false
	}
	for off, end := dns.NextLabel(name, 0); !end; off, end = dns.NextLabel(name, off) {
		suffix := name[off:]
		if ans, ok := v.o.wildHost(suffix); ok {
			if ans != nil {
				return Hit{Answer: ans, Key: suffix, Wild: true}, true
			}
			continue
		}
		if ans := v.wild.at(v.hash(suffix), suffix); ans != nil {
			return Hit{Answer: ans, Key: suffix, Wild: true}, true
		}
	}
	return Hit{}, false
}

// HasBelow reports whether served names lie below name (same form as
// lookup's): an empty non-terminal when lookup finds nothing for it.
func (v View) HasBelow(name string) bool {
	n := v.below.at(v.hash(name), name)
	if v.o != nil {
		n += v.o.below[name]
	}
	return n > 0
}

// ClosestServed returns the closest proper ancestor of name (same form as
// lookup's) that exists, as a served exact name or with served names below
// it, or "" if none does.
func (v View) ClosestServed(name string) string {
	for off, end := dns.NextLabel(name, 0); !end; off, end = dns.NextLabel(name, off) {
		anc := name[off:]
		if _, ok := v.host(anc, false); ok || v.HasBelow(anc) {
			return anc
		}
	}
	return ""
}

// exactHost and wildHost (by the wildcard's suffix) return the overlay's word
// on a name, if it has one; a nil overlay (the public view) has none.
func (o *Overlay) exactHost(name string) (*Answer, bool) {
	if o == nil {
		return nil, false
	}
	ans, ok := o.exact[name]
	return ans, ok
}

func (o *Overlay) wildHost(suffix string) (*Answer, bool) {
	if o == nil {
		return nil, false
	}
	ans, ok := o.wild[suffix]
	return ans, ok
}

// PTR returns the hosts answering with addr for this view, sorted: the
// table's, less those the overlay answers otherwise, plus the overlay's.
func (v View) PTR(addr netip.Addr) []string {
	all := v.Table.PTR(addr)
	if v.o == nil {
		return all
	}
	own := v.o.reverse[addr]
	var out []string
	for _, h := range all {
		if _, replaced := v.o.exact[h[:len(h)-1]]; !replaced {
			out = append(out, h)
		}
	}
	if len(out) == len(all) && len(own) == 0 {
		return all
	}
	out = append(out, own...)
	slices.Sort(out)
	return slices.Compact(out)
}

// Hosts returns a fresh map of the overlay's hosts by owner name ("*.a.com"
// for a wildcard); empty for a nil overlay.
func (o *Overlay) Hosts() map[string]*Answer {
	out := make(map[string]*Answer)
	if o == nil {
		return out
	}
	for name, ans := range o.exact {
		out[name] = ans
	}
	for suffix, ans := range o.wild {
		out["*."+suffix] = ans
	}
	return out
}

// NewOverlay builds the overlay of namespace-specific hosts (owner names,
// "*.a.com" for a wildcard) against the public table t. The counts and the
// reverse index are derived from the hosts, which are few.
func NewOverlay(hosts map[string]*Answer, t *Table) *Overlay {
	// Most overlays hold a host or two: maps are made only when used (a nil
	// map reads as empty), which keeps a thousand of them small.
	o := &Overlay{}
	for host, ans := range hosts {
		suffix, wild := strings.CutPrefix(host, "*.")
		var public bool
		if wild {
			setIn(&o.wild, suffix, ans)
			public = t.wild.at(t.hash(suffix), suffix) != nil
		} else {
			setIn(&o.exact, host, ans)
			public = t.exact.at(t.hash(host), host) != nil
			for _, addr := range AddressesOf(ans) {
				setIn(&o.reverse, addr, append(o.reverse[addr], host+"."))
			}
		}
		var delta int32
		switch {
		case ans != nil && !public:
			delta = 1
		case ans == nil && public:
			delta = -1
		}
		if delta != 0 {
			for off, end := dns.NextLabel(host, 0); !end; off, end = dns.NextLabel(host, off) {
				setIn(&o.below, host[off:], o.below[host[off:]]+delta)
			}
		}
	}
	for addr := range o.reverse {
		slices.Sort(o.reverse[addr])
	}
	return o
}

// setIn sets m[k] = v, making *m first if it is nil.
func setIn[M ~map[K]V, K comparable, V any](m *M, k K, v V) {
	if *m == nil {
		*m = make(M, 1)
	}
	(*m)[k] = v
}
