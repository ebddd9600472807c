package serviceentry

import (
	"slices"

	"github.com/miekg/dns"
)

// srvPort is one valid port of a ServiceEntry, as SRV names it:
// _<name>._<proto>.<host>.
type srvPort struct {
	name   string // an RFC 1123 label, lower case as Istio requires
	number uint16
	udp    bool // protocol UDP; every other is served as _tcp
}

// proto is the port's protocol label in SRV names.
func (p srvPort) proto() string {
	if p.udp {
		return "udp"
	}
	return "tcp"
}

// portsFor gathers the ports of host for the clients of namespace ns from the
// entries whose addresses it answers with (store.contributors: the winning
// namespace's), merged, oldest first. A host of one entry shares that entry's
// slice.
func (s *store) portsFor(host, ns string) []srvPort {
	from := s.contributors(host, ns)
	if len(from) == 1 {
		return from[0].ports
	}
	var merged []srvPort
	for _, e := range from {
		for _, p := range e.ports {
			if !slices.Contains(merged, p) {
				merged = append(merged, p)
			}
		}
	}
	return merged
}

// portsOf returns the ports of the host h was found under.
func (t *table) portsOf(h hit) []srvPort {
	key := h.key
	if h.wild {
		key = "*." + key
	}
	return t.ports.at(t.hash(key), key)
}

// srvRecords answers SRV at a name h serves, owner as asked: the ports of a
// service name that match it (names compare in lower case), or every port of
// the host itself, each with priority 0 and weight 100. The target is the
// host, or, for a wildcard, the name asked without the service labels; its
// addresses go in the additional section.
func (se *ServiceEntry) srvRecords(tbl view, h hit, owner string) ([]dns.RR, []dns.RR) {
	if h.service && h.port == "" {
		return nil, nil // _<proto>.<host> holds no record of its own
	}
	target := owner[h.hostOff:]
	if !h.wild {
		target = h.key + "."
	}
	var rrs []dns.RR
	for _, p := range tbl.portsOf(h) {
		if h.service && (p.name != h.port || p.proto() != h.proto) {
			continue
		}
		rrs = append(rrs, &dns.SRV{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: se.TTL},
			Priority: 0, Weight: 100, Port: p.number, Target: target})
	}
	if len(rrs) == 0 {
		return nil, nil
	}
	return rrs, append(addressRecords(target, dns.TypeA, se.TTL, h.ans.a), addressRecords(target, dns.TypeAAAA, se.TTL, h.ans.aaaa)...)
}
