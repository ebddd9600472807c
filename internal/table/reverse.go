package table

import (
	"hash/maphash"
	"net/netip"
	"slices"
	"strings"
)

// reverseChanges gathers, per address, the hosts (as the table keys them,
// with no trailing dot) that start or stop answering with it in one table
// change, so that each address's PTR set is rebuilt once however many of
// its hosts change.
type reverseChanges map[netip.Addr]*reverseChange

type reverseChange struct{ add, del []string }

// add records the move of host from the addresses of old to those of new.
// An address in both stays as it is.
func (rc reverseChanges) add(host string, old, new *Answer) {
	if old == new {
		return
	}
	was, is := AddressesOf(old), AddressesOf(new)
	for _, ip := range was {
		if !slices.Contains(is, ip) {
			rc.at(ip).del = append(rc.at(ip).del, host)
		}
	}
	for _, ip := range is {
		if !slices.Contains(was, ip) {
			rc.at(ip).add = append(rc.at(ip).add, host)
		}
	}
}

func (rc reverseChanges) at(addr netip.Addr) *reverseChange {
	c := rc[addr]
	if c == nil {
		c = new(reverseChange)
		rc[addr] = c
	}
	return c
}

// reverseIndex maps each address to the hosts answering with it, as the
// table keys them (no trailing dot), sorted and joined by a space (a host
// name holds none). Every endpoint address of a headless entry is in it, so
// an address costs one map slot and nothing else: an address of one host
// (nearly all of them) holds the host's own name, the very string the table
// keys the host by, and IPv4 addresses, keyed apart by their four bytes,
// take the smallest slot. The trailing dot a PTR answer needs is added when
// one is asked for: PTR queries are few, and a copy of every host's name
// would be kept for them.
type reverseIndex struct {
	v4 sharded[[4]byte, string]
	v6 sharded[[16]byte, string]
}

func (r *reverseIndex) at(h uint64, addr netip.Addr) string {
	if addr.Is4() {
		return r.v4.at(h, addr.As4())
	}
	return r.v6.at(h, addr.As16())
}

// set sets the hosts of addr (hash h), or deletes addr for none.
func (r *reverseIndex) set(h uint64, addr netip.Addr, hosts string, copied map[any]bool) {
	switch {
	case addr.Is4() && hosts == "":
		r.v4.del(h, addr.As4(), copied)
	case addr.Is4():
		r.v4.set(h, addr.As4(), hosts, copied)
	case hosts == "":
		r.v6.del(h, addr.As16(), copied)
	default:
		r.v6.set(h, addr.As16(), hosts, copied)
	}
}

// applyReverse rebuilds the PTR set of each address rc touches: O(hosts
// changed + hosts sharing an address with them), never O(all hosts).
func (t *Table) applyReverse(rc reverseChanges, copied map[any]bool) {
	for addr, c := range rc {
		h := t.addrHash(addr)
		slices.Sort(c.del)
		cur := t.reverse.at(h, addr)
		var targets []string
		for host := range strings.FieldsSeq(cur) {
			if _, gone := slices.BinarySearch(c.del, host); !gone {
				targets = append(targets, host)
			}
		}
		targets = append(targets, c.add...)
		slices.Sort(targets)
		// Join allocates nothing for one host: its name is kept as is.
		t.reverse.set(h, addr, strings.Join(slices.Compact(targets), " "), copied)
	}
}

// addrHash is the hash of an address that picks its shard.
func (t *Table) addrHash(addr netip.Addr) uint64 {
	return maphash.Comparable(t.seed, addr)
}

// PTR returns the hosts answering with addr, fully qualified and sorted, or
// nil.
func (t *Table) PTR(addr netip.Addr) []string {
	hosts := t.reverse.at(t.addrHash(addr), addr)
	if hosts == "" {
		return nil
	}
	var out []string
	for host := range strings.FieldsSeq(hosts) {
		out = append(out, host+".")
	}
	// Sorted again: a dot sorts after a hyphen, so "a.b." follows "a.b-c."
	// where "a.b" came first.
	slices.Sort(out)
	return out
}

// AddressesOf lists the addresses of ans, both families: the IPv4 ones in
// their 4-byte form.
func AddressesOf(ans *Answer) []netip.Addr {
	if ans == nil {
		return nil
	}
	v4, v6 := ans.A(), ans.AAAA()
	out := make([]netip.Addr, 0, v4.Len()+v6.Len())
	for i := range v4.Len() {
		out = append(out, netip.AddrFrom4([4]byte(v4.At(i))))
	}
	for i := range v6.Len() {
		out = append(out, netip.AddrFrom16([16]byte(v6.At(i))))
	}
	return out
}
