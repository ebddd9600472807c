package serviceentry

import (
	"hash/maphash"
	"maps"
	"net"
	"strings"
	"time"
)

// shardCount splits the table so that one change copies one small map instead
// of the whole table: at 100,000 hosts a shard holds about 400 names. More
// shards make the table header itself (copied on every change) the cost:
// measured per update at 10k/100k hosts, 256 shards 14/55 µs, 1024 30/45 µs,
// 4096 108/150 µs.
const shardCount = 256

// answer is what one name resolves to. Its slices are never modified after the
// table that holds it is published.
type answer struct {
	a    []net.IP // IPv4, 4-byte form
	aaaa []net.IP // IPv6, 16-byte form
}

// shard maps lower-case names (no trailing dot) to their answers.
type shard map[string]*answer

// table is an immutable snapshot of every name the plugin answers. Exact names
// and wildcards ("*.a.com" is stored as "a.com" in wild) are kept apart so that
// a lookup never has to build a string. A new table shares every shard it did
// not change with the previous one.
type table struct {
	seed  maphash.Seed
	exact [shardCount]shard
	wild  [shardCount]shard

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

// lookup finds the answer for a lower-case name without a trailing dot. An
// exact name beats any wildcard; among wildcards the most specific wins; a
// wildcard never covers its own apex.
func (t *table) lookup(name string) *answer {
	if ans := t.exact[t.shardOf(name)][name]; ans != nil {
		return ans
	}
	for i := strings.IndexByte(name, '.'); i >= 0; {
		suffix := name[i+1:]
		if ans := t.wild[t.shardOf(suffix)][suffix]; ans != nil {
			return ans
		}
		next := strings.IndexByte(suffix, '.')
		if next < 0 {
			break
		}
		i += next + 1
	}
	return nil
}

// with returns a copy of t with the given names set (a nil answer deletes the
// name). Only the shards that the changes touch are copied.
func (t *table) with(changes map[string]*answer) *table {
	next := *t
	copied := make(map[*shard]bool)
	for host, ans := range changes {
		shards, key := &next.exact, host
		if suffix, ok := strings.CutPrefix(host, "*."); ok {
			shards, key = &next.wild, suffix
		}
		i := next.shardOf(key)
		s := &shards[i]
		if !copied[s] {
			fresh := make(shard, len(*s)+1)
			maps.Copy(fresh, *s)
			*s = fresh
			copied[s] = true
		}
		_, had := (*s)[key]
		switch {
		case ans == nil && had:
			delete(*s, key)
			next.hosts--
		case ans != nil:
			(*s)[key] = ans
			if !had {
				next.hosts++
			}
		}
	}
	return &next
}
