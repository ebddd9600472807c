package serviceentry

import (
	"hash/maphash"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// shardCount splits the table so that one change copies one small map instead
// of the whole table. More shards make the table header itself (copied on
// every change) the cost; BENCHMARKS.md has the counts measured.
const shardCount = 256

// answer is what one name resolves to. Its slices are never modified after the
// table that holds it is published.
type answer struct {
	a    []net.IP // IPv4, 4-byte form
	aaaa []net.IP // IPv6, 16-byte form
}

// shard maps lower-case names (no trailing dot) to their answers.
type shard map[string]*answer

// counts maps a name to how many served names lie below it.
type counts map[string]int32

// table is an immutable snapshot of every name the plugin answers. Exact names
// and wildcards ("*.a.com" is stored as "a.com" in wild) are kept apart so that
// a lookup never has to build a string. A new table shares every shard it did
// not change with the previous one.
//
// Names are compared label by label: keys are validated hostnames, which hold
// no escapes, and a query name's labels are found with miekg/dns's label
// functions, so an escaped dot ("a\.b") stays inside its label.
type table struct {
	seed  maphash.Seed
	exact [shardCount]shard
	wild  [shardCount]shard

	// below counts, for every proper ancestor of a served owner name (an
	// exact host, or "*.a.com" for a wildcard), the served names under it.
	// A name with a count exists (RFC 8020): when nothing answers for it
	// itself it is an empty non-terminal, NODATA and never NXDOMAIN. Counts
	// rather than a set keep a change O(hosts changed): removing a name
	// decrements its ancestors and drops those that reach zero.
	below [shardCount]counts

	// ports holds the SRV ports of the hosts that have some, by host as
	// declared ("*.a.com" for a wildcard).
	ports [shardCount]map[string][]srvPort

	// reverse maps every address an exact host answers with to those hosts,
	// fully qualified, sorted: the PTR answer, built with the table.
	reverse [shardCount]map[netip.Addr][]string

	// overlays are, by client namespace, what that namespace sees
	// differently with "exportto client"; nil otherwise.
	overlays map[string]*overlay

	// What the table's metrics report.
	hosts             int
	entries           int       // ServiceEntries that take part
	published         time.Time // when the table was built
	legacyUnallocated int       // legacy-eligible hosts left without an address
}

func newTable(seed maphash.Seed) *table {
	return &table{seed: seed}
}

func (t *table) shardOf(name string) int {
	return int(maphash.String(t.seed, name) % shardCount)
}

// lookup finds the answer for a lower-case name without a trailing dot, in
// presentation format. An exact name beats any wildcard; among wildcards the
// most specific wins; a wildcard never covers its own apex.
func (t *table) lookup(name string) *answer {
	return view{table: t}.lookup(name)
}

// hit is what serves a name: a host, or one of its service names,
// "_<port>._<proto>.<host>" or "_<proto>.<host>", which hold its SRV records.
type hit struct {
	ans     *answer
	key     string // the exact host, or the wildcard's suffix ("a.com" for "*.a.com")
	wild    bool
	service bool   // the name is one of the host's service names
	port    string // of "_<port>._<proto>.<host>", lower case; "" for "_<proto>.<host>"
	proto   string
	hostOff int // where the host starts in the name
}

// find returns what serves name (same form as lookup's) in the public view.
func (t *table) find(name string, wild bool) (hit, bool) {
	return view{table: t}.find(name, wild)
}

// host finds the host that serves name: the exact one, else (with wild) the
// most specific wildcard.
func (t *table) host(name string, wild bool) (hit, bool) {
	if ans := t.exact[t.shardOf(name)][name]; ans != nil {
		return hit{ans: ans, key: name}, true
	}
	if !wild {
		return hit{}, false
	}
	for off, end := dns.NextLabel(name, 0); !end; off, end = dns.NextLabel(name, off) {
		suffix := name[off:]
		if ans := t.wild[t.shardOf(suffix)][suffix]; ans != nil {
			return hit{ans: ans, key: suffix, wild: true}, true
		}
	}
	return hit{}, false
}

// with returns a copy of t with the given names set (a nil answer deletes the
// name) and their ports (nil: none). Only the shards that the changes touch
// are copied; the reverse entries of the addresses they touch are rebuilt.
func (t *table) with(changes map[string]*answer, ports map[string][]srvPort) *table {
	next := *t
	copied := make(map[any]bool)
	rev := make(reverseChanges)
	for host, ans := range changes {
		shards, key := &next.exact, host
		suffix, wild := strings.CutPrefix(host, "*.")
		if wild {
			shards, key = &next.wild, suffix
		}
		s := &shards[next.shardOf(key)]
		own(s, copied)
		old, had := (*s)[key]
		if !wild {
			rev.add(host, old, ans)
		}
		switch {
		case ans == nil && had:
			delete(*s, key)
			next.hosts--
			next.countAncestors(host, -1, copied)
		case ans != nil:
			(*s)[key] = ans
			if !had {
				next.hosts++
				next.countAncestors(host, 1, copied)
			}
		}
	}
	for host, p := range ports {
		s := &next.ports[next.shardOf(host)]
		// An address change leaves the ports as they were: the shard is
		// then shared, not copied.
		if old, had := (*s)[host]; had == (len(p) > 0) && slices.Equal(old, p) {
			continue
		}
		own(s, copied)
		if len(p) == 0 {
			delete(*s, host)
		} else {
			(*s)[host] = p
		}
	}
	next.applyReverse(rev, copied)
	return &next
}

// countAncestors adds delta to the count of every proper ancestor of the
// owner name host ("*.a.com" counts for a.com and com).
func (t *table) countAncestors(host string, delta int32, copied map[any]bool) {
	for off, end := dns.NextLabel(host, 0); !end; off, end = dns.NextLabel(host, off) {
		anc := host[off:]
		c := &t.below[t.shardOf(anc)]
		own(c, copied)
		if n := (*c)[anc] + delta; n > 0 {
			(*c)[anc] = n
		} else {
			delete(*c, anc)
		}
	}
}

// own replaces *m, once per table built, with a copy the new table may write:
// the previous table keeps sharing the original with readers.
func own[M ~map[K]V, K comparable, V any](m *M, copied map[any]bool) {
	if copied[m] {
		return
	}
	fresh := make(M, len(*m)+1)
	maps.Copy(fresh, *m)
	*m = fresh
	copied[m] = true
}
