package serviceentry

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/coredns-serviceentry/serviceentry/internal/table"
	"github.com/miekg/dns"
)

// reverseAddr parses a reverse name (lower case, no trailing dot) in its
// canonical form: four decimal labels under in-addr.arpa, 32 hex nibbles
// under ip6.arpa. It allocates nothing, so that other names pay only for a
// suffix comparison.
func reverseAddr(name string) (netip.Addr, bool) {
	if rest, ok := strings.CutSuffix(name, ".in-addr.arpa"); ok {
		var b [4]byte
		// Labels are taken from the right: the last one is the first byte.
		// Each but the fourth must leave a label behind; the fourth, none.
		for i := range b {
			label := rest
			if dot := strings.LastIndexByte(rest, '.'); dot >= 0 {
				label, rest = rest[dot+1:], rest[:dot]
			} else {
				rest = ""
			}
			n, ok := decimalOctet(label)
			if !ok || (i < 3) == (rest == "") {
				return netip.Addr{}, false
			}
			b[i] = n
		}
		return netip.AddrFrom4(b), true
	}
	if rest, ok := strings.CutSuffix(name, ".ip6.arpa"); ok && len(rest) == 63 {
		var b [16]byte
		for i := range 32 {
			c, ok := nibble(rest[62-2*i])
			if !ok || (i < 31 && rest[61-2*i] != '.') {
				return netip.Addr{}, false
			}
			b[i/2] |= c << (4 * (1 - i%2))
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}

// decimalOctet parses 0-255 without leading zeros.
func decimalOctet(s string) (byte, bool) {
	if len(s) == 0 || len(s) > 3 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return byte(n), n <= 255
}

func nibble(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// ptrHosts returns the hosts, in the zones, answering the client with addr.
// Only hosts the plugin answers for are named: one outside the zones is
// never served, so it does not answer with the address either, nor does a
// host whose answer for this client is another (an auto-allocated address is
// not a client's outside the mesh).
func (se *ServiceEntry) ptrHosts(tbl table.View, who *asker, addr netip.Addr) []string {
	all := tbl.PTR(addr)
	var out []string
	for i, h := range all {
		if zoneOf(h, se.Zones) == "" || !answersWith(tbl, who, h, addr) {
			if out == nil {
				out = slices.Clip(all[:i])
			}
			continue
		}
		if out != nil {
			out = append(out, h)
		}
	}
	if out == nil {
		return all
	}
	return out
}

// answersWith reports whether host (fully qualified) answers the client with
// addr. The reverse index holds the answers of clients in the mesh: others
// may get other addresses for the same host.
func answersWith(tbl table.View, who *asker, host string, addr netip.Addr) bool {
	if class, sidecar := who.class(); class == reach.Mesh && !sidecar {
		return true
	}
	h, ok := tbl.Find(trimDot(host), false)
	if !ok {
		return false
	}
	ans := h.Answer.For(who.class())
	return ans != nil && slices.ContainsFunc(table.AddressesOf(ans), func(a netip.Addr) bool { return a.Unmap() == addr })
}

// ptr is the reply at the reverse name of an address the hosts answer with:
// a PTR record to each, or NODATA for another type.
func (se *ServiceEntry) ptr(r *dns.Msg, tbl table.View, zone, qname string, hosts []string) *dns.Msg {
	if r.Question[0].Qtype != dns.TypePTR {
		return se.negative(r, tbl, zone, qname, dns.RcodeSuccess)
	}
	hdr := dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: se.TTL}
	recs := make([]dns.PTR, len(hosts))
	rrs := make([]dns.RR, len(hosts))
	for i, h := range hosts {
		recs[i] = dns.PTR{Hdr: hdr, Ptr: h}
		rrs[i] = &recs[i]
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.Answer = rrs
	return m
}

// zoneOf returns the most specific of zones that name (lower case, fully
// qualified) is in, or "". Like inClusterDomain it compares label-aligned
// suffixes in place: plugin.Zones.Matches allocates.
func zoneOf(name string, zones []string) string {
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		for _, z := range zones {
			if name[off:] == z {
				return z
			}
		}
	}
	if slices.Contains(zones, ".") {
		return "."
	}
	return ""
}
