package serviceentry

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
)

// pathEntries are hosts a pod with ndots:5 asks for under its search list:
// exact, wildcard, a single label that is also a Service's name, and one
// inside the cluster domain.
const pathEntries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: ns1}
spec:
  hosts: [api.example.com, "*.wild.example.com", real, db.ns.svc.cluster.local]
  addresses: [192.0.2.1]
  ports: [{number: 443, name: https, protocol: HTTPS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: v6, namespace: ns1}
spec:
  hosts: [v6.example.com]
  addresses: ["2001:db8::6"]
`

// TestSearchPath: with searchpath, a served host under a search domain is
// answered in one round trip, CNAME first; Kubernetes' own names keep theirs.
func TestSearchPath(t *testing.T) {
	st := storeFrom(t, entry.Options{}, pathEntries)
	var asked int
	handler := func(zones []string, search ...string) *ServiceEntry {
		return (&ServiceEntry{Zones: zones, Fall: fall.Root, TTL: defaultTTL, ClusterDomains: []string{"cluster.local."},
			SearchDomains: search, Next: fakeKubernetes(&asked, "cluster.local.", "corp.local.")}).attach(st)
	}
	on := handler([]string{"."}, "cluster.local.", "corp.local.")
	off := handler([]string{"."})
	narrow := handler([]string{"cluster.local."}, "cluster.local.")

	cname := func(owner, target string) dns.RR { return test.CNAME(owner + " 30 IN CNAME " + target) }
	a := func(owner string) dns.RR { return test.A(owner + " 30 IN A 192.0.2.1") }
	const exp = "api.example.com.ns1.svc.cluster.local."
	const soaExample = "example.com. 30 IN SOA ns.dns.example.com. hostmaster.example.com. 1 7200 1800 86400 30"
	const soaCluster5 = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"
	nxdomain := func(name string) test.Case {
		return test.Case{Qname: name, Qtype: dns.TypeA, Rcode: dns.RcodeNameError, Ns: []dns.RR{test.SOA(soaCluster5)}}
	}

	checkCases(t, on, []namedCase{
		{"<host>.<namespace>.svc.<cd>: CNAME, then the host's A", test.Case{Qname: exp, Qtype: dns.TypeA,
			Answer: []dns.RR{cname(exp, "api.example.com."), a("api.example.com.")}}},
		{"<host>.svc.<cd>", test.Case{Qname: "api.example.com.svc.cluster.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{cname("api.example.com.svc.cluster.local.", "api.example.com."), a("api.example.com.")}}},
		{"<host>.<cd>", test.Case{Qname: "api.example.com.cluster.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{cname("api.example.com.cluster.local.", "api.example.com."), a("api.example.com.")}}},
		{"the query's case is kept", test.Case{Qname: "API.Example.COM.Ns1.Svc.Cluster.Local.", Qtype: dns.TypeA,
			Answer: []dns.RR{cname("API.Example.COM.Ns1.Svc.Cluster.Local.", "API.Example.COM."), a("API.Example.COM.")}}},
		{"a host served through a wildcard", test.Case{Qname: "x.wild.example.com.ns1.svc.cluster.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{cname("x.wild.example.com.ns1.svc.cluster.local.", "x.wild.example.com."), a("x.wild.example.com.")}}},
		{"AAAA", test.Case{Qname: "v6.example.com.ns1.svc.cluster.local.", Qtype: dns.TypeAAAA,
			Answer: []dns.RR{cname("v6.example.com.ns1.svc.cluster.local.", "v6.example.com."), test.AAAA("v6.example.com. 30 IN AAAA 2001:db8::6")}}},
		{"none of the asked family: the CNAME alone, NOERROR, with SOA", test.Case{Qname: exp, Qtype: dns.TypeAAAA,
			Answer: []dns.RR{cname(exp, "api.example.com.")}, Ns: []dns.RR{test.SOA(soaExample)}}},
		{"another type: the CNAME alone, with SOA", test.Case{Qname: exp, Qtype: dns.TypeMX,
			Answer: []dns.RR{cname(exp, "api.example.com.")}, Ns: []dns.RR{test.SOA(soaExample)}}},
		{"CNAME asked: the CNAME", test.Case{Qname: exp, Qtype: dns.TypeCNAME,
			Answer: []dns.RR{cname(exp, "api.example.com.")}}},
		{"SRV under a search domain", test.Case{Qname: "_https._tcp.api.example.com.ns1.svc.cluster.local.", Qtype: dns.TypeSRV,
			Answer: []dns.RR{cname("_https._tcp.api.example.com.ns1.svc.cluster.local.", "_https._tcp.api.example.com."),
				test.SRV("_https._tcp.api.example.com. 30 IN SRV 0 100 443 api.example.com.")},
			Extra: []dns.RR{a("api.example.com.")}}},
		{"another search domain", test.Case{Qname: "api.example.com.ns1.svc.corp.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{cname("api.example.com.ns1.svc.corp.local.", "api.example.com."), a("api.example.com.")}}},
		{"a Service named like an expansion keeps its ClusterIP", test.Case{Qname: "real.ns.svc.cluster.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{test.A("real.ns.svc.cluster.local. 5 IN A 10.96.0.10")}}},
		{"and its NODATA", test.Case{Qname: "real.ns.svc.cluster.local.", Qtype: dns.TypeAAAA, Ns: []dns.RR{test.SOA(soaCluster5)}}},
		{"no such Service: the expansion of a single-label host", test.Case{Qname: "real.other.svc.cluster.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{cname("real.other.svc.cluster.local.", "real."), a("real.")}}},
		{"an exact host beats an expansion", test.Case{Qname: "db.ns.svc.cluster.local.", Qtype: dns.TypeA,
			Answer: []dns.RR{a("db.ns.svc.cluster.local.")}}},
		{"an unknown host is passed on", nxdomain("nope.ns1.svc.cluster.local.")},
		{"two labels between host and svc: not an expansion", nxdomain("api.example.com.a.b.svc.cluster.local.")},
	})
	checkCases(t, off, []namedCase{
		{"without searchpath: passed on", nxdomain(exp)},
	})
	checkCases(t, narrow, []namedCase{
		{"a host outside the zones is never the target", nxdomain(exp)},
	})
}

// TestSearchPathReachesHandler: searchpath from the Corefile turns expansions
// on in the running server.
func TestSearchPathReachesHandler(t *testing.T) {
	dir := manifestDir(t, "api.example.com", "192.0.2.1")
	// The file plugin stands in for the kubernetes plugin, asked first.
	zone := filepath.Join(dir, "cluster.local.zone")
	writeFile(t, zone, "$ORIGIN cluster.local.\n@ 60 IN SOA ns hostmaster 1 7200 1800 86400 30\n")
	port := freeUDPPort(t)
	inst := startCaddy(t, caddy.CaddyfileInput{ServerTypeName: "dns", Filepath: "Corefile", Contents: []byte(fmt.Sprintf(
		".:%d {\n bind 127.0.0.1\n serviceentry {\n manifests %s\n searchpath\n fallthrough\n }\n file %s cluster.local\n}\n",
		port, filepath.Join(dir, "se.yaml"), zone))})
	defer stopCaddy(t, inst)
	r, err := dns.Exchange(new(dns.Msg).SetQuestion("api.example.com.ns.svc.cluster.local.", dns.TypeA), fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 2 || r.Answer[0].Header().Rrtype != dns.TypeCNAME {
		t.Fatalf("got %v, want a CNAME and an A", r.Answer)
	}
}
