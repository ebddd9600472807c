package table

import (
	"fmt"
	"hash/maphash"
	"iter"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// all yields every key and value of a sharded map, in no order, for tests
// that list a table.
func (s *sharded[K, V]) all() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		if s.groups == nil {
			return
		}
		for _, g := range s.groups {
			if g == nil {
				continue
			}
			for _, m := range g.shards {
				for k, v := range m {
					if !yield(k, v) {
						return
					}
				}
			}
		}
	}
}

// hostChange is one host's answer, as a store hands it to With.
type hostChange struct {
	host  string
	addrs []netip.Addr
}

// churnAgainstFresh sets and removes random hosts of choices ops times on one
// table, change by change as a store publishes them, and after each change
// hands check that table and one built from scratch out of the hosts present.
// It returns the last table and the hosts left in it.
func churnAgainstFresh(t *testing.T, choices []hostChange, seed uint64, ops int, check func(op int, got, fresh *Table)) (*Table, map[string]bool) {
	t.Helper()
	seed1 := maphash.MakeSeed()
	tbl := NewTable(seed1)
	r := rand.New(rand.NewPCG(seed, seed+1))
	present := make(map[string]*Answer)
	for op := range ops {
		c := choices[r.IntN(len(choices))]
		var ans *Answer
		if present[c.host] == nil || r.IntN(2) == 0 {
			ans = NewAnswer(c.addrs, nil)
		}
		tbl = tbl.With(map[string]*Answer{c.host: ans})
		if ans == nil {
			delete(present, c.host)
		} else {
			present[c.host] = ans
		}
		fresh := NewTable(maphash.MakeSeed()).With(maps.Clone(present))
		check(op, tbl, fresh)
	}
	left := make(map[string]bool)
	for host := range present {
		left[host] = true
	}
	return tbl, left
}

// TestReverseFollowsChanges: the reverse entries kept change by change always
// equal those of a table built fresh, and none outlives its last host.
func TestReverseFollowsChanges(t *testing.T) {
	var choices []hostChange
	for i := range 40 {
		addrs := []netip.Addr{netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 7)}), netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i%5))}
		choices = append(choices,
			hostChange{fmt.Sprintf("svc-%d.internal", i%13), addrs[:1+i%2]},
			hostChange{fmt.Sprintf("*.w-%d.internal", i%3), addrs})
	}
	// An IPv4 address and its IPv4-mapped IPv6 form (spec.addresses keeps
	// it) are two addresses, with two PTR names.
	v4 := netip.MustParseAddr("192.0.2.9")
	choices = append(choices, hostChange{"mapped.internal", []netip.Addr{v4}},
		hostChange{"mapped.internal", []netip.Addr{netip.AddrFrom16(v4.As16())}})
	tbl, left := churnAgainstFresh(t, choices, 3, 600, func(op int, got, fresh *Table) {
		if got, want := reverseOf(got), reverseOf(fresh); !maps.Equal(got, want) {
			t.Fatalf("after change %d: reverse %v, want %v", op, got, want)
		}
	})
	gone := make(map[string]*Answer)
	for host := range left {
		gone[host] = nil
	}
	if got := reverseOf(tbl.With(gone)); len(got) != 0 {
		t.Fatalf("reverse entries left with no hosts: %v", got)
	}
}

// TestPTRNames: PTR gives the hosts of an address fully qualified and in
// the order of their qualified names ("a.b-c." before "a.b."), and an
// address of one host holds that host's name itself, not a copy of it.
func TestPTRNames(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.1")
	ans := NewAnswer([]netip.Addr{ip}, nil)
	tbl := NewTable(maphash.MakeSeed()).With(map[string]*Answer{"a.b": ans, "a.b-c": ans, "z.example": ans})
	if got, want := tbl.PTR(ip), []string{"a.b-c.", "a.b.", "z.example."}; !slices.Equal(got, want) {
		t.Errorf("PTR %v, want %v", got, want)
	}
	host := strings.Clone("svc.example")
	other := netip.MustParseAddr("192.0.2.2")
	tbl = tbl.With(map[string]*Answer{host: NewAnswer([]netip.Addr{other}, nil)})
	if got := tbl.PTR(other); !slices.Equal(got, []string{"svc.example."}) {
		t.Errorf("PTR %v, want [svc.example.]", got)
	}
	if held := tbl.reverse.at(tbl.addrHash(other), other); unsafe.StringData(held) != unsafe.StringData(host) {
		t.Error("the PTR set of an address of one host is a copy of the host's name")
	}
}

func reverseOf(t *Table) map[netip.Addr]string {
	out := make(map[netip.Addr]string)
	for a, hosts := range t.reverse.v4.all() {
		out[netip.AddrFrom4(a)] = hosts
	}
	for a, hosts := range t.reverse.v6.all() {
		out[netip.AddrFrom16(a)] = hosts
	}
	return out
}

// TestEmptyNonTerminalsFollowChanges: the counts of names below each ancestor,
// kept up to date change by change, always equal those of a table built fresh
// from the hosts present, and no count outlives the last name below it.
func TestEmptyNonTerminalsFollowChanges(t *testing.T) {
	var choices []hostChange
	for i := range 40 {
		choices = append(choices,
			hostChange{fmt.Sprintf("svc-%d.ns-%d.ent.internal", i, i%3), []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
			hostChange{fmt.Sprintf("*.w-%d.ns-%d.ent.internal", i%5, i%3), []netip.Addr{netip.MustParseAddr("192.0.2.2")}})
		if i%4 == 0 { // a name that is served and also has names below it
			choices = append(choices, hostChange{fmt.Sprintf("ns-%d.ent.internal", i%3), []netip.Addr{netip.MustParseAddr("192.0.2.3")}})
		}
	}
	tbl, left := churnAgainstFresh(t, choices, 1, 600, func(op int, got, fresh *Table) {
		if got, want := belowCounts(got), belowCounts(fresh); !maps.Equal(got, want) {
			t.Fatalf("after change %d: counts %v, want %v", op, got, want)
		}
	})
	gone := make(map[string]*Answer)
	for host := range left {
		gone[host] = nil
	}
	if got := belowCounts(tbl.With(gone)); len(got) != 0 {
		t.Fatalf("counts left with no names: %v", got)
	}
}

func belowCounts(t *Table) map[string]int32 {
	out := make(map[string]int32)
	maps.Insert(out, t.below.all())
	return out
}

// TestAddressChangeCopiesWhatItWrites: a change of a host's addresses copies
// the group arrays of the names and the reverse index, which it writes, and
// no other: the ancestors' counts, the wildcards and the tails are shared.
func TestAddressChangeCopiesWhatItWrites(t *testing.T) {
	before := NewTable(maphash.MakeSeed()).With(
		map[string]*Answer{"a.internal": NewAnswer([]netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil)})
	after := before.With(
		map[string]*Answer{"a.internal": NewAnswer([]netip.Addr{netip.MustParseAddr("192.0.2.2")}, nil)})
	if after.below.groups != before.below.groups || after.wild.groups != before.wild.groups || after.tails.groups != before.tails.groups {
		t.Error("an address change copied the group array of a structure it does not write")
	}
	if after.exact.groups == before.exact.groups || after.reverse.v4.groups == before.reverse.v4.groups {
		t.Error("an address change wrote a group array the table before it still reads")
	}
}
