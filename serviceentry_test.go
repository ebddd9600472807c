package serviceentry

import (
	"context"
	"net"
	"testing"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// handlerEntries covers each answering rule with one or more entries.
const handlerEntries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain, namespace: ns1}
spec:
  hosts: [address.internal]
  addresses: [198.51.100.1, 198.51.100.2, 198.51.100.1, 10.0.0.0/8, 192.0.2.1/32]
  resolution: STATIC
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: v6, namespace: ns1}
spec:
  hosts: [v6only.internal]
  addresses: ["2001:db8::1"]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: dual, namespace: ns1}
spec:
  hosts: [Dual.Internal.]
  addresses: [192.0.2.10, "2001:db8::10/128"]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: wild, namespace: ns1}
spec:
  hosts: ["*.wild.internal"]
  addresses: [203.0.113.7]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: deeper, namespace: ns1}
spec:
  hosts: ["*.deep.wild.internal", "exact.wild.internal"]
  addresses: [203.0.113.8]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partial, namespace: ns1}
spec:
  hosts: ["*foo.internal"]
  addresses: [203.0.113.10]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: ns1}
spec:
  hosts: [private.internal]
  addresses: [203.0.113.11]
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: public, namespace: ns1}
spec:
  hosts: [public.internal]
  addresses: [203.0.113.12]
  exportTo: [".", "*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: noaddr, namespace: ns1}
spec:
  hosts: [dns.internal]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: auto, namespace: ns1}
spec:
  hosts: [auto.internal, "*.autowild.internal"]
  resolution: DNS
status:
  addresses:
  - {host: auto.internal, value: 240.240.0.1}
  - {host: auto.internal, value: 240.240.0.5}
  - {host: auto.internal, value: "2001:2::1"}
  - {host: "*.autowild.internal", value: 240.240.0.6}
  - {host: other.internal, value: 240.240.0.9}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: optout
  namespace: ns1
  labels: {networking.istio.io/enable-autoallocate-ip: "False"}
spec:
  hosts: [optout.internal]
  resolution: DNS
status:
  addresses: [{host: optout.internal, value: 240.240.0.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dynamic, namespace: ns1}
spec:
  hosts: ["*.dynamic.internal"]
  resolution: DYNAMIC_DNS
status:
  addresses: [{host: "*.dynamic.internal", value: 240.240.0.3}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: stale, namespace: ns1}
spec:
  hosts: [stale.internal]
  addresses: [198.51.100.50]
  resolution: DNS
status:
  addresses: [{host: stale.internal, value: 240.240.0.4}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: newest, namespace: aa, creationTimestamp: "2022-01-01T00:00:00Z"}
spec:
  hosts: [shared.internal]
  addresses: [10.2.2.2]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: oldest, namespace: zz, creationTimestamp: "2020-01-01T00:00:00Z"}
spec:
  hosts: [shared.internal]
  addresses: [10.1.1.1]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: later, namespace: zz, creationTimestamp: "2023-01-01T00:00:00Z"}
spec:
  hosts: [shared.internal]
  addresses: [10.1.1.2, 10.1.1.1]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
data: {hosts: ignored.internal}
`

const soaInternal = "internal. 30 IN SOA ns.dns.internal. hostmaster.internal. 1 7200 1800 86400 30"

func newTestHandler(t *testing.T) *ServiceEntry {
	t.Helper()
	return (&ServiceEntry{
		Zones: []string{"internal."},
		TTL:   defaultTTL,
		Next:  test.NextHandler(dns.RcodeNotImplemented, nil)}).attach(storeFrom(t, convertOptions{autoAllocate: autoAllocateStatus}, handlerEntries))
}

func TestServeDNS(t *testing.T) {
	se := newTestHandler(t)
	nxdomain := func(name string) test.Case {
		return test.Case{Qname: name, Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []dns.RR{test.SOA(soaInternal)}}
	}
	nodata := func(name string, qtype uint16) test.Case {
		return test.Case{Qname: name, Qtype: qtype, Rcode: dns.RcodeSuccess, Ns: []dns.RR{test.SOA(soaInternal)}}
	}
	cases := []struct {
		name string
		tc   test.Case
	}{
		{"A with duplicates removed, /32 kept, wide CIDR dropped", test.Case{Qname: "address.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("address.internal. 30 IN A 192.0.2.1"),
			test.A("address.internal. 30 IN A 198.51.100.1"),
			test.A("address.internal. 30 IN A 198.51.100.2"),
		}}},
		{"query case is kept in the answer", test.Case{Qname: "ADDRESS.Internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("ADDRESS.Internal. 30 IN A 192.0.2.1"),
			test.A("ADDRESS.Internal. 30 IN A 198.51.100.1"),
			test.A("ADDRESS.Internal. 30 IN A 198.51.100.2"),
		}}},
		{"AAAA of a v4-only host is NODATA", nodata("address.internal.", dns.TypeAAAA)},
		{"MX of a known host is NODATA", nodata("address.internal.", dns.TypeMX)},
		{"HTTPS of a known host is NODATA", nodata("address.internal.", dns.TypeHTTPS)},
		{"AAAA", test.Case{Qname: "v6only.internal.", Qtype: dns.TypeAAAA, Answer: []dns.RR{
			test.AAAA("v6only.internal. 30 IN AAAA 2001:db8::1"),
		}}},
		{"A of a v6-only host is NODATA", nodata("v6only.internal.", dns.TypeA)},
		{"upper-case host with trailing dot, v1beta1", test.Case{Qname: "dual.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("dual.internal. 30 IN A 192.0.2.10"),
		}}},
		{"/128 served as AAAA", test.Case{Qname: "dual.internal.", Qtype: dns.TypeAAAA, Answer: []dns.RR{
			test.AAAA("dual.internal. 30 IN AAAA 2001:db8::10"),
		}}},
		{"wildcard one level below", test.Case{Qname: "a.wild.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("a.wild.internal. 30 IN A 203.0.113.7"),
		}}},
		{"wildcard any depth below", test.Case{Qname: "x.y.wild.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("x.y.wild.internal. 30 IN A 203.0.113.7"),
		}}},
		{"wildcard never covers its apex", nxdomain("wild.internal.")},
		{"most specific wildcard wins", test.Case{Qname: "q.deep.wild.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("q.deep.wild.internal. 30 IN A 203.0.113.8"),
		}}},
		{"exact beats wildcard", test.Case{Qname: "exact.wild.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("exact.wild.internal. 30 IN A 203.0.113.8"),
		}}},
		{"wildcard NODATA", nodata("a.wild.internal.", dns.TypeAAAA)},
		{"partial wildcard never resolves", nxdomain("barfoo.internal.")},
		{"exportTo . only is not public", nxdomain("private.internal.")},
		{"exportTo with * is public", test.Case{Qname: "public.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("public.internal. 30 IN A 203.0.113.12"),
		}}},
		{"no address and no allocation: not in the table", nxdomain("dns.internal.")},
		{"status: last IPv4 per host wins", test.Case{Qname: "auto.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("auto.internal. 30 IN A 240.240.0.5"),
		}}},
		{"status: IPv6", test.Case{Qname: "auto.internal.", Qtype: dns.TypeAAAA, Answer: []dns.RR{
			test.AAAA("auto.internal. 30 IN AAAA 2001:2::1"),
		}}},
		{"status: wildcard host not DYNAMIC_DNS ignored", nxdomain("x.autowild.internal.")},
		{"status: wildcard host with DYNAMIC_DNS served", test.Case{Qname: "x.dynamic.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("x.dynamic.internal. 30 IN A 240.240.0.3"),
		}}},
		{"status: host not in spec ignored", nxdomain("other.internal.")},
		{"status: opt-out label, any case", nxdomain("optout.internal.")},
		{"status: stale once spec.addresses exist", test.Case{Qname: "stale.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("stale.internal. 30 IN A 198.51.100.50"),
		}}},
		{"same host: oldest namespace wins, its entries merged", test.Case{Qname: "shared.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("shared.internal. 30 IN A 10.1.1.1"),
			test.A("shared.internal. 30 IN A 10.1.1.2"),
		}}},
		{"other kinds are ignored", nxdomain("ignored.internal.")},
		{"unknown name in zone", nxdomain("unknown.internal.")},
		{"zone apex", nxdomain("internal.")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := dnstest.NewRecorder(&test.ResponseWriter{})
			rcode, err := se.ServeDNS(context.Background(), rec, c.tc.Msg())
			if err != nil {
				t.Fatalf("ServeDNS: %v", err)
			}
			if rcode != c.tc.Rcode {
				t.Errorf("returned rcode %s, want %s", dns.RcodeToString[rcode], dns.RcodeToString[c.tc.Rcode])
			}
			if rec.Msg == nil {
				t.Fatal("no reply written")
			}
			if !rec.Msg.Authoritative {
				t.Error("reply is not authoritative")
			}
			if err := test.SortAndCheck(rec.Msg, c.tc); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestAnswerOrder: addresses come in a stable order (declaration order, oldest
// entry first), so that replies do not flap; shuffling is loadbalance's job.
func TestAnswerOrder(t *testing.T) {
	se := newTestHandler(t)
	for _, c := range []struct {
		qname string
		want  []string
	}{
		{"address.internal.", []string{"198.51.100.1", "198.51.100.2", "192.0.2.1"}},
		{"shared.internal.", []string{"10.1.1.1", "10.1.1.2"}},
	} {
		for range 20 {
			rec := dnstest.NewRecorder(&test.ResponseWriter{})
			m := new(dns.Msg).SetQuestion(c.qname, dns.TypeA)
			if _, err := se.ServeDNS(context.Background(), rec, m); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, rr := range rec.Msg.Answer {
				got = append(got, rr.(*dns.A).A.String())
			}
			if len(got) != len(c.want) {
				t.Fatalf("%s: got %v, want %v", c.qname, got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("%s: got %v, want %v", c.qname, got, c.want)
				}
			}
		}
	}
}

func TestServeDNSPassesOn(t *testing.T) {
	const passed = dns.RcodeNotImplemented // what the test's next handler returns
	synced := newTestHandler(t)
	withFall := newTestHandler(t)
	withFall.Fall = fall.Root
	onlySub := newTestHandler(t)
	onlySub.Fall.SetZonesFromArgs([]string{"sub.internal."})
	notSynced := newTestHandler(t).attach(newStore(false))
	notSyncedFall := newTestHandler(t).attach(newStore(false))
	notSyncedFall.Fall = fall.Root
	notSyncedSub := newTestHandler(t).attach(newStore(false))
	notSyncedSub.Fall.SetZonesFromArgs([]string{"sub.internal."})
	notAttached := &ServiceEntry{Zones: []string{"internal."}, TTL: defaultTTL, Fall: fall.Root,
		Next: test.NextHandler(passed, nil)}

	cases := []struct {
		name    string
		se      *ServiceEntry
		qname   string
		want    int
		wantErr bool
	}{
		{"outside the zones", synced, "example.org.", passed, false},
		{"outside the zones, not synced", notSynced, "example.org.", passed, false},
		{"fallthrough for an unknown name", withFall, "unknown.internal.", passed, false},
		{"fallthrough does not cover known names", withFall, "address.internal.", dns.RcodeSuccess, false},
		{"fallthrough limited to a sub-zone: inside", onlySub, "x.sub.internal.", passed, false},
		{"fallthrough limited to a sub-zone: outside", onlySub, "unknown.internal.", dns.RcodeNameError, false},
		// Before the first full read nothing is known: a name fallthrough
		// covers goes on as an unknown name would, known or not.
		{"not synced, fallthrough: an unknown name is passed on", notSyncedFall, "unknown.internal.", passed, false},
		{"not synced, fallthrough: a ServiceEntry host is passed on", notSyncedFall, "address.internal.", passed, false},
		{"not synced, fallthrough for a sub-zone: inside is passed on", notSyncedSub, "x.sub.internal.", passed, false},
		{"not synced, fallthrough for a sub-zone: outside is SERVFAIL", notSyncedSub, "unknown.internal.", dns.RcodeServerFailure, true},
		{"not synced, no fallthrough: SERVFAIL with an error, never NXDOMAIN", notSynced, "unknown.internal.", dns.RcodeServerFailure, true},
		{"no source attached yet is not synced", notAttached, "address.internal.", passed, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := dnstest.NewRecorder(&test.ResponseWriter{})
			rcode, err := c.se.ServeDNS(context.Background(), rec, new(dns.Msg).SetQuestion(c.qname, dns.TypeA))
			if rcode != c.want {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[rcode], dns.RcodeToString[c.want])
			}
			if (err != nil) != c.wantErr {
				t.Errorf("error %v, want one: %v (the errors plugin logs SERVFAIL only with an error)", err, c.wantErr)
			}
		})
	}
}

// TestTruncation: a host with 300 addresses does not fit a 512-byte UDP reply:
// through CoreDNS's scrub writer (as the server wraps every plugin) the reply
// is truncated with TC set over UDP, and whole over TCP.
func TestTruncation(t *testing.T) {
	var b []byte
	b = append(b, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: big, namespace: ns}\nspec:\n  hosts: [big.internal]\n  addresses:\n"...)
	for i := range 300 {
		b = append(b, "  - "...)
		b = append(b, net.IPv4(10, 9, byte(i/256), byte(i%256)).String()...)
		b = append(b, '\n')
	}
	se := (&ServiceEntry{Zones: []string{"internal."}, TTL: 30}).attach(storeFrom(t, convertOptions{}, string(b)))

	for _, c := range []struct {
		name      string
		tcp       bool
		bufsize   uint16
		truncated bool
		answers   int
	}{
		{"UDP, no EDNS", false, 0, true, -1},
		{"UDP, EDNS 1232", false, 1232, true, -1},
		{"TCP", true, 0, false, 300},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := new(dns.Msg).SetQuestion("big.internal.", dns.TypeA)
			if c.bufsize > 0 {
				m.SetEdns0(c.bufsize, false)
			}
			var w dns.ResponseWriter = &test.ResponseWriter{}
			if c.tcp {
				w = &test.ResponseWriter{TCP: true}
			}
			rec := dnstest.NewRecorder(w)
			if _, err := se.ServeDNS(context.Background(), request.NewScrubWriter(m, rec), m); err != nil {
				t.Fatal(err)
			}
			if rec.Msg.Truncated != c.truncated {
				t.Errorf("TC = %v, want %v", rec.Msg.Truncated, c.truncated)
			}
			if c.answers >= 0 && len(rec.Msg.Answer) != c.answers {
				t.Errorf("%d answers, want %d", len(rec.Msg.Answer), c.answers)
			}
			size := c.bufsize
			if size == 0 {
				size = dns.MinMsgSize
			}
			if !c.tcp && rec.Msg.Len() > int(size) {
				t.Errorf("UDP reply of %d bytes exceeds %d", rec.Msg.Len(), size)
			}
		})
	}
}
