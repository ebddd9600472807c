package serviceentry

import (
	"strings"

	"github.com/coredns-serviceentry/serviceentry/internal/table"
	"github.com/miekg/dns"
)

// expansion finds the served host a search-path expansion stands for. With
// ndots:5 a pod's resolver tries <name>.<namespace>.svc.<domain>,
// <name>.svc.<domain> and <name>.<domain> before <name>: answering those with
// a CNAME to the host and its records saves the round trips of the misses.
//
// qname (lower case) is split at each search domain into <host>.<label>.svc.,
// <host>.svc. and <host>., tried in that order (the resolver's); the first
// host the table serves (exact, through a wildcard, or a service name of
// one) and that lies in the plugin's zones wins. Nothing is stored per host
// and namespace: the suffix is matched, stripped, and the host looked up.
// asked is the question's name: the alias and the host keep its case. The
// reply is written to x, which the caller holds: a reply returned would be
// one more copy on the stack of every query (see resolve).
func (se *ServiceEntry) expansion(tbl table.View, qname, asked string, x *reply) bool {
	for _, d := range se.SearchDomains {
		for _, end := range searchForms(qname, d) {
			if end == 0 {
				continue
			}
			host := qname[:end] // fully qualified: the dot after it is qname's
			zone := zoneOf(host, se.Zones)
			if zone == "" {
				continue // never answered, so never the target of an alias
			}
			if h, ok := tbl.Find(host[:end-1], true); ok {
				x.Hit, x.owner, x.name, x.zone, x.alias = h, asked[:end], host, zone, asked
				return true
			}
		}
	}
	return false
}

// searchForms returns where the host ends in each form qname may be an
// expansion of under search domain d, in the resolver's order: before
// <label>.svc.d, before svc.d and before d; 0 for a form qname does not have.
func searchForms(qname, d string) [3]int {
	i, start := dns.PrevLabel(qname, dns.CountLabel(d))
	if start || i == 0 || qname[i:] != d {
		return [3]int{}
	}
	rest := qname[:i]
	ends := [3]int{0, 0, len(rest)}
	if svc, _ := dns.PrevLabel(rest, 1); rest[svc:] == "svc." {
		ends[1] = svc
		if label, start := dns.PrevLabel(rest, 2); !start {
			ends[0] = label
		}
	}
	return ends
}

// mayServe reports whether some client may be answered for qname (lower
// case, fully qualified) by t: false when neither the name nor any of its
// search forms can be served by any view of t, nor is a reverse name.
func (se *ServiceEntry) mayServe(t *table.Table, qname string) bool {
	name := trimDot(qname)
	if strings.HasSuffix(name, ".arpa") || t.MayServe(name) {
		return true
	}
	for _, d := range se.SearchDomains {
		for _, end := range searchForms(qname, d) {
			if end != 0 && t.MayServe(qname[:end-1]) {
				return true
			}
		}
	}
	return false
}
