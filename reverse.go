package serviceentry

import (
	"hash/maphash"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// reverseChanges gathers, per address, the hosts (fully qualified) that start
// or stop answering with it in one table change, so that each address's PTR
// set is rebuilt once however many of its hosts change.
type reverseChanges map[netip.Addr]*reverseChange

type reverseChange struct{ add, del []string }

// add records the move of host from the addresses of old to those of new.
// An address in both stays as it is.
func (rc reverseChanges) add(host string, old, new *answer) {
	if old == new {
		return
	}
	var target string // allocated once, only if some address changes
	fqdn := func() string {
		if target == "" {
			target = host + "."
		}
		return target
	}
	for _, ip := range addressesOf(old) {
		if !containsIP(new, ip) {
			rc.at(ip).del = append(rc.at(ip).del, fqdn())
		}
	}
	for _, ip := range addressesOf(new) {
		if !containsIP(old, ip) {
			rc.at(ip).add = append(rc.at(ip).add, fqdn())
		}
	}
}

func (rc reverseChanges) at(ip net.IP) *reverseChange {
	addr, _ := netip.AddrFromSlice(ip)
	c := rc[addr]
	if c == nil {
		c = new(reverseChange)
		rc[addr] = c
	}
	return c
}

// applyReverse rebuilds the PTR set of each address rc touches: O(hosts
// changed + hosts sharing an address with them), never O(all hosts).
func (t *table) applyReverse(rc reverseChanges, copied map[any]bool) {
	for addr, c := range rc {
		h := t.addrHash(addr)
		slices.Sort(c.del)
		cur := t.reverse.at(h, addr)
		targets := make([]string, 0, len(cur)+len(c.add))
		for _, h := range cur {
			if _, gone := slices.BinarySearch(c.del, h); !gone {
				targets = append(targets, h)
			}
		}
		targets = append(targets, c.add...)
		slices.Sort(targets)
		targets = slices.Compact(targets)
		if len(targets) == 0 {
			t.reverse.del(h, addr, copied)
		} else {
			t.reverse.set(h, addr, targets, copied)
		}
	}
}

// addrHash is the hash of an address that picks its shard.
func (t *table) addrHash(addr netip.Addr) uint64 {
	return maphash.Comparable(t.seed, addr)
}

// ptr returns the hosts answering with addr, sorted, or nil.
func (t *table) ptr(addr netip.Addr) []string {
	return t.reverse.at(t.addrHash(addr), addr)
}

// addressesOf lists the addresses of ans, both families.
func addressesOf(ans *answer) []net.IP {
	if ans == nil {
		return nil
	}
	return append(ans.a[:len(ans.a):len(ans.a)], ans.aaaa...)
}

func containsIP(ans *answer, ip net.IP) bool {
	return ans != nil && (slices.ContainsFunc(ans.a, ip.Equal) || slices.ContainsFunc(ans.aaaa, ip.Equal))
}

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

// ptrHosts returns the hosts, in the zones, answering with addr. Only hosts
// the plugin answers for are named: one outside the zones is never served, so
// it does not answer with the address either.
func (se *ServiceEntry) ptrHosts(tbl view, addr netip.Addr) ([]string, int) {
	all := tbl.ptr(addr)
	n := 0
	for _, h := range all {
		if zoneOf(h, se.Zones) != "" {
			n++
		}
	}
	return all, n
}

// ptr is the reply at the reverse name of an address n of hosts (some outside
// the zones, skipped) answer with: a PTR record to each, or NODATA for another
// type.
func (se *ServiceEntry) ptr(r *dns.Msg, tbl view, zone, qname string, hosts []string, n int) *dns.Msg {
	if r.Question[0].Qtype != dns.TypePTR {
		return se.negative(r, tbl, zone, qname, dns.RcodeSuccess)
	}
	hdr := dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: se.TTL}
	recs := make([]dns.PTR, 0, n)
	rrs := make([]dns.RR, n)
	for _, h := range hosts {
		if zoneOf(h, se.Zones) != "" {
			recs = append(recs, dns.PTR{Hdr: hdr, Ptr: h})
			rrs[len(recs)-1] = &recs[len(recs)-1]
		}
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
