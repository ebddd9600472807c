package serviceentry

import (
	"net/netip"
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
		Hosts: []entry.Host{{Name: "a.internal", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}}})
	st.Upsert(other, &entry.Entry{Key: other,
		Hosts: []entry.Host{{Name: "b.internal", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.2")}}}})
	if got := lookupA(st, "a.internal"); got != "192.0.2.1" {
		t.Fatalf("a.internal: %q after an object of another kind and the same name came", got)
	}
	st.Upsert(other, nil)
	if got, gone := lookupA(st, "a.internal"), lookupA(st, "b.internal"); got != "192.0.2.1" || gone != "" {
		t.Fatalf("after the other kind's removal: a.internal %q, b.internal %q", got, gone)
	}
}
