package table

import (
	"hash/maphash"
	"maps"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/miekg/dns"
)

// A sharded map is split in two levels so that one change copies little: the
// table header (copied on every change) holds one pointer per structure, to
// its groupCount group pointers, and a change copies, in each structure it
// writes, those pointers, one group of groupSize pointers and one shard map,
// which holds a groupCount*groupSize-th of the names. A lookup makes the same
// loads however the shards are split between the two levels, so they are
// split evenly: that copies the fewest pointers per change. More shards in all
// make lookups in a large table slower (more map headers, colder in cache) and
// a table of a few thousand names bigger (each small map has a fixed size):
// the count is the most that keeps lookups as fast as with one level.
// BENCHMARKS.md has the counts measured.
const (
	groupBits  = 5
	shardBits  = 5
	groupCount = 1 << groupBits
	groupSize  = 1 << shardBits
)

// sharded is a map split by the key's hash, the caller's (the table already
// hashes every name it looks up once): the top bits pick the group, the next
// ones the shard. A nil group array, group or shard reads as empty. The group
// array, groups and shards are shared between tables and never written once
// published: a writer owns them first, once per table built. The group array
// is behind a pointer so that a change copies only the arrays of the
// structures it writes: most changes write the names and the reverse index,
// not the ancestors' counts or the wildcards.
type sharded[K comparable, V any] struct {
	groups *[groupCount]*shardGroup[K, V]
}

type shardGroup[K comparable, V any] struct {
	shards [groupSize]map[K]V
}

func groupOf(h uint64) uint64 { return h >> (64 - groupBits) }
func shardIn(h uint64) uint64 { return h >> (64 - groupBits - shardBits) & (groupSize - 1) }

// get returns the value of k, whose hash is h.
func (s *sharded[K, V]) get(h uint64, k K) (V, bool) {
	var g *shardGroup[K, V]
	if s.groups != nil {
		g = s.groups[groupOf(h)]
	}
	if g == nil {
		var zero V
		return zero, false
	}
	v, ok := g.shards[shardIn(h)][k]
	return v, ok
}

// at is get without the presence.
func (s *sharded[K, V]) at(h uint64, k K) V {
	v, _ := s.get(h, k)
	return v
}

// writable returns the shard of hash h, owned (see own) by the table s
// belongs to, made if it was nil.
func (s *sharded[K, V]) writable(h uint64, copied map[any]bool) map[K]V {
	if !copied[s] {
		groups := new([groupCount]*shardGroup[K, V])
		if s.groups != nil {
			*groups = *s.groups
		}
		s.groups = groups
		copied[s] = true
	}
	slot := &s.groups[groupOf(h)]
	if !copied[slot] {
		g := new(shardGroup[K, V])
		if *slot != nil {
			*g = **slot
		}
		*slot = g
		copied[slot] = true
	}
	m := &(*slot).shards[shardIn(h)]
	own(m, copied)
	if *m == nil { // emptied by del in this build
		*m = make(map[K]V, 1)
	}
	return *m
}

// set sets k (hash h) to v in a table being built.
func (s *sharded[K, V]) set(h uint64, k K, v V, copied map[any]bool) {
	s.writable(h, copied)[k] = v
}

// del deletes k (hash h) from a table being built; the shard it empties is
// dropped, so that names gone leave no map behind.
func (s *sharded[K, V]) del(h uint64, k K, copied map[any]bool) {
	if _, ok := s.get(h, k); !ok {
		return
	}
	m := s.writable(h, copied)
	delete(m, k)
	if len(m) == 0 {
		s.groups[groupOf(h)].shards[shardIn(h)] = nil
	}
}

// Answer is what one name resolves to for the clients that can route its
// addresses, and, through Else, for those that cannot. It is never modified
// after the table that holds it is published.
type Answer struct {
	// addrs are the IPv4 addresses, then the IPv6 ones, packed end to end
	// in one array (see A and AAAA).
	addrs []byte
	// Target, when set, is the host the name is an alias of (a CNAME): what
	// Envoy connects to for it. The answer then has no address of its own.
	Target string
	// Else answers the clients of a class below Reach; nil when nothing
	// of ours reaches them: the name is then passed on.
	Else *Answer
	// ports are the SRV ports of the host the answer is found under, for
	// every class of client (Else answers hold none): held with the
	// answer, as a map of ports by host beside the names would cost each
	// host a map slot of its own, and through a pointer, to an entry's
	// own slice (immutable, like the entry), as a slice header would put
	// the answer in a larger size class.
	ports *[]entry.Port
	// Reach is the least class of client that routes the addresses:
	// auto-allocated ones need a mesh client, declared ones a sidecar,
	// real destinations (endpoints, a NONE entry's addresses) none.
	Reach reach.Class
	// Resolved says Envoy itself resolves the name (the host of a DNS entry
	// without endpoints, or the host-name endpoint of a DNS entry): a
	// sidecar's Envoy asks from the pod's address and must get the real
	// answer, so for a pod with a sidecar the name is passed on whatever
	// its class.
	Resolved bool
	// v4 is how many bytes of addrs are IPv4 addresses. It shares a word
	// with Reach and Resolved: the table holds an answer per name, and a
	// word more puts it in a larger size class.
	v4 uint32
}

// Ports returns the answer's SRV ports; shared, not to be written.
func (a *Answer) Ports() []entry.Port {
	if a == nil || a.ports == nil {
		return nil
	}
	return *a.ports
}

// A and AAAA are the answer's addresses of each family, in order. They
// share the table's bytes, which must not be written.
func (a *Answer) A() IPv4s    { return IPv4s(a.addrs[:a.v4:a.v4]) }
func (a *Answer) AAAA() IPv6s { return IPv6s(a.addrs[a.v4:]) }

// For returns the answer for a client of class c, with or without a sidecar,
// or nil when the plugin has nothing that client can use and the name goes
// on to the next plugin.
func (a *Answer) For(c reach.Class, sidecar bool) *Answer {
	if a != nil && sidecar && a.Resolved {
		return nil
	}
	for a != nil && a.Reach > c {
		a = a.Else
	}
	return a
}

// Table is an immutable snapshot of every name the plugin answers. Exact names
// and wildcards ("*.a.com" is stored as "a.com" in wild) are kept apart so that
// a lookup never has to build a string. A new table shares every shard it did
// not change with the previous one.
//
// Names are compared label by label: keys are validated hostnames, which hold
// no escapes, and a query name's labels are found with miekg/dns's label
// functions, so an escaped dot ("a\.b") stays inside its label.
type Table struct {
	seed  maphash.Seed
	exact sharded[string, *Answer]
	wild  sharded[string, *Answer]

	// below counts, for every proper ancestor of a served owner name (an
	// exact host, or "*.a.com" for a wildcard), the served names under it.
	// A name with a count exists (RFC 8020): when nothing answers for it
	// itself it is an empty non-terminal, NODATA and never NXDOMAIN. Counts
	// rather than a set keep a change O(hosts changed): removing a name
	// decrements its ancestors and drops those that reach zero.
	below sharded[string, int32]

	// reverse maps every address an exact host answers with to those hosts:
	// the PTR answer, built with the table (reverse.go).
	reverse reverseIndex

	// tails and shortWild tell a name no view serves in one probe
	// (tails.go).
	tails     sharded[string, int32]
	shortWild int32

	// overlays are, by client namespace, what that namespace sees
	// differently with "exportto client"; nil otherwise.
	Overlays map[string]*Overlay

	// What the table's metrics report.
	Hosts             int
	Entries           int       // ServiceEntries that take part
	Published         time.Time // when the table was built
	LegacyUnallocated int       // legacy-eligible hosts left without an address
}

func NewTable(seed maphash.Seed) *Table {
	return &Table{seed: seed}
}

// hash is the hash of a name that picks its shard.
func (t *Table) hash(name string) uint64 {
	return maphash.String(t.seed, name)
}

// Hit is what serves a name: a host, or one of its service names,
// "_<port>._<proto>.<host>" or "_<proto>.<host>", which hold its SRV records.
type Hit struct {
	Answer     *Answer
	Key        string // the exact host, or the wildcard's suffix ("a.com" for "*.a.com")
	Wild       bool
	Service    bool   // the name is one of the host's service names
	Port       string // of "_<port>._<proto>.<host>", lower case; "" for "_<proto>.<host>"
	Proto      string
	HostOffset int // where the host starts in the name
}

// With returns a copy of t with the given names set (a nil answer deletes the
// name). Only the groups and shards that the
// changes touch are copied; the reverse entries of the addresses they touch
// are rebuilt.
func (t *Table) With(changes map[string]*Answer) *Table {
	next := *t
	copied := make(map[any]bool)
	rev := make(reverseChanges, len(changes))
	for host, ans := range changes {
		shards, key := &next.exact, host
		suffix, wild := strings.CutPrefix(host, "*.")
		if wild {
			shards, key = &next.wild, suffix
		}
		h := next.hash(key)
		old, had := shards.get(h, key)
		if !wild {
			rev.add(host, old, ans)
		}
		switch {
		case ans == nil && had:
			shards.del(h, key, copied)
			next.Hosts--
			next.countAncestors(host, -1, copied)
			next.countTail(host, -1, copied)
		case ans != nil:
			// Setting the answer a name already has copies nothing.
			if !had || old != ans {
				shards.set(h, key, ans, copied)
			}
			if !had {
				next.Hosts++
				next.countAncestors(host, 1, copied)
				next.countTail(host, 1, copied)
			}
		}
	}
	next.applyReverse(rev, copied)
	return &next
}

// countAncestors adds delta to the count of every proper ancestor of the
// owner name host ("*.a.com" counts for a.com and com).
func (t *Table) countAncestors(host string, delta int32, copied map[any]bool) {
	for off, end := dns.NextLabel(host, 0); !end; off, end = dns.NextLabel(host, off) {
		anc := host[off:]
		h := t.hash(anc)
		if n := t.below.at(h, anc) + delta; n > 0 {
			t.below.set(h, anc, n, copied)
		} else {
			t.below.del(h, anc, copied)
		}
	}
}

// own replaces *m, once per table built, with a copy the new table may write:
// the previous table keeps sharing the original with readers. maps.Clone
// copies the map's groups as they are, where a new map filled from the old
// one would hash every key again; the copy keeps the original's room, which
// a shard that shrank gives back only once emptied (del drops it then).
func own[M ~map[K]V, K comparable, V any](m *M, copied map[any]bool) {
	if copied[m] {
		return
	}
	*m = maps.Clone(*m)
	copied[m] = true
}

// NewAnswer returns the answer holding addrs, in their order within each
// family, and the ports *ports holds (nil: none), which must not change.
// Both families share one array: two objects per answer whatever its size,
// which keeps the garbage collector's work per name small when there are
// many names.
func NewAnswer(addrs []netip.Addr, ports *[]entry.Port) *Answer {
	v4 := 0
	for _, ip := range addrs {
		if ip.Is4() {
			v4++
		}
	}
	packed := make([]byte, v4*net.IPv4len, v4*net.IPv4len+(len(addrs)-v4)*net.IPv6len)
	next4 := 0
	for _, ip := range addrs {
		if ip.Is4() {
			b := ip.As4()
			next4 += copy(packed[next4:], b[:])
		} else {
			b := ip.As16()
			packed = append(packed, b[:]...)
		}
	}
	return &Answer{addrs: packed, v4: uint32(v4 * net.IPv4len), ports: ports}
}

// IPv4s and IPv6s are addresses of one family packed end to end: an answer
// holds every endpoint address of a headless entry, and a slice of net.IP
// would cost a slice header more per address. At's net.IP shares the
// bytes and must not be written.
type (
	IPv4s []byte
	IPv6s []byte
)

func (s IPv4s) Len() int { return len(s) / net.IPv4len }

func (s IPv4s) At(i int) net.IP {
	return net.IP(s[i*net.IPv4len : (i+1)*net.IPv4len : (i+1)*net.IPv4len])
}

func (s IPv6s) Len() int { return len(s) / net.IPv6len }

func (s IPv6s) At(i int) net.IP {
	return net.IP(s[i*net.IPv6len : (i+1)*net.IPv6len : (i+1)*net.IPv6len])
}
