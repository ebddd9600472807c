package entry

import (
	"iter"
	"net"
	"net/netip"
)

// packedAddrs is a list of addresses held in one string, each as its length
// (4 or 16) then its bytes: hosts and workloads keep their addresses for as
// long as they exist, and a slice of netip.Addr costs its header and 24
// bytes an address where an IPv4 address packed takes 5. The length keeps an
// IPv4 address and its IPv4-mapped IPv6 form apart, as spec.addresses does.
type packedAddrs string

func packAddrs(addrs []netip.Addr) packedAddrs {
	if len(addrs) == 0 {
		return ""
	}
	b := make([]byte, 0, (1+net.IPv6len)*len(addrs))
	for _, ip := range addrs {
		b = append(b, byte(ip.BitLen()/8))
		b = append(b, ip.AsSlice()...)
	}
	return packedAddrs(b)
}

// all yields the addresses in order.
func (p packedAddrs) all() iter.Seq[netip.Addr] {
	return func(yield func(netip.Addr) bool) {
		for s := p; len(s) > 0; {
			var ip netip.Addr
			n := int(s[0])
			if n == net.IPv4len {
				ip = netip.AddrFrom4([4]byte([]byte(s[1:5])))
			} else {
				ip = netip.AddrFrom16([16]byte([]byte(s[1:17])))
			}
			if !yield(ip) {
				return
			}
			s = s[1+n:]
		}
	}
}

// len is the number of addresses.
func (p packedAddrs) len() int {
	n := 0
	for s := p; len(s) > 0; s = s[1+int(s[0]):] {
		n++
	}
	return n
}
