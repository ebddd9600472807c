package serviceentry

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"time"
)

// Istio's v1 auto-allocation (istiod 1.17-1.24, in memory, never written to
// the API). Every istiod computes it from the same inputs, so we can too; the
// constants and the quirks below are Istio's and must not be "fixed".
const (
	legacySlots = 256 * 254 // 65024 slots in the hash table
	legacyPrime = 65011     // largest prime below the slot count, for the second hash
)

// legacyHost is one host of one ServiceEntry as the v1 allocator sees it. host
// is exactly as written in the ServiceEntry (Istio hashes it as is); the same
// namespace/host in two entries takes two slots and shares one address, so the
// entry's name is part of the identity. name is the host as the table keys it.
type legacyHost struct {
	namespace string
	host      string
	created   time.Time // truncated to seconds, as the API server stores it
	entry     string
	name      string
}

// legacyAddrs is what the allocator gives one (namespace, host).
type legacyAddrs struct {
	v4, v6 netip.Addr
}

// compareLegacy is Istio's input order up to 1.29: creationTimestamp, then host,
// then namespace. (1.30 iterates a map; no order can reproduce that.)
// Ties (the same namespace/host in two entries created in the same second) are
// broken by entry name; they hash alike, so their order changes no address.
func compareLegacy(a, b legacyHost) int {
	return cmp.Or(a.created.Compare(b.created), cmp.Compare(a.host, b.host),
		cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.entry, b.entry))
}

// allocateLegacy reproduces istiod's v1 allocator for hosts given in input
// order. Each (namespace, host) is placed by FNV-1a of "namespace/host" into a
// 65024-slot table, collisions resolved by double hashing (note Istio's probe
// modulus, 65023, and uint32 wrap-around); then slots are numbered in order,
// skipping every number divisible by 255 that an occupied slot would get, and
// number x becomes 240.240.x/255.x%255 and 2001:2::f0f0:<x/255><x%255> in
// unpadded hex (so two numbers can share an IPv6 address, as in Istio).
//
// Where Istio would misbehave we stop safely instead: hosts beyond the 65024th
// and hosts whose probe sequence finds no free slot (Istio would loop forever:
// 65023 is not prime) are left out and returned in overflow.
func allocateLegacy(hosts []legacyHost) (map[legacyHost]legacyAddrs, []legacyHost) {
	slots := make([]int32, legacySlots) // index into hosts, plus one; 0 = empty
	var overflow []legacyHost
	placed := 0
	for i, h := range hosts {
		if placed >= legacySlots {
			overflow = append(overflow, hosts[i:]...)
			break
		}
		sum := fnv1a(h.namespace, h.host)
		slot, ok := probe(slots, sum)
		if !ok {
			overflow = append(overflow, h)
			continue
		}
		slots[slot] = int32(i + 1)
		placed++
	}

	out := make(map[legacyHost]legacyAddrs, placed)
	byKey := make(map[[2]string]legacyAddrs, placed)
	x := 0
	for _, idx := range slots {
		x++
		if idx == 0 {
			continue
		}
		if x%255 == 0 {
			x++
		}
		h := hosts[idx-1]
		key := [2]string{h.namespace, h.host}
		addrs, seen := byKey[key]
		if !seen {
			addrs = legacyAddresses(x/255, x%255)
			byKey[key] = addrs
		}
		out[h] = addrs
	}
	return out, overflow
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

func fnv1a(namespace, host string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(namespace))
	h.Write([]byte{'/'})
	h.Write([]byte(host))
	return h.Sum32()
}

// legacyAddresses formats a slot number's addresses exactly as Istio does.
func legacyAddresses(a, b int) legacyAddrs {
	v6 := fmt.Sprintf("2001:2::f0f0:%x%x", a, b)
	if a == 0 {
		v6 = fmt.Sprintf("2001:2::f0f0:%x", b)
	}
	return legacyAddrs{
		v4: netip.AddrFrom4([4]byte{240, 240, byte(a), byte(b)}),
		v6: netip.MustParseAddr(v6),
	}
}

// legacyAllocator keeps the eligible hosts of the store in Istio's input order
// and recomputes the allocation when that set changes. Adding or removing a
// host can move the addresses of others (Istio's allocation is positional), so
// reallocate reports every host whose addresses changed.
type legacyAllocator struct {
	sorted  []legacyHost
	current map[legacyHost]legacyAddrs
	changed bool
}

func newLegacyAllocator() *legacyAllocator {
	return &legacyAllocator{}
}

func (l *legacyAllocator) add(e *entry) {
	for _, h := range e.legacyHosts {
		if i, found := slices.BinarySearchFunc(l.sorted, h, compareLegacy); !found {
			l.sorted = slices.Insert(l.sorted, i, h)
			l.changed = true
		}
	}
}

func (l *legacyAllocator) remove(e *entry) {
	for _, h := range e.legacyHosts {
		if i, found := slices.BinarySearchFunc(l.sorted, h, compareLegacy); found {
			l.sorted = slices.Delete(l.sorted, i, i+1)
			l.changed = true
		}
	}
}

// reallocate recomputes the allocation if the eligible set changed and returns
// the table names whose addresses moved.
func (l *legacyAllocator) reallocate() map[string]bool {
	if !l.changed {
		return nil
	}
	l.changed = false
	next, overflow := allocateLegacy(l.sorted)
	legacyUnallocated.Set(float64(len(overflow)))
	if len(overflow) > 0 {
		log.Errorf("autoallocate legacy: %d hosts left without an address, Istio's range holds %d (first left out: %s/%s)",
			len(overflow), legacySlots, overflow[0].namespace, overflow[0].host)
	}
	moved := make(map[string]bool)
	for h, addrs := range next {
		if l.current[h] != addrs {
			moved[h.name] = true
		}
	}
	for h := range l.current {
		if _, ok := next[h]; !ok {
			moved[h.name] = true
		}
	}
	l.current = next
	return moved
}

// addresses returns what the allocator gave one host of one entry.
func (l *legacyAllocator) addresses(h legacyHost) []netip.Addr {
	addrs, ok := l.current[h]
	if !ok {
		return nil
	}
	return []netip.Addr{addrs.v4, addrs.v6}
}
