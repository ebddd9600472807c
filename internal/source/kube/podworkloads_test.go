package kube

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
)

// fillStep is one thing that happens to a podWorkloads, and what the sink
// holds after it (nil: not checked).
type fillStep struct {
	do   func(h *fillHarness)
	want map[string]string // pod namespace/name -> address
}

// fillHarness drives a podWorkloads whose namespace lists the test answers.
type fillHarness struct {
	t     *testing.T
	w     *podWorkloads
	sink  *sourcetest.Sink
	calls chan listCall
	held  *listCall // a list call not answered yet
}

type listCall struct {
	ns    string
	reply chan listReply
}

type listReply struct {
	pods    map[entry.Key]*entry.Workload
	version string
	err     error
}

func newFillHarness(t *testing.T) *fillHarness {
	h := &fillHarness{t: t, sink: sourcetest.NewSink(), calls: make(chan listCall)}
	h.w = newPodWorkloads(h.sink, func(ctx context.Context, ns string) (map[entry.Key]*entry.Workload, string, error) {
		reply := make(chan listReply)
		select {
		case h.calls <- listCall{ns: ns, reply: reply}:
		case <-ctx.Done():
			return nil, "", ctx.Err()
		}
		select {
		case r := <-reply:
			return r.pods, r.version, r.err
		case <-ctx.Done():
			return nil, "", ctx.Err()
		}
	})
	h.w.start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.w.run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return h
}

// workload is a pod of ns/name at addr ("" for a pod that is gone).
func workload(key, addr string) *entry.Workload {
	if addr == "" {
		return nil
	}
	return entry.NewWorkload(entry.PodKey(key), entry.Labels{}, netip.MustParseAddr(addr))
}

// pods is a list of pods, namespace/name -> address.
func pods(m map[string]string) map[entry.Key]*entry.Workload {
	out := make(map[entry.Key]*entry.Workload, len(m))
	for key, addr := range m {
		out[entry.PodKey(key)] = workload(key, addr)
	}
	return out
}

func selectIn(ns, name string) func(*fillHarness) {
	return func(h *fillHarness) { h.w.entriesChanged(selecting(ns, name)) }
}

func unselectIn(ns, name string) func(*fillHarness) {
	return func(h *fillHarness) {
		h.w.entriesChanged(map[entry.Key]*entry.Entry{entry.ServiceEntryKey(ns + "/" + name): nil})
	}
}

// event is a pod's change (addr "": deleted) at version.
func event(key, addr, version string) func(*fillHarness) {
	return func(h *fillHarness) { h.w.changed(key, workload(key, addr), version) }
}

// relist is a reflector's list of scope at version.
func relist(scope string, listed map[string]string, version string) func(*fillHarness) {
	return func(h *fillHarness) {
		var claims []*podClaim
		for key, addr := range listed {
			claims = append(claims, &podClaim{keyed: keyed{key}, version: version, workload: workload(key, addr)})
		}
		h.w.replaced(scope, claims, version)
	}
}

// listing waits for the fill's list of ns and holds it unanswered.
func listing(ns string) func(*fillHarness) {
	return func(h *fillHarness) {
		h.t.Helper()
		select {
		case c := <-h.calls:
			if c.ns != ns {
				h.t.Fatalf("listed namespace %q, want %q", c.ns, ns)
			}
			h.held = &c
		case <-time.After(5 * time.Second):
			h.t.Fatalf("namespace %q was never listed", ns)
		}
	}
}

// answered answers the list held.
func answered(listed map[string]string, version string, err error) func(*fillHarness) {
	return func(h *fillHarness) {
		h.held.reply <- listReply{pods: pods(listed), version: version, err: err}
		h.held = nil
	}
}

// listedAs waits for the fill's list of ns and answers it.
func listedAs(ns string, listed map[string]string, version string, err error) func(*fillHarness) {
	return func(h *fillHarness) {
		listing(ns)(h)
		answered(listed, version, err)(h)
	}
}

// sinkPods is what the sink holds of the pods: namespace/name -> address.
func (h *fillHarness) sinkPods() map[string]string {
	out := make(map[string]string)
	for key, w := range h.sink.Workloads() {
		if key.Kind == entry.KindPod {
			out[key.Name] = slices.Collect(w.Addrs())[0].String()
		}
	}
	return out
}

// TestPodWorkloadsFill: only the pods of namespaces where an entry selects
// reach the sink, each from a complete list of its namespace, and whichever
// of a list and an event is newer by resource version wins, in whatever
// order they arrive.
// none is a list of no pods.
func none() map[string]string { return map[string]string{} }

func TestPodWorkloadsFill(t *testing.T) {
	none := none()
	listErr := errors.New("the API server is down")
	for _, tc := range []struct {
		name  string
		steps []fillStep
	}{
		{"a namespace no entry selects in never reaches the sink", []fillStep{
			{relist("", map[string]string{"ns1/a": "10.0.0.1"}, "5"), none},
			{event("ns1/b", "10.0.0.2", "6"), none},
		}},
		{"selected before the first list: that list fills it", []fillStep{
			{selectIn("ns1", "db"), none},
			{relist("", map[string]string{"ns1/a": "10.0.0.1", "ns2/x": "10.0.2.1"}, "5"), map[string]string{"ns1/a": "10.0.0.1"}},
			{event("ns1/b", "10.0.0.2", "6"), map[string]string{"ns1/a": "10.0.0.1", "ns1/b": "10.0.0.2"}},
			{event("ns2/y", "10.0.2.2", "7"), map[string]string{"ns1/a": "10.0.0.1", "ns1/b": "10.0.0.2"}},
		}},
		{"selected later: a list of its own, with the events newer than it", []fillStep{
			{relist("", none, "5"), none},
			{selectIn("ns1", "db"), none},
			{event("ns1/a", "10.0.0.2", "8"), none},
			{event("ns1/c", "10.0.0.3", "6"), none},
			// c's event is older than the list, which no longer holds c.
			{listedAs("ns1", map[string]string{"ns1/a": "10.0.0.1", "ns1/b": "10.0.0.9"}, "7", nil),
				map[string]string{"ns1/a": "10.0.0.2", "ns1/b": "10.0.0.9"}},
			{event("ns1/b", "", "7"), map[string]string{"ns1/a": "10.0.0.2", "ns1/b": "10.0.0.9"}},
			{event("ns1/b", "", "9"), map[string]string{"ns1/a": "10.0.0.2"}},
		}},
		{"a relist older than the fill leaves the namespace alone", []fillStep{
			{relist("", none, "5"), none},
			{selectIn("ns1", "db"), none},
			{listedAs("ns1", map[string]string{"ns1/a": "10.0.0.1"}, "7", nil), map[string]string{"ns1/a": "10.0.0.1"}},
			{relist("", map[string]string{"ns1/old": "10.0.0.5"}, "6"), map[string]string{"ns1/a": "10.0.0.1"}},
			{relist("", map[string]string{"ns1/new": "10.0.0.6"}, "10"), map[string]string{"ns1/new": "10.0.0.6"}},
		}},
		{"a relist during a fill fills it, and the fill's list is dropped", []fillStep{
			{relist("", none, "5"), none},
			{selectIn("ns1", "db"), none},
			{listing("ns1"), none},
			{relist("", map[string]string{"ns1/r": "10.0.0.8"}, "8"), map[string]string{"ns1/r": "10.0.0.8"}},
			{answered(map[string]string{"ns1/l": "10.0.0.7"}, "7", nil), nil},
			{event("ns1/r", "10.0.0.9", "9"), map[string]string{"ns1/r": "10.0.0.9"}},
		}},
		{"the last selecting entry goes: so do the namespace's pods", []fillStep{
			{selectIn("ns1", "db"), none},
			{selectIn("ns1", "cache"), none},
			{relist("", map[string]string{"ns1/a": "10.0.0.1"}, "5"), map[string]string{"ns1/a": "10.0.0.1"}},
			{unselectIn("ns1", "db"), map[string]string{"ns1/a": "10.0.0.1"}},
			{unselectIn("ns1", "cache"), none},
			{event("ns1/b", "10.0.0.2", "6"), none},
		}},
		{"selected, unselected and selected again while listing: only the last list counts", []fillStep{
			{relist("", none, "5"), none},
			{selectIn("ns1", "db"), none},
			{listing("ns1"), none},
			{unselectIn("ns1", "db"), none},
			{selectIn("ns1", "db"), none},
			// The first list began before the namespace was dropped:
			// the events in between were never held for it.
			{answered(map[string]string{"ns1/stale": "10.0.0.1"}, "6", nil), nil},
			// One list at a time: the first is done with when the
			// second begins.
			{listing("ns1"), none},
			{answered(map[string]string{"ns1/fresh": "10.0.0.2"}, "9", nil), map[string]string{"ns1/fresh": "10.0.0.2"}},
		}},
		{"a list that fails is tried again", []fillStep{
			{relist("", none, "5"), none},
			{selectIn("ns1", "db"), none},
			{listedAs("ns1", nil, "", listErr), none},
			{listedAs("ns1", map[string]string{"ns1/a": "10.0.0.1"}, "7", nil), map[string]string{"ns1/a": "10.0.0.1"}},
		}},
		{"a namespace's own reflector fills it; another's list does not", []fillStep{
			{selectIn("ns1", "db"), none},
			{relist("ns2", map[string]string{"ns2/x": "10.0.2.1"}, "5"), none},
			{relist("ns1", map[string]string{"ns1/a": "10.0.0.1"}, "6"), map[string]string{"ns1/a": "10.0.0.1"}},
		}},
		{"versions an API server would not give are applied in order of arrival", []fillStep{
			{selectIn("ns1", "db"), none},
			{relist("", map[string]string{"ns1/a": "10.0.0.1"}, ""), map[string]string{"ns1/a": "10.0.0.1"}},
			{event("ns1/a", "10.0.0.2", ""), map[string]string{"ns1/a": "10.0.0.2"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFillHarness(t)
			for i, s := range tc.steps {
				s.do(h)
				if s.want == nil {
					continue
				}
				// A fill's list is applied on the worker's goroutine.
				sourcetest.Eventually(t, fmt.Sprintf("after step %d the sink holds %v", i, s.want),
					func() bool { return maps.Equal(h.sinkPods(), s.want) })
			}
			select {
			case c := <-h.calls:
				t.Errorf("namespace %q listed, and nothing needed it", c.ns)
				c.reply <- listReply{err: listErr}
			default:
			}
		})
	}
}

// TestPodWorkloadsSettled: the pod source is synced only once the entries'
// first read is in and every namespace they select in has its pods, so that
// ready never comes before a selecting entry can answer with them. Whichever
// of the two first reads comes first, no namespace is listed on its own: the
// pods' list, when first, is held (with the events after it) until the
// entries' read is in.
func TestPodWorkloadsSettled(t *testing.T) {
	readEntries := func(h *fillHarness) { h.w.readEntries() }
	type step struct {
		what    string
		do      func(*fillHarness)
		settled bool
		pods    map[string]string // what the sink holds after it
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"the pods' first list first", []step{
			{"the pods' first list", relist("", map[string]string{"ns1/a": "10.0.0.1", "ns2/x": "10.0.2.1", "ns3/y": "10.0.3.1"}, "5"), false, none()},
			{"a pod added since", event("ns1/b", "10.0.0.2", "6"), false, none()},
			{"a pod deleted since", event("ns2/x", "", "7"), false, none()},
			{"an entry selects in ns1", selectIn("ns1", "db"), false, map[string]string{"ns1/a": "10.0.0.1", "ns1/b": "10.0.0.2"}},
			{"an entry selects in ns2", selectIn("ns2", "db"), false, map[string]string{"ns1/a": "10.0.0.1", "ns1/b": "10.0.0.2"}},
			{"the entries' first read is in", readEntries, true, map[string]string{"ns1/a": "10.0.0.1", "ns1/b": "10.0.0.2"}},
			{"an event in a selected namespace", event("ns2/z", "10.0.2.3", "8"), true,
				map[string]string{"ns1/a": "10.0.0.1", "ns1/b": "10.0.0.2", "ns2/z": "10.0.2.3"}},
		}},
		{"one batch: the namespace's last selecting entry goes, another comes", []step{
			{"an entry selects in ns1", selectIn("ns1", "db"), false, none()},
			{"the pods' first list", relist("", map[string]string{"ns1/a": "10.0.0.1"}, "5"), false, map[string]string{"ns1/a": "10.0.0.1"}},
			{"db goes and cache comes, in one batch", func(h *fillHarness) {
				h.w.entriesChanged(map[entry.Key]*entry.Entry{
					entry.ServiceEntryKey("ns1/db"):    nil,
					entry.ServiceEntryKey("ns1/cache"): selecting("ns1", "cache")[entry.ServiceEntryKey("ns1/cache")],
				})
			}, false, map[string]string{"ns1/a": "10.0.0.1"}},
			{"the entries' first read is in", readEntries, true, map[string]string{"ns1/a": "10.0.0.1"}},
		}},
		{"the entries' first read first", []step{
			{"an entry selects in ns1", selectIn("ns1", "db"), false, none()},
			{"the entries' first read is in", readEntries, false, none()},
			{"the pods' first list", relist("", map[string]string{"ns1/a": "10.0.0.1", "ns2/x": "10.0.2.1"}, "5"), true, map[string]string{"ns1/a": "10.0.0.1"}},
		}},
	} {
		// Repeated: a batch's changes come in map order.
		for range 20 {
			t.Run(tc.name, func(t *testing.T) {
				h := newFillHarness(t)
				h.w.awaitEntries()
				for _, s := range tc.steps {
					s.do(h)
					select {
					case <-h.w.settled:
						if !s.settled {
							t.Fatalf("%s: settled too early", s.what)
						}
					default:
						if s.settled {
							t.Fatalf("%s: not settled", s.what)
						}
					}
					if got := h.sinkPods(); !maps.Equal(got, s.pods) {
						t.Fatalf("%s: the sink holds %v, want %v", s.what, got, s.pods)
					}
				}
				select {
				case c := <-h.calls:
					t.Errorf("namespace %q listed on its own", c.ns)
					c.reply <- listReply{err: errors.New("not wanted")}
				default:
				}
			})
		}
	}
}
