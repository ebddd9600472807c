package serviceentry

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
)

// Istio's v1 auto-allocation (istiod 1.17-1.24, in memory, never written to
// the API). Every istiod computes it from the same inputs, so we can too; the
// constants and the quirks below are Istio's and must not be "fixed".
const (
	legacySlots = 256 * 254 // 65024 slots in the hash table
	legacyPrime = 65011     // largest prime below the slot count, for the second hash
)

// legacyAddrs is what the allocator gives one (namespace, host).
type legacyAddrs struct {
	v4, v6 netip.Addr
}

// compareLegacy is Istio's input order up to 1.29: creationTimestamp, then host,
// then namespace. (1.30 iterates a map; no order can reproduce that.)
// Ties (the same namespace/host in two entries created in the same second) are
// broken by entry name; they hash alike, so their order changes no address.
func compareLegacy(a, b *entry.LegacyHost) int {
	return cmp.Or(cmp.Compare(a.Created, b.Created), cmp.Compare(a.Host, b.Host),
		cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Entry, b.Entry))
}

// allocateLegacy reproduces istiod's v1 allocator for hosts given in input
// order. Each (namespace, host) is placed by FNV-1a of "namespace/host" into a
// 65024-slot table, collisions resolved by double hashing (note Istio's probe
// modulus, 65023, and uint32 wrap-around); then slots are numbered in order,
// skipping every number divisible by 255 that an occupied slot would get, and
// number x becomes 240.240.x/255.x%255 and 2001:2::f0f0:<x/255><x%255> in
// unpadded hex (so two numbers can share an IPv6 address, as in Istio).
//
// The result is parallel to hosts; a zero legacyAddrs means no address. Where
// Istio would misbehave we stop safely instead: hosts beyond the 65024th and
// hosts whose probe sequence finds no free slot (Istio would loop forever:
// 65023 is not prime) get none and are counted in overflow.
func allocateLegacy(hosts []*entry.LegacyHost) (addrs []legacyAddrs, overflow int) {
	slots := make([]int32, legacySlots) // index into hosts, plus one; 0 = empty
	sums := make([]uint32, len(hosts))
	placed := 0
	for i, h := range hosts {
		if placed >= legacySlots {
			overflow += len(hosts) - i
			break
		}
		sums[i] = fnv1a(h.Namespace, h.Host)
		slot, ok := probe(slots, sums[i])
		if !ok {
			overflow++
			continue
		}
		slots[slot] = int32(i + 1)
		placed++
	}

	addrs = make([]legacyAddrs, len(hosts))
	// The first host of each key to be numbered gives its address to every
	// other host of the same key. Keys are found by hash; a key whose hash an
	// other key took first (32-bit collisions do happen at this size) falls
	// back to a map by name.
	firstOfHash := make(map[uint32]int, placed)
	var collided map[[2]string]int
	x := 0
	for _, idx := range slots {
		x++
		if idx == 0 {
			continue
		}
		if x%255 == 0 {
			x++
		}
		i := int(idx - 1)
		h := hosts[i]
		j, seen := firstOfHash[sums[i]]
		if seen && (hosts[j].Namespace != h.Namespace || hosts[j].Host != h.Host) {
			if collided == nil {
				collided = make(map[[2]string]int)
			}
			key := [2]string{h.Namespace, h.Host}
			if j, seen = collided[key]; !seen {
				collided[key] = i
			}
		}
		if seen {
			addrs[i] = addrs[j]
			continue
		}
		if _, taken := firstOfHash[sums[i]]; !taken {
			firstOfHash[sums[i]] = i
		}
		addrs[i] = legacyAddresses(x/255, x%255)
	}
	return addrs, overflow
}

// probe finds the slot for a hash: its home slot, else Istio's double-hash
// sequence. It gives up after visiting as many positions as the sequence has.
func probe(slots []int32, sum uint32) (int, bool) {
	home := sum % legacySlots
	if slots[home] == 0 {
		return int(home), true
	}
	step := uint32(legacyPrime) - sum%legacyPrime
	for i := uint32(1); i < legacySlots; i++ {
		next := (sum + i*step) % (legacySlots - 1)
		if slots[next] == 0 {
			return int(next), true
		}
	}
	return 0, false
}

// fnv1a is FNV-1a (32 bit) of namespace + "/" + host, without building the key.
func fnv1a(namespace, host string) uint32 {
	const offset, prime = 2166136261, 16777619
	h := uint32(offset)
	for i := 0; i < len(namespace); i++ {
		h = (h ^ uint32(namespace[i])) * prime
	}
	h = (h ^ '/') * prime
	for i := 0; i < len(host); i++ {
		h = (h ^ uint32(host[i])) * prime
	}
	return h
}

// legacyAddresses gives a slot number's addresses exactly as Istio writes them.
// Istio prints the IPv6 group as fmt "%x%x" of a and b (just "%x" of b when a
// is 0): the hex digits of a followed by those of b, unpadded. The group's
// value is therefore a shifted left by b's digit count, plus b.
func legacyAddresses(a, b int) legacyAddrs {
	group := b
	if a != 0 {
		digits := 1
		for v := b >> 4; v > 0; v >>= 4 {
			digits++
		}
		group = a<<(4*digits) | b
	}
	return legacyAddrs{
		v4: netip.AddrFrom4([4]byte{240, 240, byte(a), byte(b)}),
		v6: netip.AddrFrom16([16]byte{0x20, 0x01, 0, 0x02, 12: 0xf0, 13: 0xf0, 14: byte(group >> 8), 15: byte(group)}),
	}
}

// sortBatch is the number of pending additions above which the allocator
// re-sorts everything instead of inserting one by one (an insertion moves the
// tail of the slice; a first read of 100,000 entries must not be quadratic).
const sortBatch = 64

// legacyAllocator keeps the eligible hosts of the store in Istio's input order
// and recomputes the allocation when that set changes. Adding or removing a
// host can move the addresses of others (Istio's allocation is positional), so
// reallocate reports every host whose addresses changed. Changes are batched
// until reallocate, which the store calls when a recomputation is due.
type legacyAllocator struct {
	sorted []*entry.LegacyHost
	addrs  []legacyAddrs // parallel to sorted
	// pending is the net change per host since the last reallocation: +1
	// added, -1 removed, 0 (removed and re-added, or the reverse) nothing.
	pending map[entry.LegacyHost]int
	// unallocated counts the eligible hosts the last reallocation left
	// without an address (Istio's range is full).
	unallocated int
}

func newLegacyAllocator() *legacyAllocator {
	return &legacyAllocator{pending: make(map[entry.LegacyHost]int)}
}

// add and remove count hosts by value: an update of an entry that changes
// nothing the allocator reads (its labels, its status) nets to no change and
// costs no recomputation.
func (l *legacyAllocator) add(e *entry.Entry) {
	for _, h := range e.LegacyHosts() {
		l.pending[h]++
	}
}

func (l *legacyAllocator) remove(e *entry.Entry) {
	for _, h := range e.LegacyHosts() {
		l.pending[h]--
	}
}

// changed reports whether the eligible set differs from the last allocation's.
func (l *legacyAllocator) changed() bool {
	for _, delta := range l.pending {
		if delta != 0 {
			return true
		}
	}
	return false
}

// reallocate applies the pending changes, recomputes the allocation if there
// were any, and returns the table names whose addresses moved.
func (l *legacyAllocator) reallocate() map[string]bool {
	var added []*entry.LegacyHost
	removed := make(map[entry.LegacyHost]bool)
	for h, delta := range l.pending {
		switch {
		case delta > 0:
			added = append(added, &h)
		case delta < 0:
			removed[h] = true
		}
	}
	l.pending = make(map[entry.LegacyHost]int) // not clear: see store.publishLocked
	if len(added) == 0 && len(removed) == 0 {
		return nil
	}
	oldSorted, oldAddrs := l.sorted, l.addrs
	next := make([]*entry.LegacyHost, 0, len(l.sorted)+len(added))
	for _, h := range l.sorted {
		if !removed[*h] {
			next = append(next, h)
		}
	}
	if len(added) > sortBatch {
		next = append(next, added...)
		slices.SortFunc(next, compareLegacy)
	} else {
		for _, h := range added {
			i, _ := slices.BinarySearchFunc(next, h, compareLegacy)
			next = slices.Insert(next, i, h)
		}
	}

	addrs, overflow := allocateLegacy(next)
	l.unallocated = overflow
	if overflow > 0 {
		log.Errorf("autoallocate legacy: %d hosts left without an address: Istio's range holds %d", overflow, legacySlots)
	}
	l.sorted, l.addrs = next, addrs
	return movedHosts(oldSorted, oldAddrs, next, addrs)
}

// movedHosts walks two allocations in their common order and names every host
// whose addresses differ, including hosts only one of them has.
func movedHosts(oldSorted []*entry.LegacyHost, oldAddrs []legacyAddrs, newSorted []*entry.LegacyHost, newAddrs []legacyAddrs) map[string]bool {
	moved := make(map[string]bool)
	i, j := 0, 0
	for i < len(oldSorted) || j < len(newSorted) {
		var c int
		switch {
		case i == len(oldSorted):
			c = 1
		case j == len(newSorted):
			c = -1
		default:
			c = compareLegacy(oldSorted[i], newSorted[j])
		}
		switch {
		case c < 0:
			moved[oldSorted[i].Name] = true
			i++
		case c > 0:
			moved[newSorted[j].Name] = true
			j++
		default:
			if oldAddrs[i] != newAddrs[j] {
				moved[newSorted[j].Name] = true
			}
			i++
			j++
		}
	}
	return moved
}

// addresses returns what the allocator gave one host of one entry.
func (l *legacyAllocator) addresses(h *entry.LegacyHost) []netip.Addr {
	i, found := slices.BinarySearchFunc(l.sorted, h, compareLegacy)
	if !found || !l.addrs[i].v4.IsValid() {
		return nil
	}
	if !h.V6 {
		return []netip.Addr{l.addrs[i].v4}
	}
	return []netip.Addr{l.addrs[i].v4, l.addrs[i].v6}
}
