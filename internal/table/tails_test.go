package table

import (
	"fmt"
	"hash/maphash"
	"maps"
	"net/netip"
	"testing"
)

// TestTailsFollowChanges: the tail counts kept change by change always equal
// those of a table built fresh from the hosts present, one-label owners
// included, and none outlives the last host with that tail.
func TestTailsFollowChanges(t *testing.T) {
	ip := []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	var choices []hostChange
	for i := range 30 {
		choices = append(choices,
			hostChange{fmt.Sprintf("svc-%d.ns-%d.internal", i, i%4), ip},
			hostChange{fmt.Sprintf("*.w-%d.internal", i%5), ip},
			hostChange{fmt.Sprintf("api-%d.example", i%6), ip})
	}
	choices = append(choices, hostChange{"*.internal", ip}, hostChange{"*.example", ip}, hostChange{"localhost", ip})
	tbl, left := churnAgainstFresh(t, choices, 7, 800, func(op int, got, fresh *Table) {
		if g, w := tailCounts(got), tailCounts(fresh); !maps.Equal(g, w) || got.shortWild != fresh.shortWild {
			t.Fatalf("after change %d: tails %v (%d one-label wildcards), want %v (%d)", op, g, got.shortWild, w, fresh.shortWild)
		}
	})
	gone := make(map[string]*Answer)
	for host := range left {
		gone[host] = nil
	}
	if empty := tbl.With(gone); len(tailCounts(empty)) != 0 || empty.shortWild != 0 {
		t.Fatalf("tails left with no hosts: %v, %d one-label wildcards", tailCounts(empty), empty.shortWild)
	}
}

func tailCounts(t *Table) map[string]int32 {
	out := make(map[string]int32)
	maps.Insert(out, t.tails.all())
	return out
}

// TestMayServe: MayServe is never false for a name that some view finds,
// through the public table or an overlay, and it is false for the names of
// a cluster that nothing of the table is near.
func TestMayServe(t *testing.T) {
	ans := func(ip string) *Answer { return NewAnswer([]netip.Addr{netip.MustParseAddr(ip)}, nil) }
	tbl := NewTable(maphash.MakeSeed()).With(map[string]*Answer{
		"api.example.com":    ans("192.0.2.1"),
		"*.wild.example.org": ans("192.0.2.2"),
		"*.svc.internal":     ans("192.0.2.3"),
		"short.io":           ans("192.0.2.4"),
		"localhost":          ans("192.0.2.5"),
		"hidden.example.net": ans("192.0.2.6"), // public, hidden from team-b
	})
	private := NewOverlay(map[string]*Answer{
		"private.team.example": ans("192.0.2.7"),
		"*.private.corp":       ans("192.0.2.8"),
	}, tbl)
	hiding := NewOverlay(map[string]*Answer{"hidden.example.net": nil}, tbl)
	tbl.Overlays = map[string]*Overlay{}
	tbl.SetOverlays(map[string]*Overlay{"team-a": private, "team-b": hiding}, []string{"team-a", "team-b"})

	served := []string{
		"api.example.com", "a.wild.example.org", "a.b.wild.example.org", "x.svc.internal", "short.io", "localhost",
		"hidden.example.net", "private.team.example", "a.private.corp", `a\.b.wild.example.org`,
		"_https._tcp.api.example.com", "_tcp.short.io", "_http._tcp.localhost",
	}
	notOurs := []string{
		"web.team-42.svc.cluster.local", "api.github.com", "api.github.com.team-42", "api.github.com.team-42.svc",
		"wild.example.org.cluster.local", "www.other.com", "other.example.net.x", "web",
	}
	views := []View{tbl.ViewFor(""), tbl.ViewFor("team-a"), tbl.ViewFor("team-b")}
	for _, name := range served {
		found := false
		for _, v := range views {
			_, ok := v.Find(name, true)
			found = found || ok
		}
		if !found {
			t.Fatalf("%s: no view serves it, the test expects one", name)
		}
		if !tbl.MayServe(name) {
			t.Errorf("MayServe(%q) = false for a served name", name)
		}
	}
	for _, name := range notOurs {
		for _, v := range views {
			if _, ok := v.Find(name, true); ok {
				t.Fatalf("%s: served, the test expects it not to be", name)
			}
		}
		if tbl.MayServe(name) {
			t.Errorf("MayServe(%q) = true for a name nothing is near", name)
		}
	}

	// Every name of up to four labels drawn from the table's own labels:
	// one that a view finds is never told apart.
	pool := []string{"a", "api", "wild", "example", "org", "com", "net", "svc", "internal", "private", "corp", "team",
		"io", "short", "localhost", "hidden", "_tcp", "_https"}
	var walk func(name string, depth int)
	walk = func(name string, depth int) {
		for _, v := range views {
			if _, ok := v.Find(name, true); ok && !tbl.MayServe(name) {
				t.Fatalf("MayServe(%q) = false, but a view serves it", name)
			}
		}
		if depth < 4 {
			for _, l := range pool {
				walk(l+"."+name, depth+1)
			}
		}
	}
	for _, l := range pool {
		walk(l, 1)
	}

	// A one-label wildcard makes its top-level label a tail of its own.
	withCom := tbl.With(map[string]*Answer{"*.com": ans("192.0.2.9")})
	if !withCom.MayServe("api.github.com") {
		t.Error("MayServe(api.github.com) = false with *.com served")
	}
	if withCom.MayServe("web.team-42.svc.cluster.local") {
		t.Error("MayServe(web.team-42.svc.cluster.local) = true with only *.com added")
	}

	// An overlay replaced drops the tails only it counted.
	tbl.SetOverlays(map[string]*Overlay{"team-b": hiding}, []string{"team-a"})
	if tbl.MayServe("private.team.example") || tbl.MayServe("a.private.corp") {
		t.Error("MayServe still true for the hosts of an overlay removed")
	}
	if !tbl.MayServe("hidden.example.net") {
		t.Error("MayServe(hidden.example.net) = false: public, though hidden from team-b")
	}
	// The tables built before share the tails they did not change, and keep
	// them as they were.
	if !withCom.MayServe("private.team.example") {
		t.Error("a table built before the overlay was removed lost its tails")
	}
}
