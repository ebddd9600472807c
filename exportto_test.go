package serviceentry

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/table"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
	networking "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// exportToEntries exercise Istio's visibility rules per client namespace.
// Clients: 10.0.0.2 is a pod of namespace b, 10.0.0.3 of c, 10.0.0.9 of none.
const exportToEntries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: public, namespace: pub, creationTimestamp: "2020-01-01T00:00:00Z"}
spec: {hosts: [public.internal], addresses: [192.0.2.1], resolution: STATIC}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dot, namespace: b, creationTimestamp: "2020-01-01T00:00:00Z"}
spec: {hosts: [dot.internal], addresses: [192.0.2.2], resolution: STATIC, exportTo: ["."], ports: [{name: http, number: 80, protocol: HTTP}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: none, namespace: b, creationTimestamp: "2020-01-01T00:00:00Z"}
spec: {hosts: [none.internal], addresses: [192.0.2.3], resolution: STATIC, exportTo: ["~"]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: named, namespace: pub, creationTimestamp: "2020-01-01T00:00:00Z"}
spec: {hosts: [named.internal], addresses: [192.0.2.4], resolution: STATIC, exportTo: [c]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: star, namespace: b, creationTimestamp: "2020-01-01T00:00:00Z"}
spec: {hosts: [star.internal], addresses: [192.0.2.5], resolution: STATIC, exportTo: [".", "*"]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shared-old, namespace: pub, creationTimestamp: "2019-01-01T00:00:00Z"}
spec: {hosts: [shared.internal], addresses: [192.0.2.10], resolution: STATIC}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shared-private, namespace: b, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {hosts: [shared.internal], addresses: [192.0.2.11], resolution: STATIC, exportTo: ["."]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: claim, namespace: c, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {hosts: [claimed.internal, hid.sub2.internal], resolution: DNS, exportTo: ["."]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden-public, namespace: pub, creationTimestamp: "2019-01-01T00:00:00Z"}
spec: {hosts: [hid.sub2.internal], addresses: [192.0.2.70], resolution: STATIC}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: claimed-public, namespace: pub, creationTimestamp: "2019-01-01T00:00:00Z"}
spec: {hosts: [claimed.internal], addresses: [192.0.2.20], resolution: STATIC}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: old-exp, namespace: x, creationTimestamp: "2021-01-01T00:00:00Z"}
spec: {hosts: [grp.internal], addresses: [192.0.2.30], resolution: STATIC, exportTo: [b]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: new-exp, namespace: y, creationTimestamp: "2022-01-01T00:00:00Z"}
spec: {hosts: [grp.internal], addresses: [192.0.2.31], resolution: STATIC, exportTo: [b]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grp-public, namespace: pub, creationTimestamp: "2018-01-01T00:00:00Z"}
spec: {hosts: [grp.internal], addresses: [192.0.2.32], resolution: STATIC}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: m1, namespace: b, creationTimestamp: "2021-01-01T00:00:00Z"}
spec: {hosts: [merge.internal], addresses: [192.0.2.40], resolution: STATIC, exportTo: ["."]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: m2, namespace: b, creationTimestamp: "2022-01-01T00:00:00Z"}
spec: {hosts: [merge.internal], addresses: [192.0.2.41], resolution: STATIC, exportTo: [b]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: b, creationTimestamp: "2020-01-01T00:00:00Z"}
spec: {hosts: ["*.w.internal"], addresses: [192.0.2.50], resolution: STATIC, exportTo: ["."]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: deep, namespace: b, creationTimestamp: "2020-01-01T00:00:00Z"}
spec: {hosts: [deep.sub.internal], addresses: [192.0.2.60], resolution: STATIC, exportTo: ["."]}
`

const (
	clientB       = "10.0.0.2"
	clientC       = "10.0.0.3"
	clientUnknown = "10.0.0.9"
)

// exportToHandler serves exportToEntries with "exportto client" for the
// clients above, in zones internal. and in-addr.arpa.
func exportToHandler(t *testing.T, mode entry.ExportMode) *ServiceEntry {
	t.Helper()
	st := storeFrom(t, entry.Options{ExportTo: mode, AutoAllocate: entry.AutoAllocateOff}, exportToEntries)
	if mode == entry.ExportClient {
		st.clients = clientsOf(t, map[string]string{clientB: "b", clientC: "c"})
	}
	return (&ServiceEntry{Zones: []string{"internal.", "in-addr.arpa."}, TTL: 30}).attach(st)
}

// passedOn is what askFrom reports when the handler wrote no reply: it
// handed the query to the next plugin (none in these tests).
const passedOn = "passed on"

// askFrom asks se name/qtype from a client address and returns the rcode and
// the answer records' data, sorted, or passedOn.
func askFrom(t *testing.T, se *ServiceEntry, client, name string, qtype uint16) string {
	t.Helper()
	rec := dnstest.NewRecorder(&test.ResponseWriter{RemoteIP: client})
	se.ServeDNS(context.Background(), rec, new(dns.Msg).SetQuestion(name, qtype))
	if rec.Msg == nil {
		return passedOn
	}
	var data []string
	for _, rr := range rec.Msg.Answer {
		data = append(data, strings.TrimPrefix(rr.String(), rr.Header().String()))
	}
	slices.Sort(data)
	return strings.TrimSpace(fmt.Sprint(dns.RcodeToString[rec.Msg.Rcode], " ", strings.Join(data, " ")))
}

// TestExportToClient: each visibility row of Istio's exportTo and the
// duplicate-host rule, as clients of b, of c and of no namespace see them.
func TestExportToClient(t *testing.T) {
	se := exportToHandler(t, entry.ExportClient)
	for _, tc := range []struct {
		name, qname string
		qtype       uint16
		b, c, none  string
	}{
		{"no exportTo: public", "public.internal.", dns.TypeA, "NOERROR 192.0.2.1", "NOERROR 192.0.2.1", "NOERROR 192.0.2.1"},
		{"dot: own namespace only", "dot.internal.", dns.TypeA, "NOERROR 192.0.2.2", "NXDOMAIN", "NXDOMAIN"},
		{"tilde: nobody", "none.internal.", dns.TypeA, "NXDOMAIN", "NXDOMAIN", "NXDOMAIN"},
		{"named namespace only", "named.internal.", dns.TypeA, "NXDOMAIN", "NOERROR 192.0.2.4", "NXDOMAIN"},
		{"star with dot: public", "star.internal.", dns.TypeA, "NOERROR 192.0.2.5", "NOERROR 192.0.2.5", "NOERROR 192.0.2.5"},
		{"exported to the client before an older public entry", "shared.internal.", dns.TypeA, "NOERROR 192.0.2.11", "NOERROR 192.0.2.10", "NOERROR 192.0.2.10"},
		{"a private claim without address hides the public host", "claimed.internal.", dns.TypeA, "NOERROR 192.0.2.20", "NXDOMAIN", "NOERROR 192.0.2.20"},
		{"oldest of the explicit exports wins", "grp.internal.", dns.TypeA, "NOERROR 192.0.2.30", "NOERROR 192.0.2.32", "NOERROR 192.0.2.32"},
		{"same namespace merged", "merge.internal.", dns.TypeA, "NOERROR 192.0.2.40 192.0.2.41", "NXDOMAIN", "NXDOMAIN"},
		{"private wildcard", "x.w.internal.", dns.TypeA, "NOERROR 192.0.2.50", "NXDOMAIN", "NXDOMAIN"},
		{"private host's ancestor is an empty non-terminal", "sub.internal.", dns.TypeA, "NOERROR", "NXDOMAIN", "NXDOMAIN"},
		{"a hidden public host's ancestor is gone too", "sub2.internal.", dns.TypeA, "NOERROR", "NXDOMAIN", "NOERROR"},
		{"private address's PTR", "2.2.0.192.in-addr.arpa.", dns.TypePTR, "NOERROR dot.internal.", "NXDOMAIN", "NXDOMAIN"},
		{"shared address's PTR", "11.2.0.192.in-addr.arpa.", dns.TypePTR, "NOERROR shared.internal.", "NXDOMAIN", "NXDOMAIN"},
		{"public address's PTR, hidden where the host answers otherwise", "10.2.0.192.in-addr.arpa.", dns.TypePTR, "NXDOMAIN", "NOERROR shared.internal.", "NOERROR shared.internal."},
		{"private SRV", "_http._tcp.dot.internal.", dns.TypeSRV, "NOERROR 0 100 80 dot.internal.", "NXDOMAIN", "NXDOMAIN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range []struct{ client, want string }{{clientB, tc.b}, {clientC, tc.c}, {clientUnknown, tc.none}} {
				if got := askFrom(t, se, c.client, tc.qname, tc.qtype); got != c.want {
					t.Errorf("from %s: %s, want %s", c.client, got, c.want)
				}
			}
		})
	}
}

// TestExportToModes: "exportto public" serves public entries to everyone
// and "exportto all" every entry, whoever asks; neither looks at clients.
func TestExportToModes(t *testing.T) {
	public, all := exportToHandler(t, entry.ExportPublic), exportToHandler(t, entry.ExportAll)
	for _, client := range []string{clientB, clientUnknown} {
		if got := askFrom(t, public, client, "dot.internal.", dns.TypeA); got != "NXDOMAIN" {
			t.Errorf("exportto public, from %s: %s", client, got)
		}
		if got := askFrom(t, all, client, "none.internal.", dns.TypeA); got != "NOERROR 192.0.2.3" {
			t.Errorf("exportto all, from %s: %s", client, got)
		}
	}
}

// TestExportToChurn: overlays kept up to date change by change answer every
// name, empty non-terminal and address exactly as overlays built from scratch
// out of the same entries, for every client namespace.
func TestExportToChurn(t *testing.T) {
	hosts := []string{"a.ex.internal", "b.ex.internal", "c.deep.ex.internal", "*.ex.internal", "*.w.ex.internal"}
	exports := [][]string{nil, {"."}, {"b"}, {"b", "c"}, {"~"}}
	var entries []*entry.Entry
	for i := range 60 {
		meta := &metav1.ObjectMeta{Name: fmt.Sprintf("e%d", i), Namespace: []string{"b", "c", "d"}[i%3],
			CreationTimestamp: metav1.NewTime(time.Date(2024, 1, 1, 0, 0, i%7, 0, time.UTC))}
		spec := &networking.ServiceEntry{Hosts: []string{hosts[i%len(hosts)], hosts[(i/5)%len(hosts)]},
			ExportTo: exports[(i/3)%len(exports)], Resolution: networking.ServiceEntry_STATIC}
		if i%4 != 0 { // every fourth claims its hosts without an address
			spec.Addresses = []string{fmt.Sprintf("192.0.2.%d", i%9)}
		}
		e, _ := entry.Convert(meta, spec, nil, entry.Options{ExportTo: entry.ExportClient})
		if e != nil {
			entries = append(entries, e)
		}
	}
	names := []string{"a.ex.internal", "b.ex.internal", "c.deep.ex.internal", "deep.ex.internal", "x.ex.internal",
		"y.w.ex.internal", "w.ex.internal", "ex.internal"}
	churnAgainstFresh(t, entries, 7, 400, func(op int, got, fresh *table.Table) {
		for _, ns := range []string{"", "b", "c", "d"} {
			g, f := got.ViewFor(ns), fresh.ViewFor(ns)
			for _, name := range names {
				if !sameAnswer(g.Lookup(name), f.Lookup(name)) || g.HasBelow(name) != f.HasBelow(name) {
					t.Fatalf("op %d, namespace %q, %s: %v (below %v), fresh %v (below %v)",
						op, ns, name, g.Lookup(name), g.HasBelow(name), f.Lookup(name), f.HasBelow(name))
				}
			}
			for i := range 9 {
				addr := netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", i))
				if !slices.Equal(g.PTR(addr), f.PTR(addr)) {
					t.Fatalf("op %d, namespace %q, PTR %s: %v, fresh %v", op, ns, addr, g.PTR(addr), f.PTR(addr))
				}
			}
		}
	})
}
