package table

import (
	"hash/maphash"
	"net"
	"net/netip"
	"slices"
)

// reverseChanges gathers, per address, the hosts (fully qualified) that start
// or stop answering with it in one table change, so that each address's PTR
// set is rebuilt once however many of its hosts change.
type reverseChanges map[netip.Addr]*reverseChange

type reverseChange struct{ add, del []string }

// add records the move of host from the addresses of old to those of new.
// An address in both stays as it is.
func (rc reverseChanges) add(host string, old, new *Answer) {
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
	for _, ip := range AddressesOf(old) {
		if !containsIP(new, ip) {
			rc.at(ip).del = append(rc.at(ip).del, fqdn())
		}
	}
	for _, ip := range AddressesOf(new) {
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
func (t *Table) applyReverse(rc reverseChanges, copied map[any]bool) {
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
func (t *Table) addrHash(addr netip.Addr) uint64 {
	return maphash.Comparable(t.seed, addr)
}

// PTR returns the hosts answering with addr, sorted, or nil.
func (t *Table) PTR(addr netip.Addr) []string {
	return t.reverse.at(t.addrHash(addr), addr)
}

// AddressesOf lists the addresses of ans, both families.
func AddressesOf(ans *Answer) []net.IP {
	if ans == nil {
		return nil
	}
	return append(ans.A[:len(ans.A):len(ans.A)], ans.AAAA...)
}

func containsIP(ans *Answer, ip net.IP) bool {
	return ans != nil && (slices.ContainsFunc(ans.A, ip.Equal) || slices.ContainsFunc(ans.AAAA, ip.Equal))
}
