package kube

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/source"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/util/workqueue"
)

// podWorkloads decides which pods reach the sink as workloads: those of the
// namespaces where some ServiceEntry selects workloads
// (entry.Entry.SelectsWorkloads). Every pod is a client (the index), but
// most pods of a cluster live where no entry selects, and the store would
// keep each of them for nothing.
//
// A namespace's pods reach the sink from a complete list of them: the pod
// reflector's first list or a relist, or, for a namespace that gains its
// first selecting entry after that, that list held until the entries' first
// read is in (see held), and past it a list of that namespace made for it (a
// fill). Until its list is in, the namespace's pod events wait; after it, an
// event is applied only when it is newer than the list. Lists and events
// carry resource versions, which the API server makes comparable (KEP-5504,
// resourceversion.CompareResourceVersion), so whichever of a fill and the
// watch arrives first, the sink ends with each pod's newest state.
type podWorkloads struct {
	sink source.Sink
	// list reads the workloads of every pod of a namespace, with the list's
	// resource version.
	list func(ctx context.Context, namespace string) (map[entry.Key]*entry.Workload, string, error)

	mu sync.Mutex
	// selecting has the key (namespace/name) of each entry that selects
	// workloads: a set, the namespace being the key's first part.
	selecting  map[string]struct{}
	namespaces map[string]*podNamespace // those with a selecting entry
	listed     map[string]bool          // reflector scopes ("" for all) past their first list
	queue      workqueue.TypedRateLimitingInterface[string]

	// settled is closed once the first read of entries is in and no
	// namespace waits for its fill: until then a selecting entry may be
	// answered without its pods, and the pod source is not synced.
	settled     chan struct{}
	entriesRead bool

	// held are the reflectors' lists taken before the entries' first read
	// is in, by scope, kept up to date by the events since: until that
	// read is in, a namespace gaining its first selecting entry is filled
	// from them. At start both reads run at once; when the pods' comes
	// first, each namespace the entries select in would otherwise be
	// listed again, one at a time (about as long again as the whole first
	// read with a thousand such namespaces). Dropped when the entries'
	// first read is in.
	held map[string]*heldList
}

// heldList is one reflector's list of pods at version, by namespace, with
// the events since applied.
type heldList struct {
	version string
	pods    map[string]map[entry.Key]*entry.Workload
}

// podNamespace is one namespace whose pods are workloads.
type podNamespace struct {
	entries int // selecting entries in it
	// version is the resource version of the list the sink's pods of the
	// namespace come from: an event no newer is in it already.
	version string
	// filling says the namespace's pods are not in the sink yet: its
	// events wait in pending, the last one of each pod, until a list.
	filling bool
	pending map[string]podEvent
}

type podEvent struct {
	workload *entry.Workload // nil: the pod is gone
	version  string
}

// newPodWorkloads hands on to sink the pods of the namespaces where an entry
// selects, listing a namespace with list when no list of the pod reflectors
// fills it. It is settled without waiting for the entries' first read unless
// awaitEntries says otherwise.
func newPodWorkloads(sink source.Sink, list func(context.Context, string) (map[entry.Key]*entry.Workload, string, error)) *podWorkloads {
	return &podWorkloads{sink: sink, list: list, selecting: make(map[string]struct{}),
		namespaces: make(map[string]*podNamespace), listed: make(map[string]bool), settled: make(chan struct{}), entriesRead: true}
}

// awaitEntries makes settled wait for readEntries too: the entries come from
// a source that has not read them yet.
func (w *podWorkloads) awaitEntries() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.entriesRead = false
}

// readEntries says the first read of entries is in: every namespace where
// one of them selects is known.
func (w *podWorkloads) readEntries() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.entriesRead = true
	w.held = nil
	w.settleLocked()
}

// heldFor returns the held list that holds the pods of ns, or nil.
func (w *podWorkloads) heldFor(ns string) *heldList {
	if l := w.held[ns]; l != nil {
		return l
	}
	return w.held[""]
}

// settleLocked closes settled once the entries are read and no namespace
// waits for its list. It looks at the namespaces only until then.
func (w *podWorkloads) settleLocked() {
	select {
	case <-w.settled:
		return
	default:
	}
	if !w.entriesRead {
		return
	}
	for _, n := range w.namespaces {
		if n.filling {
			return
		}
	}
	close(w.settled)
}

// newer reports whether resource version a comes after b. A version that is
// not an API server's (a fake clientset's is empty) cannot be ordered: it
// counts as newer, so that no change is lost.
func newer(a, b string) bool {
	c, err := resourceversion.CompareResourceVersion(a, b)
	return err != nil || c > 0
}

// entriesChanged takes the entries stored under the keys of changes (nil: none
// any more): a namespace gaining its first selecting entry is filled, one
// losing its last has its pods taken out of the sink.
func (w *podWorkloads) entriesChanged(changes map[entry.Key]*entry.Entry) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var emptied []string
	filled := make(map[string]map[entry.Key]*entry.Workload) // from held lists
	for key, e := range changes {
		_, had := w.selecting[key.Name]
		switch has := e != nil && e.SelectsWorkloads(); {
		case has && !had:
			w.selecting[key.Name] = struct{}{}
			w.addEntryLocked(e.Namespace(), filled)
		case had && !has:
			delete(w.selecting, key.Name)
			ns, _, _ := strings.Cut(key.Name, "/")
			n := w.namespaces[ns]
			if n.entries--; n.entries == 0 {
				delete(w.namespaces, ns)
				if !n.filling {
					emptied = append(emptied, ns)
				}
			}
		}
	}
	w.settleLocked()
	// A namespace may have lost its last selecting entry and gained
	// another in one batch, in either order: what is emptied goes first,
	// and a fill counts only for a namespace still selected.
	if len(emptied) > 0 {
		w.sink.ReplaceWorkloads(entry.KindPod, emptied, nil)
	}
	maps.DeleteFunc(filled, func(ns string, _ map[entry.Key]*entry.Workload) bool { return w.namespaces[ns] == nil })
	if len(filled) > 0 {
		all := make(map[entry.Key]*entry.Workload)
		for _, pods := range filled {
			maps.Copy(all, pods)
		}
		w.sink.ReplaceWorkloads(entry.KindPod, slices.Collect(maps.Keys(filled)), all)
	}
}

// addEntryLocked counts one more selecting entry in ns. A namespace that
// gains its first is filled from a held list, its pods added to filled, or
// else by its reflector's first list or a list of its own.
func (w *podWorkloads) addEntryLocked(ns string, filled map[string]map[entry.Key]*entry.Workload) {
	if n := w.namespaces[ns]; n != nil {
		n.entries++
		return
	}
	n := &podNamespace{entries: 1, filling: true, pending: make(map[string]podEvent)}
	w.namespaces[ns] = n
	if l := w.heldFor(ns); l != nil {
		n.version = l.version
		filled[ns] = n.fill(maps.Clone(l.pods[ns]), l.version)
		return
	}
	// Before its reflector's first list, that list fills it.
	if w.queue != nil && (w.listed[""] || w.listed[ns]) {
		w.queue.Add(ns)
	}
}

// changed takes one pod event: its workload (nil: deleted) at version.
func (w *podWorkloads) changed(key string, workload *entry.Workload, version string) {
	ns, _, _ := strings.Cut(key, "/")
	w.mu.Lock()
	defer w.mu.Unlock()
	if l := w.heldFor(ns); l != nil {
		l.apply(ns, key, workload)
	}
	n := w.namespaces[ns]
	switch {
	case n == nil:
	case n.filling:
		n.pending[key] = podEvent{workload: workload, version: version}
	case newer(version, n.version):
		w.sink.SetWorkloads(map[entry.Key]*entry.Workload{entry.PodKey(key): workload})
	}
}

// apply is a pod event that came after l's list: the pod's workload, nil
// when it is gone.
func (l *heldList) apply(ns, key string, workload *entry.Workload) {
	pods := l.pods[ns]
	if workload == nil {
		delete(pods, entry.PodKey(key))
		return
	}
	if pods == nil {
		pods = make(map[entry.Key]*entry.Workload)
		l.pods[ns] = pods
	}
	pods[entry.PodKey(key)] = workload
}

// replaced takes a reflector's list of scope ("" for every namespace) at
// version: it fills the namespaces waiting for it, and replaces the pods of
// the others unless a fill has read them more recently. Before the entries'
// first read is in, it holds the list too.
func (w *podWorkloads) replaced(scope string, claims []*podClaim, version string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.listed[scope] = true
	if !w.entriesRead {
		l := &heldList{version: version, pods: make(map[string]map[entry.Key]*entry.Workload)}
		for _, p := range claims {
			ns, _, _ := strings.Cut(p.key, "/")
			l.apply(ns, p.key, p.workload)
		}
		if w.held == nil {
			w.held = make(map[string]*heldList)
		}
		w.held[scope] = l
	}
	byNamespace := make(map[string]map[entry.Key]*entry.Workload)
	for _, p := range claims {
		ns, _, _ := strings.Cut(p.key, "/")
		if w.namespaces[ns] == nil {
			continue
		}
		if byNamespace[ns] == nil {
			byNamespace[ns] = make(map[entry.Key]*entry.Workload)
		}
		byNamespace[ns][entry.PodKey(p.key)] = p.workload
	}
	var replace []string
	all := make(map[entry.Key]*entry.Workload)
	for ns, n := range w.namespaces {
		if scope != "" && ns != scope || !n.filling && !newer(version, n.version) {
			continue
		}
		pods := byNamespace[ns]
		if n.filling {
			pods = n.fill(pods, version)
		}
		n.version = version
		replace = append(replace, ns)
		maps.Copy(all, pods)
	}
	if len(replace) > 0 {
		w.sink.ReplaceWorkloads(entry.KindPod, replace, all)
	}
	w.settleLocked()
}

// fill is the namespace's first list, pods at version, with the events that
// waited for it applied when newer: the pods the sink is to hold.
func (n *podNamespace) fill(pods map[entry.Key]*entry.Workload, version string) map[entry.Key]*entry.Workload {
	if pods == nil {
		pods = make(map[entry.Key]*entry.Workload)
	}
	for key, ev := range n.pending {
		if !newer(ev.version, version) {
			continue
		}
		if ev.workload == nil {
			delete(pods, entry.PodKey(key))
		} else {
			pods[entry.PodKey(key)] = ev.workload
		}
	}
	n.filling, n.pending = false, nil
	return pods
}

// start makes the queue of namespaces to fill, before any reflector lists;
// run works it off.
func (w *podWorkloads) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	// A namespace whose list failed is tried again, at most every 30 s.
	backoff := workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 30*time.Second)
	w.queue = workqueue.NewTypedRateLimitingQueueWithConfig(backoff, workqueue.TypedRateLimitingQueueConfig[string]{})
	// The reflectors about to start list every namespace again.
	clear(w.listed)
	w.held = nil
}

// run lists the namespaces to fill, one at a time, until ctx ends.
func (w *podWorkloads) run(ctx context.Context) {
	q := w.queue
	defer q.ShutDown()
	stop := context.AfterFunc(ctx, q.ShutDown)
	defer stop()
	for {
		ns, quit := q.Get()
		if quit {
			return
		}
		if err := w.fillFromList(ctx, ns); err != nil && ctx.Err() == nil {
			log.Errorf("%v; retrying", err)
			q.AddRateLimited(ns)
		} else {
			q.Forget(ns)
		}
		q.Done(ns)
	}
}

// fillFromList fills ns with a list of its own, if it still waits for one.
func (w *podWorkloads) fillFromList(ctx context.Context, ns string) error {
	w.mu.Lock()
	n := w.namespaces[ns]
	waiting := n != nil && n.filling
	w.mu.Unlock()
	if !waiting {
		return nil
	}
	pods, version, err := w.list(ctx, ns)
	if err != nil {
		return fmt.Errorf("listing the pods of namespace %q, which an entry selects workloads in: %w", ns, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// A namespace that lost its entries since, or was filled by a relist,
	// is not this list's to fill; one that lost them and gained them again
	// is a new namespace, queued again.
	if w.namespaces[ns] != n || !n.filling {
		return nil
	}
	n.version = version
	w.sink.ReplaceWorkloads(entry.KindPod, []string{ns}, n.fill(pods, version))
	w.settleLocked()
	return nil
}
