package serviceentry

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/miekg/dns"
)

// headlessEntries are headless entries (resolution NONE, no addresses, a
// port) and the WorkloadEntries their selectors pick from, with one of each
// case Istio's name table and ServiceEntry controller tell apart.
const headlessEntries = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: ns}
spec:
  hosts: [db.internal, db-alias.internal]
  resolution: NONE
  ports: [{name: tcp, number: 5432, protocol: TCP}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-1, namespace: ns}
spec: {address: 192.0.2.1, labels: {app: db, version: v1}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: db-2, namespace: ns}
spec: {address: "2001:db8::2", labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-3-same-address, namespace: ns}
spec: {address: 192.0.2.1, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: db-unhealthy
  namespace: ns
  annotations: {proxy.istio.io/health-checks-enabled: "true"}
spec: {address: 192.0.2.4, labels: {app: db}}
status: {conditions: [{type: Healthy, status: "False"}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: db-healthy
  namespace: ns
  annotations: {proxy.istio.io/health-checks-enabled: "true"}
spec: {address: 192.0.2.5, labels: {app: db}}
status: {conditions: [{type: Healthy, status: "True"}, {type: Healthy, status: "False"}]}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: db-unchecked
  namespace: ns
  annotations: {proxy.istio.io/health-checks-enabled: "true"}
spec: {address: 192.0.2.6, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-by-name, namespace: ns}
spec: {address: vm.example.com, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-elsewhere, namespace: other}
spec: {address: 192.0.2.7, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: ns}
spec: {address: 192.0.2.8, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: nobody, namespace: ns}
spec:
  hosts: [nobody.internal]
  resolution: NONE
  ports: [{name: tcp, number: 80, protocol: TCP}]
  workloadSelector: {labels: {app: nothing}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: everyone, namespace: ns}
spec:
  hosts: [everyone.internal]
  resolution: NONE
  ports: [{name: tcp, number: 80, protocol: TCP}]
  workloadSelector: {}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: no-ports, namespace: ns}
spec:
  hosts: [no-ports.internal]
  resolution: NONE
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inline, namespace: ns}
spec:
  hosts: [inline.internal]
  resolution: NONE
  ports: [{name: tcp, number: 80, protocol: TCP}]
  endpoints: [{address: 198.51.100.1}, {address: named.example.com}, {address: "2001:db8::9"}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: static-selector, namespace: ns}
spec:
  hosts: [static-selector.internal]
  addresses: [10.9.0.1]
  resolution: NONE
  ports: [{name: tcp, number: 80, protocol: TCP}]
  workloadSelector: {labels: {app: db}}
`

// TestHeadlessAnswers: a headless entry answers with the addresses of the
// workloads its selector picks in its namespace (healthy, by IP, without
// duplicates), to every client, as Istio's name table does; an entry with
// addresses or without ports is not headless; one whose selector picks
// nothing is not ours.
func TestHeadlessAnswers(t *testing.T) {
	st := storeFrom(t, entry.Options{}, headlessEntries)
	st.clients = reachClients(t)
	se := (&ServiceEntry{Zones: []string{"internal.", "in-addr.arpa."}, TTL: 30, clients: clientsByPod}).attach(st)
	everyClient := func(answer string) map[string]string {
		return map[string]string{ambientClient: answer, captureClient: answer, sidecarClient: answer, plainClient: answer, unknownClient: answer}
	}
	for _, c := range []struct {
		name    string
		qtype   uint16
		answers map[string]string
	}{
		{"db.internal.", dns.TypeA, everyClient("NOERROR 192.0.2.1 192.0.2.5")},
		{"db-alias.internal.", dns.TypeA, everyClient("NOERROR 192.0.2.1 192.0.2.5")},
		{"db.internal.", dns.TypeAAAA, everyClient("NOERROR 2001:db8::2")},
		{"_tcp._tcp.db.internal.", dns.TypeSRV, everyClient("NOERROR 0 100 5432 db.internal.")},
		{"1.2.0.192.in-addr.arpa.", dns.TypePTR, everyClient("NOERROR db-alias.internal. db.internal. everyone.internal.")},
		{"nobody.internal.", dns.TypeA, everyClient("NXDOMAIN")},
		{"everyone.internal.", dns.TypeA, everyClient("NOERROR 192.0.2.1 192.0.2.5 192.0.2.8")},
		{"no-ports.internal.", dns.TypeA, everyClient("NXDOMAIN")},
		{"inline.internal.", dns.TypeA, everyClient("NOERROR 198.51.100.1")},
		{"inline.internal.", dns.TypeAAAA, everyClient("NOERROR 2001:db8::9")},
		{"static-selector.internal.", dns.TypeA, everyClient("NOERROR 10.9.0.1")},
	} {
		for client, want := range c.answers {
			if got := askFrom(t, se, client, c.name, c.qtype); got != want {
				t.Errorf("%s %s from %s: got %q, want %q", c.name, dns.TypeToString[c.qtype], client, got, want)
			}
		}
	}
	if n := st.skipped.counts()[entry.ReasonInvalidAddress]; n != 0 {
		t.Errorf("%d invalid_address skips; a host-name WorkloadEntry is Istio's, not an error", n)
	}
}

// TestHeadlessWorkloadChanges: a workload that appears, changes its address
// or labels, turns unready or goes is answered at once, and rebuilds only
// the hosts of the entries that select it.
func TestHeadlessWorkloadChanges(t *testing.T) {
	st := storeFrom(t, entry.Options{}, headlessEntries)
	pod := func(name, ip string, labels map[string]string) *entry.Workload {
		w := &entry.Workload{Key: entry.PodKey("ns/" + name), Labels: entry.MakeLabels(labels)}
		if ip != "" {
			w.SetAddrs([]netip.Addr{netip.MustParseAddr(ip)})
		}
		return w
	}
	db := map[string]string{"app": "db"}
	untouched := lookupIn(st.table(), "inline.internal")
	for _, step := range []struct {
		name    string
		apply   func()
		db, all string
	}{
		{"a ready pod appears", func() { st.SetWorkloads(map[entry.Key]*entry.Workload{entry.PodKey("ns/p"): pod("p", "10.0.0.1", db)}) },
			"10.0.0.1 192.0.2.1 192.0.2.5 2001:db8::2", "10.0.0.1 192.0.2.1 192.0.2.5 192.0.2.8 2001:db8::2"},
		{"its address changes", func() { st.SetWorkloads(map[entry.Key]*entry.Workload{entry.PodKey("ns/p"): pod("p", "10.0.0.2", db)}) },
			"10.0.0.2 192.0.2.1 192.0.2.5 2001:db8::2", "10.0.0.2 192.0.2.1 192.0.2.5 192.0.2.8 2001:db8::2"},
		{"its labels change", func() {
			st.SetWorkloads(map[entry.Key]*entry.Workload{entry.PodKey("ns/p"): pod("p", "10.0.0.2", map[string]string{"app": "other"})})
		}, "192.0.2.1 192.0.2.5 2001:db8::2", "10.0.0.2 192.0.2.1 192.0.2.5 192.0.2.8 2001:db8::2"},
		{"it turns unready", func() { st.SetWorkloads(map[entry.Key]*entry.Workload{entry.PodKey("ns/p"): pod("p", "", db)}) },
			"192.0.2.1 192.0.2.5 2001:db8::2", "192.0.2.1 192.0.2.5 192.0.2.8 2001:db8::2"},
		{"a relist of the namespace's pods", func() {
			st.ReplaceWorkloads(entry.KindPod, []string{"ns"}, map[entry.Key]*entry.Workload{entry.PodKey("ns/q"): pod("q", "10.0.0.3", db)})
		}, "10.0.0.3 192.0.2.1 192.0.2.5 2001:db8::2", "10.0.0.3 192.0.2.1 192.0.2.5 192.0.2.8 2001:db8::2"},
		{"a relist without it", func() { st.ReplaceWorkloads(entry.KindPod, []string{""}, nil) },
			"192.0.2.1 192.0.2.5 2001:db8::2", "192.0.2.1 192.0.2.5 192.0.2.8 2001:db8::2"},
		{"a WorkloadEntry goes", func() { st.SetWorkloads(map[entry.Key]*entry.Workload{entry.WorkloadEntryKey("ns/db-1"): nil}) },
			"192.0.2.1 192.0.2.5 2001:db8::2", "192.0.2.1 192.0.2.5 192.0.2.8 2001:db8::2"},
		{"and its twin at the same address", func() {
			st.SetWorkloads(map[entry.Key]*entry.Workload{entry.WorkloadEntryKey("ns/db-3-same-address"): nil})
		}, "192.0.2.5 2001:db8::2", "192.0.2.5 192.0.2.8 2001:db8::2"},
	} {
		step.apply()
		if got := answerAddrs(lookupIn(st.table(), "db.internal")); got != step.db {
			t.Errorf("%s: db.internal %q, want %q", step.name, got, step.db)
		}
		if got := answerAddrs(lookupIn(st.table(), "everyone.internal")); got != step.all {
			t.Errorf("%s: everyone.internal %q, want %q", step.name, got, step.all)
		}
		if got := lookupIn(st.table(), "inline.internal"); got != untouched {
			t.Errorf("%s: inline.internal, which selects nothing, was rebuilt", step.name)
		}
	}
}

// TestHeadlessIndexAgainstScan: under random changes of workloads and of
// selecting entries, in any order, each headless entry answers with what a
// scan of every workload of its namespace picks.
func TestHeadlessIndexAgainstScan(t *testing.T) {
	r := rand.New(rand.NewPCG(25, 25))
	apps := []string{"a", "b", "c"}
	namespaces := []string{"x", "y"}
	labelsOf := func() map[string]string {
		l := map[string]string{"app": apps[r.IntN(len(apps))]}
		if r.IntN(2) == 0 {
			l["v"] = apps[r.IntN(len(apps))]
		}
		return l
	}
	st := newStore(false)
	st.MarkSynced()
	entries := map[entry.Key]*entry.Entry{}
	workloads := map[entry.Key]*entry.Workload{}
	for op := range 3000 {
		ns := namespaces[r.IntN(len(namespaces))]
		switch r.IntN(3) {
		case 0: // an entry appears, changes its selector, or goes
			name := fmt.Sprintf("e%d", r.IntN(8))
			key := entry.ServiceEntryKey(ns + "/" + name)
			var e *entry.Entry
			if r.IntN(4) > 0 {
				selector := labelsOf()
				if r.IntN(10) == 0 {
					selector = map[string]string{}
				}
				e = &entry.Entry{Key: key, Headless: true, Extras: &entry.Extras{Selector: entry.SelectorOf(selector)},
					Ports: []entry.Port{{Name: "tcp", Number: 80}}, Hosts: []entry.Host{{Name: name + "." + ns + ".internal"}}}
				entries[key] = e
			} else {
				delete(entries, key)
			}
			st.Upsert(key, e)
		default: // a workload appears, changes, turns unready or goes
			key := entry.PodKey(fmt.Sprintf("%s/p%d", ns, r.IntN(30)))
			var w *entry.Workload
			if r.IntN(5) > 0 {
				w = &entry.Workload{Key: key, Labels: entry.MakeLabels(labelsOf())}
				if r.IntN(5) > 0 {
					w.SetAddrs([]netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(r.IntN(40))})})
				}
				workloads[key] = w
			} else {
				delete(workloads, key)
			}
			st.SetWorkloads(map[entry.Key]*entry.Workload{key: w})
		}
		for _, e := range entries {
			var want []string
			for _, w := range workloads {
				if w.Namespace() != e.Namespace() || !w.Labels.Selects(e.Selector()) {
					continue
				}
				for ip := range w.Addrs() {
					if !slices.Contains(want, ip.String()) {
						want = append(want, ip.String())
					}
				}
			}
			slices.Sort(want)
			if got := answerAddrs(lookupIn(st.table(), e.Hosts[0].Name)); got != strings.Join(want, " ") {
				t.Fatalf("op %d: %s answers %q, want %q", op, e.Hosts[0].Name, got, strings.Join(want, " "))
			}
		}
	}
}
