package serviceentry

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/podindex"
	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
)

// reachEntries has an entry of each form the answers of a client outside the
// mesh depend on. Auto-allocated addresses are in status, as istiod writes
// them.
const reachEntries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: auto, namespace: ns}
spec: {hosts: [auto.internal], resolution: DNS, ports: [{name: https, number: 443, protocol: TLS}]}
status: {addresses: [{host: auto.internal, value: 240.240.0.1}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: static, namespace: ns}
spec:
  hosts: [static.internal]
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}, {address: "2001:db8::10"}, {address: "unix:///var/run/x.sock"}]
  ports: [{number: 443, name: https, protocol: TLS}]
status: {addresses: [{host: static.internal, value: 240.240.0.2}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: declared, namespace: ns}
spec: {hosts: [declared.internal], addresses: [10.9.0.1], resolution: STATIC, endpoints: [{address: 192.0.2.20}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: declared-dns, namespace: ns}
spec: {hosts: [declared-dns.internal], addresses: [10.9.0.2], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: none, namespace: ns}
spec: {hosts: [none.internal], addresses: [192.0.2.30], resolution: NONE}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: alias, namespace: ns}
spec: {hosts: [alias.internal], resolution: DNS, endpoints: [{address: Real.Example.COM}, {address: other.example.com}]}
status: {addresses: [{host: alias.internal, value: 240.240.0.5}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: rr, namespace: ns}
spec: {hosts: [rr.internal], resolution: DNS_ROUND_ROBIN, endpoints: [{address: 192.0.2.60}]}
status: {addresses: [{host: rr.internal, value: 240.240.0.6}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns-ips, namespace: ns}
spec: {hosts: [dns-ips.internal], resolution: DNS, endpoints: [{address: 192.0.2.70}, {address: 192.0.2.71}, {address: ep.example.com}]}
status: {addresses: [{host: dns-ips.internal, value: 240.240.0.7}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dynamic, namespace: ns}
spec: {hosts: ["*.dyn.internal"], resolution: DYNAMIC_DNS}
status: {addresses: [{host: "*.dyn.internal", value: 240.240.0.8}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: front, namespace: ns}
spec: {hosts: [front.internal], resolution: DNS, endpoints: [{address: db.internal}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: ns}
spec: {hosts: [db.internal], addresses: [10.60.0.1], resolution: STATIC, endpoints: [{address: 198.51.100.80}]}
`

// The clients, by the pod fixtures of package reach that hold their address.
const (
	ambientClient   = "10.1.0.1" // ambient-enabled: mesh, no sidecar
	captureClient   = "10.1.0.2" // sidecar-dns-capture: mesh, with a sidecar
	sidecarClient   = "10.1.0.3" // sidecar-no-dns: declared only, with a sidecar
	plainClient     = "10.1.0.4" // plain: outside
	unknownClient   = "10.1.0.9" // no pod: outside
	pendingClient   = "10.1.0.5" // ambient-pending: outside
	initingClient   = "10.1.0.6" // sidecar-initializing: outside, with a sidecar
	fixturesOfReach = "internal/reach/testdata"
)

// reachClients is a synced pod index holding each fixture pod at its client
// address.
func reachClients(t *testing.T) *podindex.Index {
	t.Helper()
	idx := podindex.New()
	for ip, file := range map[string]string{ambientClient: "ambient-enabled.yaml", captureClient: "sidecar-dns-capture.yaml",
		sidecarClient: "sidecar-no-dns.yaml", plainClient: "plain.yaml", pendingClient: "ambient-pending.yaml",
		initingClient: "sidecar-initializing.yaml"} {
		idx.Set(file, podClaim(t, file, ip))
	}
	idx.MarkSynced()
	return idx
}

// TestAnswersThatReach: each client is answered with what it can route:
// mesh clients with the mesh's addresses; a sidecar without DNS capture with
// declared addresses only; a client outside the mesh with where Envoy would
// connect (endpoint addresses, a CNAME to the endpoint host), or nothing, so
// that the query goes on to the next plugin; and a sidecar's Envoy with the
// real answer of a host it resolves itself.
func TestAnswersThatReach(t *testing.T) {
	st := storeFrom(t, entry.Options{}, reachEntries)
	st.clients = reachClients(t)
	se := (&ServiceEntry{Zones: []string{"internal.", "in-addr.arpa."}, TTL: 30, clients: clientsByPod}).attach(st)
	const passed = passedOn
	for _, c := range []struct {
		name    string
		qtype   uint16
		answers map[string]string // by client
	}{
		{"auto.internal.", dns.TypeA, map[string]string{
			ambientClient: "NOERROR 240.240.0.1", captureClient: passed, sidecarClient: passed,
			plainClient: passed, unknownClient: passed, pendingClient: passed, initingClient: passed}},
		{"static.internal.", dns.TypeA, map[string]string{
			ambientClient: "NOERROR 240.240.0.2", captureClient: "NOERROR 240.240.0.2", sidecarClient: "NOERROR 192.0.2.10",
			plainClient: "NOERROR 192.0.2.10", unknownClient: "NOERROR 192.0.2.10"}},
		{"static.internal.", dns.TypeAAAA, map[string]string{
			ambientClient: "NOERROR", plainClient: "NOERROR 2001:db8::10"}},
		{"declared.internal.", dns.TypeA, map[string]string{
			ambientClient: "NOERROR 10.9.0.1", captureClient: "NOERROR 10.9.0.1", sidecarClient: "NOERROR 10.9.0.1",
			plainClient: "NOERROR 192.0.2.20", initingClient: "NOERROR 192.0.2.20"}},
		{"declared-dns.internal.", dns.TypeA, map[string]string{
			ambientClient: "NOERROR 10.9.0.2", captureClient: passed, sidecarClient: passed, plainClient: passed}},
		{"none.internal.", dns.TypeA, map[string]string{
			ambientClient: "NOERROR 192.0.2.30", sidecarClient: "NOERROR 192.0.2.30", plainClient: "NOERROR 192.0.2.30"}},
		{"alias.internal.", dns.TypeA, map[string]string{
			ambientClient: "NOERROR 240.240.0.5", plainClient: "NOERROR real.example.com.", captureClient: "NOERROR 240.240.0.5"}},
		{"alias.internal.", dns.TypeMX, map[string]string{
			ambientClient: "NOERROR", plainClient: "NOERROR real.example.com."}},
		{"rr.internal.", dns.TypeA, map[string]string{
			ambientClient: "NOERROR 240.240.0.6", plainClient: "NOERROR 192.0.2.60", captureClient: "NOERROR 240.240.0.6"}},
		{"dns-ips.internal.", dns.TypeA, map[string]string{
			ambientClient: "NOERROR 240.240.0.7", plainClient: "NOERROR 192.0.2.70 192.0.2.71"}},
		{"x.dyn.internal.", dns.TypeA, map[string]string{
			ambientClient: "NOERROR 240.240.0.8", plainClient: passed}},
		// db.internal is the endpoint Envoy resolves for front.internal, from
		// a sidecar pod's address, and connects to uncaptured.
		{"db.internal.", dns.TypeA, map[string]string{
			ambientClient: "NOERROR 10.60.0.1", plainClient: "NOERROR 198.51.100.80", captureClient: passed, sidecarClient: passed}},
		// A host's SRV ports are the same for every client it answers.
		{"_https._tcp.static.internal.", dns.TypeSRV, map[string]string{
			ambientClient: "NOERROR 0 100 443 static.internal.", plainClient: "NOERROR 0 100 443 static.internal."}},
		{"_https._tcp.auto.internal.", dns.TypeSRV, map[string]string{
			ambientClient: "NOERROR 0 100 443 auto.internal.", plainClient: passed}},
		{"1.0.240.240.in-addr.arpa.", dns.TypePTR, map[string]string{
			ambientClient: "NOERROR auto.internal.", plainClient: "NXDOMAIN"}},
	} {
		for client, want := range c.answers {
			if got := askFrom(t, se, client, c.name, c.qtype); got != want {
				t.Errorf("%s %s from %s: got %q, want %q", c.name, dns.TypeToString[c.qtype], client, got, want)
			}
		}
	}
}

// TestClientsOption: "clients mesh" answers every client as a mesh client,
// "clients outside" as one outside the mesh, whatever pod holds its address.
func TestClientsOption(t *testing.T) {
	for _, c := range []struct {
		mode clientMode
		want string
	}{{clientsMesh, "NOERROR 240.240.0.1"}, {clientsOutside, passedOn}} {
		st := storeFrom(t, entry.Options{}, reachEntries)
		st.clients = reachClients(t)
		se := (&ServiceEntry{Zones: []string{"internal."}, TTL: 30, clients: c.mode}).attach(st)
		for _, client := range []string{ambientClient, plainClient, unknownClient} {
			if got := askFrom(t, se, client, "auto.internal.", dns.TypeA); got != c.want {
				t.Errorf("mode %d, client %s: got %q, want %q", c.mode, client, got, c.want)
			}
		}
	}
}

// TestClientsBeforePodsAreRead: until the first list of pods is in, every
// client is one outside the mesh.
func TestClientsBeforePodsAreRead(t *testing.T) {
	st := storeFrom(t, entry.Options{}, reachEntries)
	st.clients = podindex.New()
	se := (&ServiceEntry{Zones: []string{"internal."}, TTL: 30, clients: clientsByPod}).attach(st)
	if got := askFrom(t, se, ambientClient, "auto.internal.", dns.TypeA); got != passedOn {
		t.Errorf("before the pods are read: got %q, want the query passed on", got)
	}
}

// TestWaitSyncedSaysWhatIsMissing: the startup wait names what is not in
// yet, so that its warning says whether the entries or the pods are late.
func TestWaitSyncedSaysWhatIsMissing(t *testing.T) {
	const short = 10 * time.Millisecond
	unread := newStore(false)
	unread.clients = podindex.New()
	if got := unread.waitSynced(short); got != missingEntries {
		t.Errorf("nothing read: %q missing, want %q", got, missingEntries)
	}
	st := storeFrom(t, entry.Options{}, reachEntries)
	st.clients = podindex.New()
	if got := st.waitSynced(short); got != missingPods {
		t.Errorf("entries read, pods not: %q missing, want %q", got, missingPods)
	}
	st.clients.MarkSynced()
	if got := st.waitSynced(short); got != "" {
		t.Errorf("both read: %q missing", got)
	}
	st.clients = nil // pods not read at all ("clients mesh")
	if got := st.waitSynced(short); got != "" {
		t.Errorf("entries read, no pods to read: %q missing", got)
	}
}

// TestSearchPathThatReaches: a search-path expansion of a host follows the
// host's answer for the client: the CNAME and the VIP for a mesh client,
// the CNAME and the endpoint for a client outside the mesh, and, when nothing
// reaches the client, the rest of the chain's answer (its NXDOMAIN), as
// without the plugin.
func TestSearchPathThatReaches(t *testing.T) {
	st := storeFrom(t, entry.Options{}, reachEntries)
	st.clients = reachClients(t)
	var asked int
	se := (&ServiceEntry{Zones: []string{"."}, Fall: fall.Root, TTL: 30, ClusterDomains: []string{"cluster.local."},
		SearchDomains: []string{"cluster.local."}, Next: fakeKubernetes(&asked, "cluster.local."), clients: clientsByPod}).attach(st)
	for _, c := range []struct {
		name, client, want string
	}{
		{"auto.internal.ns.svc.cluster.local.", ambientClient, "NOERROR 240.240.0.1 auto.internal."},
		{"auto.internal.ns.svc.cluster.local.", plainClient, "NXDOMAIN"},
		{"static.internal.svc.cluster.local.", plainClient, "NOERROR 192.0.2.10 static.internal."},
		{"static.internal.svc.cluster.local.", ambientClient, "NOERROR 240.240.0.2 static.internal."},
	} {
		if got := askFrom(t, se, c.client, c.name, dns.TypeA); got != c.want {
			t.Errorf("%s from %s: got %q, want %q", c.name, c.client, got, c.want)
		}
	}
}

// TestAnswersCountedByClass: each answer is counted once under the server
// that asked, the instance's zones and the class of the client, including
// when one instance serves two servers in turn.
func TestAnswersCountedByClass(t *testing.T) {
	st := storeFrom(t, entry.Options{}, reachEntries)
	st.clients = reachClients(t)
	se := (&ServiceEntry{Zones: []string{"internal."}, TTL: 30, clients: clientsByPod,
		zonesLabel: "counted.internal."}).attach(st)
	count := func(server string, class reach.Class) float64 {
		var m dto.Metric
		if err := answersTotal.WithLabelValues(server, se.zonesLabel, class.String()).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	asks := []struct {
		server, client string
		class          reach.Class
	}{
		{"dns://:1053", ambientClient, reach.Mesh},
		{"dns://:1053", sidecarClient, reach.DeclaredOnly},
		{"dns://:1054", plainClient, reach.Outside},
		{"dns://:1053", plainClient, reach.Outside},
		{"dns://:1054", ambientClient, reach.Mesh},
	}
	for _, a := range asks {
		before := count(a.server, a.class)
		ctx := context.WithValue(context.Background(), dnsserver.Key{}, &dnsserver.Server{Addr: a.server})
		rec := dnstest.NewRecorder(&test.ResponseWriter{RemoteIP: a.client})
		se.ServeDNS(ctx, rec, new(dns.Msg).SetQuestion("static.internal.", dns.TypeA))
		if rec.Msg == nil || len(rec.Msg.Answer) == 0 {
			t.Fatalf("%s from %s: not answered", a.server, a.client)
		}
		if got := count(a.server, a.class) - before; got != 1 {
			t.Errorf("%s from %s: counted %v times under class %s, want once", a.server, a.client, got, a.class)
		}
	}
}

// TestResponsesCountedByResult: each query for a name the plugin looks up is
// counted once under what it did with it: answered, a search-path expansion
// answered, NODATA, NXDOMAIN, or handed on.
func TestResponsesCountedByResult(t *testing.T) {
	st := storeFrom(t, entry.Options{}, reachEntries)
	st.clients = reachClients(t)
	var asked int
	authority := (&ServiceEntry{Zones: []string{"internal."}, TTL: 30, clients: clientsByPod, zonesLabel: "results.internal."}).attach(st)
	searching := (&ServiceEntry{Zones: []string{"."}, Fall: fall.Root, TTL: 30, ClusterDomains: []string{"cluster.local."},
		SearchDomains: []string{"cluster.local."}, Next: fakeKubernetes(&asked, "cluster.local."), clients: clientsByPod,
		zonesLabel: "results.searching."}).attach(st)
	count := func(se *ServiceEntry, r result) float64 {
		var m dto.Metric
		if err := responsesTotal.WithLabelValues("dns://:1053", se.zonesLabel, resultNames[r]).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	for _, c := range []struct {
		se           *ServiceEntry
		name, client string
		qtype        uint16
		want         result
	}{
		{authority, "static.internal.", plainClient, dns.TypeA, resultAnswered},
		{authority, "static.internal.", plainClient, dns.TypeTXT, resultNoData},
		{authority, "nothing.internal.", plainClient, dns.TypeA, resultNXDomain},
		{authority, "auto.internal.", plainClient, dns.TypeA, resultPassedOn},
		{searching, "auto.internal.ns.svc.cluster.local.", ambientClient, dns.TypeA, resultSearchpath},
		{searching, "auto.internal.ns.svc.cluster.local.", plainClient, dns.TypeA, resultPassedOn},
	} {
		var before [results]float64
		for r := range results {
			before[r] = count(c.se, r)
		}
		ctx := context.WithValue(context.Background(), dnsserver.Key{}, &dnsserver.Server{Addr: "dns://:1053"})
		c.se.ServeDNS(ctx, dnstest.NewRecorder(&test.ResponseWriter{RemoteIP: c.client}), new(dns.Msg).SetQuestion(c.name, c.qtype))
		for r := range results {
			want := 0.0
			if r == c.want {
				want = 1
			}
			if got := count(c.se, r) - before[r]; got != want {
				t.Errorf("%s %s from %s: counted %v times as %s, want %v", c.name, dns.TypeToString[c.qtype], c.client, got, resultNames[r], want)
			}
		}
	}
}

// TestSelectorEntriesAnswerOutsideClients: a STATIC, DNS or DNS_ROUND_ROBIN
// entry with a workload selector sends Envoy to the workloads it selects, so
// a client that cannot route its mesh address gets theirs (DNS_ROUND_ROBIN:
// the first), pods first, and follows their changes; a selector that picks
// no workload with an address leaves nothing reachable: passed on.
func TestSelectorEntriesAnswerOutsideClients(t *testing.T) {
	st := storeFrom(t, entry.Options{}, `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sel-static, namespace: ns}
spec: {hosts: [sel-static.internal], resolution: STATIC, ports: [{name: http, number: 80}], workloadSelector: {labels: {app: api}}}
status: {addresses: [{host: sel-static.internal, value: 240.240.0.11}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sel-dns, namespace: ns}
spec: {hosts: [sel-dns.internal], resolution: DNS, ports: [{name: http, number: 80}], workloadSelector: {labels: {app: api}}}
status: {addresses: [{host: sel-dns.internal, value: 240.240.0.12}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sel-rr, namespace: ns}
spec: {hosts: [sel-rr.internal], resolution: DNS_ROUND_ROBIN, ports: [{name: http, number: 80}], workloadSelector: {labels: {app: api}}}
status: {addresses: [{host: sel-rr.internal, value: 240.240.0.13}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sel-declared, namespace: ns}
spec: {hosts: [sel-declared.internal], addresses: [10.9.0.14], resolution: STATIC, ports: [{name: http, number: 80}], workloadSelector: {labels: {app: api}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sel-nothing, namespace: ns}
spec: {hosts: [sel-nothing.internal], resolution: STATIC, ports: [{name: http, number: 80}], workloadSelector: {labels: {app: nothing}}}
status: {addresses: [{host: sel-nothing.internal, value: 240.240.0.15}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-b, namespace: ns}
spec: {address: 192.0.2.92, labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-a, namespace: ns}
spec: {address: 192.0.2.91, labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-vm, namespace: ns}
spec: {address: api.example.com, labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-x, namespace: other}
spec: {address: 192.0.2.99, labels: {app: api}}
`)
	pod := func(addrs ...string) map[entry.Key]*entry.Workload {
		var ips []netip.Addr
		for _, a := range addrs {
			ips = append(ips, netip.MustParseAddr(a))
		}
		w := entry.NewWorkload(entry.PodKey("ns/api-0"), entry.MakeLabels(map[string]string{"app": "api"}), ips...)
		return map[entry.Key]*entry.Workload{w.Key: w}
	}
	st.SetWorkloads(pod("192.0.2.90"))
	st.clients = reachClients(t)
	se := (&ServiceEntry{Zones: []string{"internal."}, TTL: 30, clients: clientsByPod}).attach(st)
	check := func(when string, answers map[string]map[string]string) {
		t.Helper()
		for name, byClient := range answers {
			for client, want := range byClient {
				if got := askFrom(t, se, client, name, dns.TypeA); got != want {
					t.Errorf("%s: %s from %s: got %q, want %q", when, name, client, got, want)
				}
			}
		}
	}
	all := "NOERROR 192.0.2.90 192.0.2.91 192.0.2.92"
	check("pod ready", map[string]map[string]string{
		"sel-static.internal.":   {ambientClient: "NOERROR 240.240.0.11", plainClient: all, sidecarClient: all},
		"sel-dns.internal.":      {ambientClient: "NOERROR 240.240.0.12", plainClient: all},
		"sel-rr.internal.":       {ambientClient: "NOERROR 240.240.0.13", plainClient: "NOERROR 192.0.2.90"},
		"sel-declared.internal.": {ambientClient: "NOERROR 10.9.0.14", sidecarClient: "NOERROR 10.9.0.14", plainClient: all},
		"sel-nothing.internal.":  {ambientClient: "NOERROR 240.240.0.15", plainClient: passedOn},
	})
	st.SetWorkloads(pod())
	check("pod unready", map[string]map[string]string{
		"sel-static.internal.": {plainClient: "NOERROR 192.0.2.91 192.0.2.92"},
		"sel-rr.internal.":     {plainClient: "NOERROR 192.0.2.91"},
	})
}

// TestSelectorEntryIsNotResolvedByEnvoy: a DNS entry with a workload
// selector sends Envoy to the workloads it selects, not to its own host, so a
// sidecar without DNS capture gets the entry's declared address like any
// declared host, instead of the real answer of the host.
func TestSelectorEntryIsNotResolvedByEnvoy(t *testing.T) {
	st := storeFrom(t, entry.Options{}, `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: selects, namespace: ns}
spec: {hosts: [selects.internal], addresses: [10.9.0.3], resolution: DNS, workloadSelector: {labels: {app: db}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: own, namespace: ns}
spec: {hosts: [own.internal], addresses: [10.9.0.4], resolution: DNS}
`)
	st.clients = reachClients(t)
	se := (&ServiceEntry{Zones: []string{"internal."}, TTL: 30, clients: clientsByPod}).attach(st)
	for name, want := range map[string]string{"selects.internal.": "NOERROR 10.9.0.3", "own.internal.": passedOn} {
		if got := askFrom(t, se, sidecarClient, name, dns.TypeA); got != want {
			t.Errorf("%s from a sidecar without DNS capture: got %q, want %q", name, got, want)
		}
	}
}
