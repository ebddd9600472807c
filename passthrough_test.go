package serviceentry

import (
	"context"
	"net"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
)

// TestPassThroughKeepsPrivateHosts: in kube-system's layout (zone ".",
// fallthrough, searchpath) with "exportto client", names are told apart
// before the client is known; a host only one namespace sees is still
// answered to that namespace's pods, by name and by search-path expansion,
// and passed on for the others.
func TestPassThroughKeepsPrivateHosts(t *testing.T) {
	st := storeFrom(t, entry.Options{ExportTo: entry.ExportClient, AutoAllocate: entry.AutoAllocateOff}, exportToEntries)
	st.clients = clientsOf(t, map[string]string{clientB: "b", clientC: "c"})
	var asked int
	se := (&ServiceEntry{Zones: []string{"."}, Fall: fall.Root, TTL: 30, SearchDomains: []string{"cluster.local."},
		Next: fakeKubernetes(&asked, "cluster.local.")}).attach(st)
	for _, c := range []struct {
		name, client, want string
	}{
		{"dot.internal.", clientB, "NOERROR 192.0.2.2"},
		{"dot.internal.", clientC, passedOn},
		{"dot.internal.b.svc.cluster.local.", clientB, "NOERROR 192.0.2.2 dot.internal."},
		{"dot.internal.b.svc.cluster.local.", clientC, "NXDOMAIN"},
		{"a.w.internal.svc.cluster.local.", clientB, "NOERROR 192.0.2.50 a.w.internal."},
		{"a.w.internal.", clientC, passedOn},
		{"named.internal.cluster.local.", clientC, "NOERROR 192.0.2.4 named.internal."},
		{"public.internal.c.svc.cluster.local.", clientC, "NOERROR 192.0.2.1 public.internal."},
		{"web.b.svc.cluster.local.", clientB, "NXDOMAIN"},
		{"api.github.com.b.svc.cluster.local.", clientB, "NXDOMAIN"},
		{"api.github.com.", clientB, passedOn},
	} {
		if got := askFrom(t, se, c.client, c.name, dns.TypeA); got != c.want {
			t.Errorf("%s from %s: got %q, want %q", c.name, c.client, got, c.want)
		}
	}
}

// TestPassThroughAllocatesNothing: a name that is not ours, or a search-path
// expansion of one, is handed on with no allocation of the plugin's: the one
// left is the writer CoreDNS's plugin.NextOrFailure wraps the reply in, so
// that metrics name the plugin that answers.
func TestPassThroughAllocatesNothing(t *testing.T) {
	st := storeFrom(t, entry.Options{ExportTo: entry.ExportClient, AutoAllocate: entry.AutoAllocateOff}, exportToEntries)
	st.clients = clientsOf(t, map[string]string{clientB: "b", clientC: "c"})
	se := (&ServiceEntry{Zones: []string{"."}, Fall: fall.Root, TTL: 30, SearchDomains: []string{"cluster.local."},
		clients: clientsByPod, Next: test.NextHandler(dns.RcodeSuccess, nil)}).attach(st)
	w := &fromAddr{remote: &net.UDPAddr{IP: net.ParseIP(clientB).To4(), Port: 40212}}
	for _, name := range []string{"web.b.svc.cluster.local.", "api.github.com.b.svc.cluster.local.", "api.github.com."} {
		m := new(dns.Msg).SetQuestion(name, dns.TypeAAAA)
		if n := testing.AllocsPerRun(200, func() { _, _ = se.ServeDNS(context.Background(), w, m) }); n > 1 {
			t.Errorf("%s: %v allocations, want at most NextOrFailure's 1", name, n)
		}
	}
}
