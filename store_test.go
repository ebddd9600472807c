package serviceentry

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
)

// TestStoreKeysCarryTheirKind: objects of two kinds with one namespace/name
// are two objects: removing one leaves the other served.
func TestStoreKeysCarryTheirKind(t *testing.T) {
	st := newStore(false)
	st.MarkSynced()
	se := entry.ServiceEntryKey("ns/a")
	other := entry.Key{Kind: entry.KindServiceEntry + 1, Name: "ns/a"}
	st.Upsert(se, &entry.Entry{Key: se,
		Hosts: []entry.Host{entry.NewHost("a.internal", netip.MustParseAddr("192.0.2.1"))}})
	st.Upsert(other, &entry.Entry{Key: other,
		Hosts: []entry.Host{entry.NewHost("b.internal", netip.MustParseAddr("192.0.2.2"))}})
	if got := lookupA(st, "a.internal"); got != "192.0.2.1" {
		t.Fatalf("a.internal: %q after an object of another kind and the same name came", got)
	}
	st.Upsert(other, nil)
	if got, gone := lookupA(st, "a.internal"), lookupA(st, "b.internal"); got != "192.0.2.1" || gone != "" {
		t.Fatalf("after the other kind's removal: a.internal %q, b.internal %q", got, gone)
	}
}

// TestHostIndex: a host's entries come back in the order they were added,
// whether one or several declare it, through every add and removal.
func TestHostIndex(t *testing.T) {
	a, b, c := &entry.Entry{}, &entry.Entry{}, &entry.Entry{}
	x := hostIndex{one: make(map[string]*entry.Entry), many: make(map[string][]*entry.Entry)}
	for i, step := range []struct {
		add  bool
		e    *entry.Entry
		want []*entry.Entry
	}{
		{true, a, []*entry.Entry{a}},
		{true, b, []*entry.Entry{a, b}},
		{true, c, []*entry.Entry{a, b, c}},
		{false, b, []*entry.Entry{a, c}},
		{false, a, []*entry.Entry{c}},
		{true, a, []*entry.Entry{c, a}},
		{false, a, []*entry.Entry{c}},
		{false, b, []*entry.Entry{c}}, // not declaring it: nothing changes
		{false, c, nil},
	} {
		if step.add {
			x.add("h", step.e)
		} else {
			x.remove("h", step.e)
		}
		if got := x.of("h"); !slices.Equal(got, step.want) {
			t.Fatalf("step %d: %d entries, want %d", i, len(got), len(step.want))
		}
	}
	if len(x.one)+len(x.many) != 0 {
		t.Errorf("the index keeps a host nothing declares: %v %v", x.one, x.many)
	}
}
