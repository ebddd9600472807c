package serviceentry

import (
	"strconv"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// srvEntries declare ports, valid and not, for an exact and a wildcard host.
const srvEntries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc, namespace: ns1}
spec:
  hosts: [api.internal, "*.wild.internal"]
  addresses: [192.0.2.1, "2001:db8::1"]
  ports:
  - {number: 443, name: https, protocol: HTTPS}
  - {number: 53, name: dns, protocol: UDP}
  - {number: 5353, name: dns, protocol: TCP}
  - {number: 8080, name: plain}
  - {number: 0, name: zero, protocol: TCP}
  - {number: 70000, name: big, protocol: TCP}
  - {number: 8443, name: Bad_Name, protocol: HTTPS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: noports, namespace: ns1}
spec:
  hosts: [noports.internal]
  addresses: [192.0.2.9]
`

// TestSRV: _<port>._<proto>.<host> answers the host's matching ports, the
// bare host all of them, with the target's addresses as additional records.
func TestSRV(t *testing.T) {
	se := (&ServiceEntry{Zones: []string{"internal."}, TTL: defaultTTL,
		Next: test.NextHandler(dns.RcodeNotImplemented, nil)}).attach(storeFrom(t, entry.Options{}, srvEntries))
	srv := func(owner string, port int, target string) dns.RR {
		return test.SRV(owner + " 30 IN SRV 0 100 " + strconv.Itoa(port) + " " + target)
	}
	addrs := func(owner string) []dns.RR {
		return []dns.RR{test.A(owner + " 30 IN A 192.0.2.1"), test.AAAA(owner + " 30 IN AAAA 2001:db8::1")}
	}
	nodata := func(name string, qtype uint16) test.Case {
		return test.Case{Qname: name, Qtype: qtype, Ns: []dns.RR{test.SOA(soaInternal)}}
	}
	checkCases(t, se, []namedCase{
		{"a named TCP port", test.Case{Qname: "_https._tcp.api.internal.", Qtype: dns.TypeSRV,
			Answer: []dns.RR{srv("_https._tcp.api.internal.", 443, "api.internal.")}, Extra: addrs("api.internal.")}},
		{"protocol UDP is _udp", test.Case{Qname: "_dns._udp.api.internal.", Qtype: dns.TypeSRV,
			Answer: []dns.RR{srv("_dns._udp.api.internal.", 53, "api.internal.")}, Extra: addrs("api.internal.")}},
		{"the same name over TCP", test.Case{Qname: "_dns._tcp.api.internal.", Qtype: dns.TypeSRV,
			Answer: []dns.RR{srv("_dns._tcp.api.internal.", 5353, "api.internal.")}, Extra: addrs("api.internal.")}},
		{"no protocol is _tcp", test.Case{Qname: "_plain._tcp.api.internal.", Qtype: dns.TypeSRV,
			Answer: []dns.RR{srv("_plain._tcp.api.internal.", 8080, "api.internal.")}, Extra: addrs("api.internal.")}},
		{"port names match in any case; the owner keeps the query's", test.Case{Qname: "_HTTPS._Tcp.API.internal.", Qtype: dns.TypeSRV,
			Answer: []dns.RR{srv("_HTTPS._Tcp.API.internal.", 443, "api.internal.")}, Extra: addrs("api.internal.")}},
		{"the bare host lists every valid port", test.Case{Qname: "api.internal.", Qtype: dns.TypeSRV,
			Answer: []dns.RR{srv("api.internal.", 443, "api.internal."), srv("api.internal.", 53, "api.internal."),
				srv("api.internal.", 5353, "api.internal."), srv("api.internal.", 8080, "api.internal.")},
			Extra: addrs("api.internal.")}},
		{"a wildcard host: the target is the name asked", test.Case{Qname: "_https._tcp.x.wild.internal.", Qtype: dns.TypeSRV,
			Answer: []dns.RR{srv("_https._tcp.x.wild.internal.", 443, "x.wild.internal.")}, Extra: addrs("x.wild.internal.")}},
		{"unknown port: NODATA", nodata("_http._tcp.api.internal.", dns.TypeSRV)},
		{"unknown protocol: NODATA", nodata("_https._udp.api.internal.", dns.TypeSRV)},
		{"an invalid port is skipped: NODATA", nodata("_zero._tcp.api.internal.", dns.TypeSRV)},
		{"an out-of-range port is skipped", nodata("_big._tcp.api.internal.", dns.TypeSRV)},
		{"a port name Istio refuses is skipped", nodata("_bad_name._tcp.api.internal.", dns.TypeSRV)},
		{"a host without ports: NODATA", nodata("noports.internal.", dns.TypeSRV)},
		{"A of a port's name: NODATA, the name exists", nodata("_https._tcp.api.internal.", dns.TypeA)},
		{"the protocol label exists too", nodata("_tcp.api.internal.", dns.TypeSRV)},
		{"an unknown host's port: NXDOMAIN", test.Case{Qname: "_https._tcp.nope.internal.", Qtype: dns.TypeSRV,
			Rcode: dns.RcodeNameError, Ns: []dns.RR{test.SOA(soaInternal)}}},
	})
}

// TestConvertPorts: ports are validated one by one; a bad one is skipped and
// counted, the rest of the entry stays; the informer's transform keeps them.
func TestConvertPorts(t *testing.T) {
	obj := &clientv1.ServiceEntry{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "e"},
		Spec: networking.ServiceEntry{Hosts: []string{"a.internal"}, Addresses: []string{"192.0.2.1"},
			Ports: []*networking.ServicePort{
				{Number: 53, Name: "dns", Protocol: "udp"},
				{Number: 0, Name: "zero"},
				{Number: 65536, Name: "big"},
				{Number: 80, Name: ""},
				{Number: 80, Name: "-x"},
				{Number: 65535, Name: "max", Protocol: "GRPC"},
			}},
	}
	e, skips := entry.Convert(&obj.ObjectMeta, &obj.Spec, &obj.Status, entry.Options{})
	if e == nil || len(e.Hosts) != 1 {
		t.Fatalf("entry %+v: the host must stay", e)
	}
	want := []entry.Port{{Name: "dns", Number: 53, UDP: true}, {Name: "max", Number: 65535}}
	if len(e.Ports) != len(want) {
		t.Fatalf("ports %+v, want %+v", e.Ports, want)
	}
	for i := range want {
		if e.Ports[i] != want[i] {
			t.Errorf("port %d: %+v, want %+v", i, e.Ports[i], want[i])
		}
	}
	if len(skips) != 4 {
		t.Fatalf("skips %+v, want 4", skips)
	}
	for _, s := range skips {
		if s.Reason != entry.ReasonInvalidPort {
			t.Errorf("skip %+v, want reason %s", s, entry.ReasonInvalidPort)
		}
	}
}
