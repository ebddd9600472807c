package serviceentry

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// reverseEntries share addresses between hosts, some outside the zones, one
// a wildcard; one address comes from istiod's status.
const reverseEntries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: ns1}
spec:
  hosts: [b.mesh.internal, a.mesh.internal, "*.wild.mesh.internal"]
  addresses: [192.0.2.1, "2001:db8::1"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: c, namespace: ns1}
spec:
  hosts: [c.mesh.internal, outside.example, A.Mesh.Internal]
  addresses: [192.0.2.1]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: auto, namespace: ns1}
spec:
  hosts: [auto.mesh.internal]
  resolution: DNS
status:
  addresses: [{host: auto.mesh.internal, value: 240.240.0.1}]
`

const soaInAddr = "in-addr.arpa. 30 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. 1 7200 1800 86400 30"

// TestPTR: an address the plugin serves answers with every host (not the
// wildcards, not those outside the zones) that answers with it.
func TestPTR(t *testing.T) {
	st := storeFrom(t, entry.Options{}, reverseEntries)
	se := (&ServiceEntry{Zones: []string{"mesh.internal.", "in-addr.arpa.", "ip6.arpa."}, TTL: defaultTTL,
		Next: test.NextHandler(dns.RcodeNotImplemented, nil)}).attach(st)
	rootZone := (&ServiceEntry{Zones: []string{"."}, TTL: defaultTTL, Fall: fall.Root,
		Next: test.NextHandler(dns.RcodeNotImplemented, nil)}).attach(st)
	ptr := func(owner, target string) dns.RR { return test.PTR(owner + " 30 IN PTR " + target) }
	const v4 = "1.2.0.192.in-addr.arpa."
	v6, _ := dns.ReverseAddr("2001:db8::1")
	checkCases(t, se, []namedCase{
		{"every host with the address, sorted, once", test.Case{Qname: v4, Qtype: dns.TypePTR, Answer: []dns.RR{
			ptr(v4, "a.mesh.internal."), ptr(v4, "b.mesh.internal."), ptr(v4, "c.mesh.internal."),
		}}},
		{"IPv6", test.Case{Qname: v6, Qtype: dns.TypePTR, Answer: []dns.RR{
			ptr(v6, "a.mesh.internal."), ptr(v6, "b.mesh.internal."),
		}}},
		{"an address from status", test.Case{Qname: "1.0.240.240.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []dns.RR{
			ptr("1.0.240.240.in-addr.arpa.", "auto.mesh.internal."),
		}}},
		{"the query's case is kept", test.Case{Qname: "1.2.0.192.IN-ADDR.Arpa.", Qtype: dns.TypePTR, Answer: []dns.RR{
			ptr("1.2.0.192.IN-ADDR.Arpa.", "a.mesh.internal."), ptr("1.2.0.192.IN-ADDR.Arpa.", "b.mesh.internal."),
			ptr("1.2.0.192.IN-ADDR.Arpa.", "c.mesh.internal."),
		}}},
		{"another type at a served address: NODATA", test.Case{Qname: v4, Qtype: dns.TypeA, Ns: []dns.RR{test.SOA(soaInAddr)}}},
		{"an address nobody serves: NXDOMAIN", test.Case{Qname: "9.2.0.192.in-addr.arpa.", Qtype: dns.TypePTR,
			Rcode: dns.RcodeNameError, Ns: []dns.RR{test.SOA(soaInAddr)}}},
		{"not an address: NXDOMAIN", test.Case{Qname: "x.2.0.192.in-addr.arpa.", Qtype: dns.TypePTR,
			Rcode: dns.RcodeNameError, Ns: []dns.RR{test.SOA(soaInAddr)}}},
	})
	checkCases(t, rootZone, []namedCase{
		{"zone . holds the reverse zones", test.Case{Qname: "1.0.240.240.in-addr.arpa.", Qtype: dns.TypePTR, Answer: []dns.RR{
			ptr("1.0.240.240.in-addr.arpa.", "auto.mesh.internal."),
		}}},
		{"zone .: every host is inside it", test.Case{Qname: v4, Qtype: dns.TypePTR, Answer: []dns.RR{
			ptr(v4, "a.mesh.internal."), ptr(v4, "b.mesh.internal."), ptr(v4, "c.mesh.internal."), ptr(v4, "outside.example."),
		}}},
	})

	// Other addresses go on where fallthrough covers them, as for
	// the kubernetes plugin after us.
	withFall := (&ServiceEntry{Zones: []string{"."}, TTL: defaultTTL, Next: test.NextHandler(dns.RcodeNotImplemented, nil)}).attach(st)
	withFall.Fall.SetZonesFromArgs([]string{"in-addr.arpa.", "ip6.arpa."})
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	if rcode, _ := withFall.ServeDNS(context.Background(), rec, new(dns.Msg).SetQuestion("10.0.96.10.in-addr.arpa.", dns.TypePTR)); rcode != dns.RcodeNotImplemented || rec.Msg != nil {
		t.Errorf("an address we do not serve, fallthrough in-addr.arpa: rcode %s, reply %v; want it passed on", dns.RcodeToString[rcode], rec.Msg)
	}
}

// TestPTRLegacy: legacy-allocated addresses have their PTR too.
func TestPTRLegacy(t *testing.T) {
	st := storeFrom(t, entry.Options{AutoAllocate: entry.AutoAllocateLegacy}, `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: leg, namespace: ns1}
spec: {hosts: [leg.mesh.internal], resolution: DNS}
`)
	defer st.close()
	addr := lookupA(st, "leg.mesh.internal")
	if addr == "" {
		t.Fatal("no legacy address")
	}
	rev, _ := dns.ReverseAddr(addr)
	se := (&ServiceEntry{Zones: []string{"."}, TTL: defaultTTL}).attach(st)
	checkCases(t, se, []namedCase{
		{"a legacy address", test.Case{Qname: rev, Qtype: dns.TypePTR, Answer: []dns.RR{test.PTR(rev + " 30 IN PTR leg.mesh.internal.")}}},
	})
}

// TestPTRTruncation: the whole set is answered over TCP, truncated over UDP.
func TestPTRTruncation(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: many, namespace: ns}\nspec:\n  addresses: [192.0.2.7]\n  hosts:\n")
	for i := range 300 {
		fmt.Fprintf(&b, "  - host-%03d.mesh.internal\n", i)
	}
	se := (&ServiceEntry{Zones: []string{"."}, TTL: defaultTTL}).attach(storeFrom(t, entry.Options{}, b.String()))
	for _, tcp := range []bool{false, true} {
		m := new(dns.Msg).SetQuestion("7.2.0.192.in-addr.arpa.", dns.TypePTR)
		rec := dnstest.NewRecorder(&test.ResponseWriter{TCP: tcp})
		if _, err := se.ServeDNS(context.Background(), request.NewScrubWriter(m, rec), m); err != nil {
			t.Fatal(err)
		}
		if tcp && (rec.Msg.Truncated || len(rec.Msg.Answer) != 300) {
			t.Errorf("TCP: TC %v, %d answers; want the whole 300", rec.Msg.Truncated, len(rec.Msg.Answer))
		}
		if !tcp && !rec.Msg.Truncated {
			t.Errorf("UDP: %d answers without TC", len(rec.Msg.Answer))
		}
		if tcp {
			for i, rr := range rec.Msg.Answer {
				if want := fmt.Sprintf("host-%03d.mesh.internal.", i); rr.(*dns.PTR).Ptr != want {
					t.Fatalf("answer %d is %s, want %s: sorted", i, rr.(*dns.PTR).Ptr, want)
				}
			}
		}
	}
}
