package serviceentry

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
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

// TestReplaceEntries: a relist of some namespaces replaces their entries
// and removes those it no longer holds, leaves every other namespace's
// alone, and says which it removed; one of every namespace ("") replaces
// them all.
func TestReplaceEntries(t *testing.T) {
	st := newStore(false)
	st.MarkSynced()
	key := func(name string) entry.Key { return entry.ServiceEntryKey(name) }
	of := func(names ...string) map[entry.Key]*entry.Entry {
		all := make(map[entry.Key]*entry.Entry)
		for i, name := range names {
			all[key(name)] = &entry.Entry{Key: key(name), Hosts: []entry.Host{
				entry.NewHost(strings.ReplaceAll(name, "/", ".")+".internal", netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}))}}
		}
		return all
	}
	served := func() []string {
		var hosts []string
		for _, name := range []string{"a/1", "a/2", "b/1", "c/1"} {
			if lookupA(st, strings.ReplaceAll(name, "/", ".")+".internal") != "" {
				hosts = append(hosts, name)
			}
		}
		return hosts
	}
	for _, step := range []struct {
		name       string
		namespaces []string
		all        map[entry.Key]*entry.Entry
		gone       []string
		served     []string
	}{
		{"a read", []string{"a"}, of("a/1", "a/2"), nil, []string{"a/1", "a/2"}},
		{"b read", []string{"b"}, of("b/1"), nil, []string{"a/1", "a/2", "b/1"}},
		{"a relisted without a/2", []string{"a"}, of("a/1"), []string{"a/2"}, []string{"a/1", "b/1"}},
		{"c, holding nothing, relisted", []string{"c"}, of("c/1"), nil, []string{"a/1", "b/1", "c/1"}},
		{"a and b relisted empty", []string{"a", "b"}, nil, []string{"a/1", "b/1"}, []string{"c/1"}},
		{"every namespace relisted", []string{""}, of("a/2"), []string{"c/1"}, []string{"a/2"}},
	} {
		var gone []string
		for _, k := range st.ReplaceEntries(step.namespaces, step.all) {
			gone = append(gone, k.Name)
		}
		slices.Sort(gone)
		if !slices.Equal(gone, step.gone) {
			t.Errorf("%s: removed %v, want %v", step.name, gone, step.gone)
		}
		if got := served(); !slices.Equal(got, step.served) {
			t.Errorf("%s: serves %v, want %v", step.name, got, step.served)
		}
	}
	if want := map[string]int{"a": 1}; !maps.Equal(st.held, want) {
		t.Errorf("entries counted by namespace: %v, want %v", st.held, want)
	}
}
