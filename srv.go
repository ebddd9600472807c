package serviceentry

import (
	"github.com/miekg/dns"
)

// srvRecords answers SRV at the name x serves, as asked: the ports of a
// service name that match it (names compare in lower case), or every port of
// the host itself, each with priority 0 and weight 100. The target is the
// host, or, for a wildcard, the name asked without the service labels; its
// addresses for the client go in the additional section.
func (se *ServiceEntry) srvRecords(x *reply) ([]dns.RR, []dns.RR) {
	h, owner := x.Hit, x.owner
	if h.Service && h.Port == "" {
		return nil, nil // _<proto>.<host> holds no record of its own
	}
	target := owner[h.HostOffset:]
	if !h.Wild {
		target = h.Key + "."
	}
	var rrs []dns.RR
	for _, p := range x.found.Ports() {
		if h.Service && (p.Name != h.Port || p.Proto() != h.Proto) {
			continue
		}
		rrs = append(rrs, &dns.SRV{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: se.TTL},
			Priority: 0, Weight: 100, Port: p.Number, Target: target})
	}
	if len(rrs) == 0 {
		return nil, nil
	}
	return rrs, append(addressRecords(target, dns.TypeA, se.TTL, h.Answer.A()), addressRecords(target, dns.TypeAAAA, se.TTL, h.Answer.AAAA())...)
}
