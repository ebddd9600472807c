package serviceentry

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"slices"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/source/manifest"
	"github.com/coredns/coredns/plugin"
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
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ent, namespace: ns1}
spec:
  hosts: [svc.ns.ent.internal, "*.x.went.internal"]
  addresses: [203.0.113.20]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: squat, namespace: ns1}
spec:
  hosts: [login.bank.example]
  addresses: [203.0.113.66]
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
		Next:  test.NextHandler(dns.RcodeNotImplemented, nil)}).attach(storeFrom(t, entry.Options{AutoAllocate: entry.AutoAllocateStatus}, handlerEntries))
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
		{"wildcard never covers its apex: an empty non-terminal, NODATA", nodata("wild.internal.", dns.TypeA)},
		{"most specific wildcard wins", test.Case{Qname: "q.deep.wild.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("q.deep.wild.internal. 30 IN A 203.0.113.8"),
		}}},
		{"a wildcard covers a name with names below it, as in Istio", test.Case{Qname: "deep.wild.internal.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("deep.wild.internal. 30 IN A 203.0.113.7"),
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
		{"status: IPv6 auto-allocated is not served by default (IPv4 pods get IPv4 only)", nodata("auto.internal.", dns.TypeAAAA)},
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
		{"zone apex A is NODATA", nodata("internal.", dns.TypeA)},
		{"zone apex AAAA is NODATA", nodata("internal.", dns.TypeAAAA)},
		{"zone apex MX is NODATA", nodata("INTERNAL.", dns.TypeMX)},
		{"zone apex SOA", test.Case{Qname: "internal.", Qtype: dns.TypeSOA, Answer: []dns.RR{test.SOA(soaInternal)}}},
		{"zone apex NS, no glue for an address we do not know", test.Case{Qname: "internal.", Qtype: dns.TypeNS, Answer: []dns.RR{
			test.NS("internal. 30 IN NS ns.dns.internal."),
		}}},
		{"SOA below the apex is NODATA", nodata("address.internal.", dns.TypeSOA)},
		{"NS below the apex is NODATA", nodata("address.internal.", dns.TypeNS)},
		{"empty non-terminal above an exact name", nodata("ns.ent.internal.", dns.TypeA)},
		{"empty non-terminal two labels up", nodata("ent.internal.", dns.TypeAAAA)},
		{"empty non-terminal, any type", nodata("ns.ent.internal.", dns.TypeMX)},
		{"empty non-terminal at a wildcard's apex", nodata("x.went.internal.", dns.TypeA)},
		{"empty non-terminal above a wildcard's apex", nodata("went.internal.", dns.TypeA)},
		{"beside an empty non-terminal is NXDOMAIN", nxdomain("other.ent.internal.")},
		{"below an exact name is NXDOMAIN", nxdomain("below.svc.ns.ent.internal.")},
		{"an escaped dot is part of the label: the less specific wildcard", test.Case{Qname: `x\.deep.wild.internal.`, Qtype: dns.TypeA, Answer: []dns.RR{
			test.A(`x\.deep.wild.internal. 30 IN A 203.0.113.7`),
		}}},
		{"an escaped dot is part of the label: no wildcard above it", nxdomain(`exact\.wild.internal.`)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rcode, reply := checkCase(t, se, c.tc)
			if rcode != c.tc.Rcode {
				t.Errorf("returned rcode %s, want %s", dns.RcodeToString[rcode], dns.RcodeToString[c.tc.Rcode])
			}
			if !reply.Authoritative {
				t.Error("reply is not authoritative")
			}
		})
	}
}

// TestAutoAllocatedIPv6: Istio's agent gives a pod only the auto-allocated
// addresses of its first IP family unless ISTIO_DUAL_STACK is on and the pod is
// dual-stack; declared IPv6 addresses are not affected. The default serves
// auto-allocated IPv4 only; "autoallocate MODE dualstack" serves both.
func TestAutoAllocatedIPv6(t *testing.T) {
	const docs = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: auto, namespace: ns1}
spec:
  hosts: [auto.internal]
  resolution: DNS
status:
  addresses:
  - {host: auto.internal, value: 240.240.0.5}
  - {host: auto.internal, value: "2001:2::5"}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: auto6, namespace: ns1}
spec:
  hosts: [auto6.internal]
  resolution: DNS
status:
  addresses: [{host: auto6.internal, value: "2001:2::6"}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: ns1}
spec: {hosts: [legacy.internal], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: declared, namespace: ns1}
spec: {hosts: [declared.internal], addresses: [192.0.2.1, "2001:db8::1"]}
`
	alloc, _ := allocateLegacy([]*entry.LegacyHost{{Namespace: "ns1", Host: "legacy.internal", Entry: "legacy"}})
	soaRR := test.SOA(soaInternal)
	nodata := func(q string, qtype uint16) test.Case {
		return test.Case{Qname: q, Qtype: qtype, Ns: []dns.RR{soaRR}}
	}
	nx := func(q string, qtype uint16) test.Case {
		return test.Case{Qname: q, Qtype: qtype, Rcode: dns.RcodeNameError, Ns: []dns.RR{soaRR}}
	}
	handler := func(opts entry.Options) *ServiceEntry {
		return (&ServiceEntry{Zones: []string{"internal."}, TTL: defaultTTL}).attach(storeFrom(t, opts, docs))
	}
	status := handler(entry.Options{AutoAllocate: entry.AutoAllocateStatus})
	statusDual := handler(entry.Options{AutoAllocate: entry.AutoAllocateStatus, DualStack: true})
	legacy := handler(entry.Options{AutoAllocate: entry.AutoAllocateLegacy})
	legacyDual := handler(entry.Options{AutoAllocate: entry.AutoAllocateLegacy, DualStack: true})
	for _, c := range []struct {
		name string
		se   *ServiceEntry
		tc   test.Case
	}{
		{"status A", status, test.Case{Qname: "auto.internal.", Qtype: dns.TypeA, Answer: []dns.RR{test.A("auto.internal. 30 IN A 240.240.0.5")}}},
		{"status AAAA is NODATA", status, nodata("auto.internal.", dns.TypeAAAA)},
		{"status IPv6 only: no address, not ours", status, nx("auto6.internal.", dns.TypeAAAA)},
		{"status declared IPv6 unaffected", status, test.Case{Qname: "declared.internal.", Qtype: dns.TypeAAAA, Answer: []dns.RR{test.AAAA("declared.internal. 30 IN AAAA 2001:db8::1")}}},
		{"status dualstack AAAA", statusDual, test.Case{Qname: "auto.internal.", Qtype: dns.TypeAAAA, Answer: []dns.RR{test.AAAA("auto.internal. 30 IN AAAA 2001:2::5")}}},
		{"status dualstack IPv6 only", statusDual, test.Case{Qname: "auto6.internal.", Qtype: dns.TypeAAAA, Answer: []dns.RR{test.AAAA("auto6.internal. 30 IN AAAA 2001:2::6")}}},
		{"legacy A", legacy, test.Case{Qname: "legacy.internal.", Qtype: dns.TypeA, Answer: []dns.RR{test.A("legacy.internal. 30 IN A " + alloc[0].v4.String())}}},
		{"legacy AAAA is NODATA", legacy, nodata("legacy.internal.", dns.TypeAAAA)},
		{"legacy dualstack AAAA", legacyDual, test.Case{Qname: "legacy.internal.", Qtype: dns.TypeAAAA, Answer: []dns.RR{test.AAAA("legacy.internal. 30 IN AAAA " + alloc[0].v6.String())}}},
	} {
		t.Run(c.name, func(t *testing.T) { checkCase(t, c.se, c.tc) })
	}
}

// TestDuplicateHostWinner: as in Istio, the namespace that wins a host is that
// of the oldest entry declaring it among all the entries the client sees, with
// or without addresses. When the winning namespace gives the host no address
// the host is not answered: a covering wildcard answers, else it is not ours.
// A newer entry elsewhere never takes over (no domain squatting).
func TestDuplicateHostWinner(t *testing.T) {
	const docs = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: first, namespace: owner, creationTimestamp: "2020-01-01T00:00:00Z"}
spec: {hosts: [claimed.internal, covered.wild.internal, merged.internal, cidr.internal], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: squat, namespace: squatter, creationTimestamp: "2022-01-01T00:00:00Z"}
spec: {hosts: [claimed.internal, covered.wild.internal, merged.internal], addresses: [203.0.113.66]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: same-ns, namespace: owner, creationTimestamp: "2023-01-01T00:00:00Z"}
spec: {hosts: [merged.internal], addresses: [198.51.100.7]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wide, namespace: owner, creationTimestamp: "2019-01-01T00:00:00Z"}
spec: {hosts: [cidr.internal], addresses: [10.0.0.0/8]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cidr-squat, namespace: squatter, creationTimestamp: "2021-06-01T00:00:00Z"}
spec: {hosts: [cidr.internal], addresses: [203.0.113.67]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild, namespace: any, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {hosts: ["*.wild.internal"], addresses: [192.0.2.9]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hidden, namespace: hider, creationTimestamp: "2010-01-01T00:00:00Z"}
spec: {hosts: [visible.internal], exportTo: ["."], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: visible, namespace: shown, creationTimestamp: "2021-01-01T00:00:00Z"}
spec: {hosts: [visible.internal], addresses: [192.0.2.20]}
`
	se := (&ServiceEntry{Zones: []string{"internal."}, TTL: defaultTTL}).attach(storeFrom(t, entry.Options{AutoAllocate: entry.AutoAllocateStatus}, docs))
	soaRR := test.SOA(soaInternal)
	checkCases(t, se, []namedCase{
		{"oldest entry has no address: the host is not ours, the newer one does not take over",
			test.Case{Qname: "claimed.internal.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []dns.RR{soaRR}}},
		{"oldest entry has no address: a covering wildcard answers",
			test.Case{Qname: "covered.wild.internal.", Qtype: dns.TypeA, Answer: []dns.RR{test.A("covered.wild.internal. 30 IN A 192.0.2.9")}}},
		{"the winning namespace's other entries still give it addresses",
			test.Case{Qname: "merged.internal.", Qtype: dns.TypeA, Answer: []dns.RR{test.A("merged.internal. 30 IN A 198.51.100.7")}}},
		{"an entry whose addresses are all wide CIDRs takes part and gives none",
			test.Case{Qname: "cidr.internal.", Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []dns.RR{soaRR}}},
		{"an entry not exported to the client takes no part",
			test.Case{Qname: "visible.internal.", Qtype: dns.TypeA, Answer: []dns.RR{test.A("visible.internal. 30 IN A 192.0.2.20")}}},
	})

	// Address-less hosts never reach the table.
	if got := se.table().Hosts; got != 3 {
		t.Errorf("table holds %d names, want 3 (merged.internal, *.wild.internal, visible.internal)", got)
	}
}

// TestDuplicateHostWinnerPorts: SRV answers take their ports from the entries
// whose addresses the host answers with, so from the namespace that wins the
// host among all the entries declaring it, addresses or not.
func TestDuplicateHostWinnerPorts(t *testing.T) {
	const docs = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: first, namespace: owner, creationTimestamp: "2020-01-01T00:00:00Z"}
spec:
  hosts: [ports.internal]
  resolution: DNS
  ports: [{number: 1111, name: first, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: squat, namespace: squatter, creationTimestamp: "2021-01-01T00:00:00Z"}
spec:
  hosts: [ports.internal]
  addresses: [203.0.113.66]
  ports: [{number: 2222, name: squat, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: own, namespace: owner, creationTimestamp: "2022-01-01T00:00:00Z"}
spec:
  hosts: [ports.internal]
  addresses: [192.0.2.31]
  ports: [{number: 3333, name: own, protocol: TCP}]
`
	se := (&ServiceEntry{Zones: []string{"internal."}, TTL: defaultTTL}).attach(storeFrom(t, entry.Options{AutoAllocate: entry.AutoAllocateStatus}, docs))
	checkCases(t, se, []namedCase{
		{"the winning namespace's addresses", test.Case{Qname: "ports.internal.", Qtype: dns.TypeA,
			Answer: []dns.RR{test.A("ports.internal. 30 IN A 192.0.2.31")}}},
		{"and its ports, never the squatter's", test.Case{Qname: "ports.internal.", Qtype: dns.TypeSRV,
			Answer: []dns.RR{test.SRV("ports.internal. 30 IN SRV 0 100 3333 ports.internal.")},
			Extra:  []dns.RR{test.A("ports.internal. 30 IN A 192.0.2.31")}}},
	})
}

// TestAnswerOrder: addresses come in a stable order (declaration order, oldest
// entry first), whatever order the entries arrive in, so that replies do not
// flap; shuffling is loadbalance's job. Every round builds a new store from
// the entries in another order, half of them before the first publish and
// half one change at a time.
func TestAnswerOrder(t *testing.T) {
	entries, _, err := manifest.Parse("test.yaml", []byte(handlerEntries), entry.Options{}, newStore(false))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(7, 8))
	for round := range 20 {
		r.Shuffle(len(entries), func(i, j int) { entries[i], entries[j] = entries[j], entries[i] })
		st := newStore(false)
		if round%2 == 0 {
			st.MarkSynced()
		}
		for _, e := range entries {
			st.Upsert(e.Key, e)
		}
		st.MarkSynced()
		se := newTestHandler(t).attach(st)
		for _, c := range []struct {
			qname string
			want  []string
		}{
			{"address.internal.", []string{"198.51.100.1", "198.51.100.2", "192.0.2.1"}},
			{"shared.internal.", []string{"10.1.1.1", "10.1.1.2"}},
		} {
			rec := dnstest.NewRecorder(&test.ResponseWriter{})
			if _, err := se.ServeDNS(context.Background(), rec, new(dns.Msg).SetQuestion(c.qname, dns.TypeA)); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, rr := range rec.Msg.Answer {
				got = append(got, rr.(*dns.A).A.String())
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("round %d, %s: got %v, want %v", round, c.qname, got, c.want)
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

	rootZone := newTestHandler(t)
	rootZone.Zones = []string{"."}

	cases := []struct {
		name    string
		se      *ServiceEntry
		qname   string
		qclass  uint16 // IN unless set
		want    int
		wantErr bool
	}{
		{"outside the zones", synced, "example.org.", 0, passed, false},
		// Security: a ServiceEntry may declare any host; only those inside
		// the plugin's zones are ever answered.
		{"a ServiceEntry host outside the zones is never answered", synced, "login.bank.example.", 0, passed, false},
		{"CHAOS is passed on", synced, "version.bind.", dns.ClassCHAOS, passed, false},
		{"CHAOS for a known name is passed on, never given IN data", synced, "address.internal.", dns.ClassCHAOS, passed, false},
		{"CHAOS for an unknown name in the zone is passed on, not NXDOMAIN", synced, "unknown.internal.", dns.ClassCHAOS, passed, false},
		{"class ANY is passed on", synced, "address.internal.", dns.ClassANY, passed, false},
		{"CHAOS before the first read is passed on, not SERVFAIL", notSynced, "address.internal.", dns.ClassCHAOS, passed, false},
		{"zone .: the root apex is not ours to answer", rootZone, ".", 0, passed, false},
		{"fallthrough covers the apex: passed on", withFall, "internal.", 0, passed, false},
		{"fallthrough covers an empty non-terminal: passed on", withFall, "ns.ent.internal.", 0, passed, false},
		{"outside the zones, not synced", notSynced, "example.org.", 0, passed, false},
		{"fallthrough for an unknown name", withFall, "unknown.internal.", 0, passed, false},
		{"fallthrough does not cover known names", withFall, "address.internal.", 0, dns.RcodeSuccess, false},
		{"fallthrough limited to a sub-zone: inside", onlySub, "x.sub.internal.", 0, passed, false},
		{"fallthrough limited to a sub-zone: outside", onlySub, "unknown.internal.", 0, dns.RcodeNameError, false},
		// Before the first full read nothing is known: a name fallthrough
		// covers goes on as an unknown name would, known or not.
		{"not synced, fallthrough: an unknown name is passed on", notSyncedFall, "unknown.internal.", 0, passed, false},
		{"not synced, fallthrough: a ServiceEntry host is passed on", notSyncedFall, "address.internal.", 0, passed, false},
		{"not synced, fallthrough for a sub-zone: inside is passed on", notSyncedSub, "x.sub.internal.", 0, passed, false},
		{"not synced, fallthrough for a sub-zone: outside is SERVFAIL", notSyncedSub, "unknown.internal.", 0, dns.RcodeServerFailure, true},
		{"not synced, no fallthrough: SERVFAIL with an error, never NXDOMAIN", notSynced, "unknown.internal.", 0, dns.RcodeServerFailure, true},
		{"no source attached yet is not synced", notAttached, "address.internal.", 0, passed, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := dnstest.NewRecorder(&test.ResponseWriter{})
			m := new(dns.Msg).SetQuestion(c.qname, dns.TypeA)
			if c.qclass != 0 {
				m.Question[0].Qclass = c.qclass
			}
			rcode, err := c.se.ServeDNS(context.Background(), rec, m)
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
	se := (&ServiceEntry{Zones: []string{"internal."}, TTL: 30}).attach(storeFrom(t, entry.Options{}, string(b)))

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

// apexEntries declare a zone's apex and the name its NS record points to.
const apexEntries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: apex, namespace: ns1}
spec:
  hosts: [example.org, ns.dns.example.org, a.b.example.org]
  addresses: [192.0.2.53, "2001:db8::53"]
`

// TestApex: SOA and NS are answered at the apex, with glue only for an
// address the plugin knows; a declared apex answers its addresses.
func TestApex(t *testing.T) {
	se := (&ServiceEntry{Zones: []string{"example.org.", "b.example.org."}, TTL: defaultTTL,
		Next: test.NextHandler(dns.RcodeNotImplemented, nil)}).attach(storeFrom(t, entry.Options{}, apexEntries))
	const soaOrg = "example.org. 30 IN SOA ns.dns.example.org. hostmaster.example.org. 1 7200 1800 86400 30"
	const soaB = "b.example.org. 30 IN SOA ns.dns.b.example.org. hostmaster.b.example.org. 1 7200 1800 86400 30"
	cases := []struct {
		name string
		tc   test.Case
	}{
		{"declared apex A", test.Case{Qname: "example.org.", Qtype: dns.TypeA, Answer: []dns.RR{
			test.A("example.org. 30 IN A 192.0.2.53"),
		}}},
		{"declared apex AAAA", test.Case{Qname: "example.org.", Qtype: dns.TypeAAAA, Answer: []dns.RR{
			test.AAAA("example.org. 30 IN AAAA 2001:db8::53"),
		}}},
		{"declared apex SOA", test.Case{Qname: "example.org.", Qtype: dns.TypeSOA, Answer: []dns.RR{test.SOA(soaOrg)}}},
		{"NS with glue for the address we know", test.Case{Qname: "example.org.", Qtype: dns.TypeNS,
			Answer: []dns.RR{test.NS("example.org. 30 IN NS ns.dns.example.org.")},
			Extra: []dns.RR{
				test.A("ns.dns.example.org. 30 IN A 192.0.2.53"),
				test.AAAA("ns.dns.example.org. 30 IN AAAA 2001:db8::53"),
			}}},
		{"MX at a declared apex is NODATA", test.Case{Qname: "example.org.", Qtype: dns.TypeMX, Ns: []dns.RR{test.SOA(soaOrg)}}},
		{"a second zone's apex: NS without glue", test.Case{Qname: "b.example.org.", Qtype: dns.TypeNS,
			Answer: []dns.RR{test.NS("b.example.org. 30 IN NS ns.dns.b.example.org.")}}},
		{"a second zone's apex: SOA", test.Case{Qname: "b.example.org.", Qtype: dns.TypeSOA, Answer: []dns.RR{test.SOA(soaB)}}},
		{"a second zone's apex: A is NODATA", test.Case{Qname: "b.example.org.", Qtype: dns.TypeA, Ns: []dns.RR{test.SOA(soaB)}}},
		{"an undeclared name of the first zone is NXDOMAIN", test.Case{Qname: "c.example.org.", Qtype: dns.TypeA,
			Rcode: dns.RcodeNameError, Ns: []dns.RR{test.SOA(soaOrg)}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rcode, reply := checkCase(t, se, c.tc)
			if rcode != c.tc.Rcode {
				t.Errorf("returned rcode %s, want %s", dns.RcodeToString[rcode], dns.RcodeToString[c.tc.Rcode])
			}
			if !reply.Authoritative {
				t.Fatalf("no authoritative reply: %v", reply)
			}
		})
	}
}

// TestRootZoneNegatives: with zone ".", negatives never carry a made-up root
// SOA, which a resolver would take as the root zone's; the SOA is that of the
// closest name the plugin serves at or below, else of the name's parent.
func TestRootZoneNegatives(t *testing.T) {
	se := newTestHandler(t)
	se.Zones = []string{"."}
	soaOf := func(owner string) dns.RR {
		return test.SOA(owner + " 30 IN SOA ns.dns." + owner + " hostmaster." + owner + " 1 7200 1800 86400 30")
	}
	cases := []struct {
		name string
		tc   test.Case
	}{
		{"NODATA of a served name: its closest served ancestor", test.Case{Qname: "address.internal.", Qtype: dns.TypeAAAA,
			Ns: []dns.RR{soaOf("internal.")}}},
		{"NXDOMAIN beside served names: the empty non-terminal above", test.Case{Qname: "other.ent.internal.", Qtype: dns.TypeA,
			Rcode: dns.RcodeNameError, Ns: []dns.RR{soaOf("ent.internal.")}}},
		{"NXDOMAIN below a served name: that name", test.Case{Qname: "below.svc.ns.ent.internal.", Qtype: dns.TypeA,
			Rcode: dns.RcodeNameError, Ns: []dns.RR{soaOf("svc.ns.ent.internal.")}}},
		{"NODATA of an empty non-terminal: the one above it", test.Case{Qname: "ns.ent.internal.", Qtype: dns.TypeA,
			Ns: []dns.RR{soaOf("ent.internal.")}}},
		{"NXDOMAIN far from any served name: the parent", test.Case{Qname: "www.example.com.", Qtype: dns.TypeA,
			Rcode: dns.RcodeNameError, Ns: []dns.RR{soaOf("example.com.")}}},
		{"NXDOMAIN of a top-level name: the name itself, never the root", test.Case{Qname: "nothere.", Qtype: dns.TypeA,
			Rcode: dns.RcodeNameError, Ns: []dns.RR{soaOf("nothere.")}}},
		{"the case asked is not what is cached: lower case owner", test.Case{Qname: "WWW.Example.COM.", Qtype: dns.TypeA,
			Rcode: dns.RcodeNameError, Ns: []dns.RR{soaOf("example.com.")}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if rcode, _ := checkCase(t, se, c.tc); rcode != c.tc.Rcode {
				t.Errorf("returned rcode %s, want %s", dns.RcodeToString[rcode], dns.RcodeToString[c.tc.Rcode])
			}
		})
	}
}

// clusterEntries declare hosts inside the cluster domain, one of them also the
// name of a real Service.
const clusterEntries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: squat, namespace: ns1}
spec:
  hosts: [real.ns.svc.cluster.local, db.ns.svc.cluster.local, "*.legacy.example.local", db.internal]
  addresses: [203.0.113.99]
`

// fakeKubernetes answers like CoreDNS's kubernetes plugin for zones: a
// ClusterIP for real.ns.svc.<zone>, SERVFAIL for broken.ns.svc.<zone> (as when
// not synced: written by the server, not the plugin) and NXDOMAIN for the rest.
// It counts the queries it sees.
func fakeKubernetes(asked *int, zones ...string) test.HandlerFunc {
	return func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		*asked++
		qname := r.Question[0].Name
		zone := plugin.Zones(zones).Matches(qname)
		if zone == "" {
			return dns.RcodeNotImplemented, nil
		}
		m := new(dns.Msg)
		m.Authoritative = true
		switch qname {
		case "broken.ns.svc." + zone:
			return dns.RcodeServerFailure, errors.New("kubernetes: not synced")
		case "real.ns.svc." + zone:
			m.SetReply(r)
			if r.Question[0].Qtype == dns.TypeA {
				m.Answer = []dns.RR{test.A(qname + " 5 IN A 10.96.0.10")}
			} else {
				m.Ns = []dns.RR{soa(zone, 5)}
			}
		default:
			m.SetRcode(r, dns.RcodeNameError)
			m.Ns = []dns.RR{soa(zone, 5)}
		}
		w.WriteMsg(m)
		return dns.RcodeSuccess, nil
	}
}

// TestClusterDomainAsksKubernetesFirst: a ServiceEntry host inside the cluster
// domain is answered only when the rest of the chain says NXDOMAIN; a real
// Service keeps its ClusterIP.
func TestClusterDomainAsksKubernetesFirst(t *testing.T) {
	st := storeFrom(t, entry.Options{}, clusterEntries)
	var asked int
	newHandler := func(domains ...string) *ServiceEntry {
		return (&ServiceEntry{Zones: []string{"."}, Fall: fall.Root, TTL: defaultTTL, ClusterDomains: domains,
			Next: fakeKubernetes(&asked, "cluster.local.", "example.local.")}).attach(st)
	}
	def := newHandler("cluster.local.")
	custom := newHandler("example.local.", "cluster.local.")
	const soaCluster5 = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"
	cases := []struct {
		name      string
		se        *ServiceEntry
		tc        test.Case
		wantAsked bool
	}{
		{"a Service named like a ServiceEntry host keeps its ClusterIP", def, test.Case{Qname: "real.ns.svc.cluster.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{test.A("real.ns.svc.cluster.local. 5 IN A 10.96.0.10")}}, true},
		{"the Service's NODATA is written as is", def, test.Case{Qname: "real.ns.svc.cluster.local.", Qtype: dns.TypeAAAA,
			Ns: []dns.RR{test.SOA(soaCluster5)}}, true},
		{"no such Service: the ServiceEntry answers", def, test.Case{Qname: "db.ns.svc.cluster.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{test.A("db.ns.svc.cluster.local. 30 IN A 203.0.113.99")}}, true},
		{"no such Service: our NODATA, with the SOA of our answer", def, test.Case{Qname: "db.ns.svc.cluster.local.", Qtype: dns.TypeAAAA,
			Ns: []dns.RR{test.SOA("ns.svc.cluster.local. 30 IN SOA ns.dns.ns.svc.cluster.local. hostmaster.ns.svc.cluster.local. 1 7200 1800 86400 30")}}, true},
		{"outside the cluster domain Kubernetes is not asked", def, test.Case{Qname: "db.internal.", Qtype: dns.TypeA,
			Answer: []dns.RR{test.A("db.internal. 30 IN A 203.0.113.99")}}, false},
		{"an unknown name goes on as before", def, test.Case{Qname: "none.ns.svc.cluster.local.", Qtype: dns.TypeA,
			Rcode: dns.RcodeNameError, Ns: []dns.RR{test.SOA(soaCluster5)}}, true},
		{"cluster_domain: another domain is asked first too", custom, test.Case{Qname: "a.legacy.example.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{test.A("a.legacy.example.local. 30 IN A 203.0.113.99")}}, true},
		{"cluster_domain: its Services win too", custom, test.Case{Qname: "real.ns.svc.example.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{test.A("real.ns.svc.example.local. 5 IN A 10.96.0.10")}}, true},
		{"a domain not listed is not asked", def, test.Case{Qname: "a.legacy.example.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{test.A("a.legacy.example.local. 30 IN A 203.0.113.99")}}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			asked = 0
			rec := dnstest.NewRecorder(&test.ResponseWriter{})
			// The rcode returned is the writer's business (the chain's
			// plugins return success once they wrote); the reply's is checked.
			if _, err := c.se.ServeDNS(context.Background(), rec, c.tc.Msg()); err != nil {
				t.Fatalf("ServeDNS: %v", err)
			}
			if (asked > 0) != c.wantAsked {
				t.Errorf("next plugin asked %d times, want asked: %v", asked, c.wantAsked)
			}
			if rec.Msg == nil {
				t.Fatal("no reply written")
			}
			if err := test.SortAndCheck(rec.Msg, c.tc); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestServFailHasError: every SERVFAIL comes back with an error so that the
// errors plugin logs why.
func TestServFailHasError(t *testing.T) {
	var asked int
	st := storeFrom(t, entry.Options{}, clusterEntries)
	chainFails := (&ServiceEntry{Zones: []string{"."}, Fall: fall.Root, TTL: defaultTTL, ClusterDomains: []string{"cluster.local."},
		Next: test.NextHandler(dns.RcodeServerFailure, nil)}).attach(st)
	chainBroken := (&ServiceEntry{Zones: []string{"."}, Fall: fall.Root, TTL: defaultTTL, ClusterDomains: []string{"cluster.local."},
		Next: fakeKubernetes(&asked, "cluster.local.")}).attach(st)
	noNext := (&ServiceEntry{Zones: []string{"."}, Fall: fall.Root, TTL: defaultTTL, ClusterDomains: []string{"cluster.local."}}).attach(st)
	notSynced := (&ServiceEntry{Zones: []string{"internal."}, TTL: defaultTTL}).attach(newStore(false))
	for _, c := range []struct {
		name  string
		se    *ServiceEntry
		qname string
	}{
		{"not synced", notSynced, "a.internal."},
		{"the chain asked first fails without saying why", chainFails, "db.ns.svc.cluster.local."},
		{"the chain asked first fails and says why", chainBroken, "broken.ns.svc.cluster.local."},
		{"nothing after us to ask first", noNext, "db.ns.svc.cluster.local."},
		{"nothing after us for the root apex", noNext, "."},
	} {
		t.Run(c.name, func(t *testing.T) {
			rcode, err := c.se.ServeDNS(context.Background(), dnstest.NewRecorder(&test.ResponseWriter{}), new(dns.Msg).SetQuestion(c.qname, dns.TypeA))
			if rcode != dns.RcodeServerFailure {
				t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[rcode])
			}
			if err == nil {
				t.Error("SERVFAIL without an error: the errors plugin would not log it")
			}
		})
	}
}

// TestSecurityNarrowing: the Security examples (docs/security.md). A namespace that can
// write ServiceEntries declares hosts for everyone's DNS; ZONES narrow what is
// served (namespaces and labels narrow what the Kubernetes source reads:
// TestKubeSourceNarrowing; RBAC is TestRBAC's, in test/integration).
func TestSecurityNarrowing(t *testing.T) {
	entries := `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: platform}
spec: {hosts: [api.mesh.internal], addresses: [192.0.2.1]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: team, namespace: team-a}
spec: {hosts: [team.mesh.internal], addresses: [192.0.2.3]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: squat, namespace: team-a}
spec: {hosts: [login.bank.example], addresses: [203.0.113.66]}
`
	const passed = "passed on"
	handler := func(zones []string) *ServiceEntry {
		return (&ServiceEntry{Zones: zones, TTL: defaultTTL, Next: test.NextHandler(dns.RcodeNotImplemented, nil)}).attach(storeFrom(t, entry.Options{}, entries))
	}
	ask := func(se *ServiceEntry, name string) string {
		rec := dnstest.NewRecorder(&test.ResponseWriter{})
		if rcode, _ := se.ServeDNS(context.Background(), rec, new(dns.Msg).SetQuestion(name, dns.TypeA)); rec.Msg == nil {
			if rcode == dns.RcodeNotImplemented {
				return passed
			}
			return dns.RcodeToString[rcode]
		}
		out := dns.RcodeToString[rec.Msg.Rcode]
		for _, rr := range rec.Msg.Answer {
			out += " " + rr.(*dns.A).A.String()
		}
		return out
	}
	everything := handler([]string{"."})
	zones := handler([]string{"mesh.internal."})
	for _, c := range []struct {
		name string
		se   *ServiceEntry
		q    string
		want string
	}{
		{"zone . serves any host a namespace declares", everything, "login.bank.example.", "NOERROR 203.0.113.66"},
		{"ZONES: a host outside them is never served", zones, "login.bank.example.", passed},
		{"ZONES: a host inside them is", zones, "team.mesh.internal.", "NOERROR 192.0.2.3"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := ask(c.se, c.q); got != c.want {
				t.Errorf("%s: got %q, want %q", c.q, got, c.want)
			}
		})
	}
}
