package serviceentry

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
)

// headlessScale is issue 25's scale: 10,000 headless entries selecting
// 100,000 pods, spread over namespaces (perNamespace entries in each, every
// entry selecting its own app's pods) or all in one namespace.
type headlessScale struct {
	entries, pods, namespaces int
}

func (s headlessScale) build() (map[entry.Key]*entry.Entry, map[entry.Key]*entry.Workload) {
	entries := make(map[entry.Key]*entry.Entry, s.entries)
	ports := []entry.Port{{Name: "tcp", Number: 5432}}
	for i := range s.entries {
		ns := fmt.Sprintf("ns-%d", i%s.namespaces)
		name := fmt.Sprintf("db-%d", i)
		e := &entry.Entry{Key: entry.ServiceEntryKey(ns + "/" + name), Headless: true, Ports: ports,
			Hosts:  []entry.Host{{Name: name + "." + ns + ".internal"}},
			Extras: &entry.Extras{Selector: entry.SelectorOf(map[string]string{"app": name})}}
		entries[e.Key] = e
	}
	return entries, s.workloads(0)
}

// workloads makes the pods, pods/entries to each entry's app, with a
// pod-template-hash shared by its ReplicaSet and addresses from base. Each
// is filed under its own key, one string per pod, as the pod source files
// them.
func (s headlessScale) workloads(base int) map[entry.Key]*entry.Workload {
	out := make(map[entry.Key]*entry.Workload, s.pods)
	for j := range s.pods {
		w := s.podOf(j%s.entries, j, base)
		out[w.Key] = w
	}
	return out
}

func (s headlessScale) pod(i, j, _ int) entry.Key {
	return entry.PodKey(fmt.Sprintf("ns-%d/db-%d-%d", i%s.namespaces, i, j))
}

func (s headlessScale) podOf(i, j, base int) *entry.Workload {
	key := s.pod(i, j, base)
	n := j + base
	return entry.NewWorkload(key,
		entry.MakeLabels(map[string]string{"app": fmt.Sprintf("db-%d", i), "pod-template-hash": "5d8f7c9b6"}),
		netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}))
}

// BenchmarkWorkloadEvent is the store's cost of one pod event (a pod's
// address changes) at issue 25's scale, with the table published: what the
// pod reader's goroutine pays per event.
func BenchmarkWorkloadEvent(b *testing.B) {
	for _, s := range []struct {
		name  string
		scale headlessScale
	}{
		{"spread", headlessScale{entries: 10_000, pods: 100_000, namespaces: 1_000}},
		{"one-namespace", headlessScale{entries: 10_000, pods: 100_000, namespaces: 1}},
	} {
		b.Run(s.name, func(b *testing.B) {
			entries, pods := s.scale.build()
			st := newStore(false)
			st.ReplaceAll(entries, pods)
			st.MarkSynced()
			b.ReportAllocs()
			b.ResetTimer()
			n := 0
			for b.Loop() {
				j := n % s.scale.pods
				i := j % s.scale.entries
				n++
				st.SetWorkloads(map[entry.Key]*entry.Workload{s.scale.pod(i, j, 0): s.scale.podOf(i, j, 1_000_000*(n%2))})
			}
		})
	}
}

// BenchmarkHeadlessMemory reports the heap the store keeps per headless
// entry (with its table) and per selected pod, at issue 25's scale, as the
// first iteration measures it: the interning maps of package unique keep
// their grown structure after a store is gone, so later iterations would
// pay less than a process does.
func BenchmarkHeadlessMemory(b *testing.B) {
	scale := headlessScale{entries: 10_000, pods: 100_000, namespaces: 1_000}
	first := true
	for b.Loop() {
		before := sourcetest.LiveHeap()
		st := newStore(false)
		entries, _ := headlessScale{entries: scale.entries, namespaces: scale.namespaces}.build()
		st.ReplaceAll(entries, nil)
		st.MarkSynced()
		entries = nil // the store keeps what it needs
		withEntries := sourcetest.LiveHeap()
		st.ReplaceWorkloads(entry.KindPod, []string{""}, scale.workloads(0))
		withPods := sourcetest.LiveHeap()
		if got := lookupIn(st.table(), "db-7.ns-7.internal").For(reach.Outside, false).A().Len(); got != scale.pods/scale.entries {
			b.Fatalf("db-7 answers %d addresses, want %d", got, scale.pods/scale.entries)
		}
		if first {
			b.ReportMetric(float64(withEntries-before)/float64(scale.entries), "B/entry")
			b.ReportMetric(float64(withPods-withEntries)/float64(scale.pods), "B/pod")
			first = false
		}
		runtime.KeepAlive(st)
	}
}
