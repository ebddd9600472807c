package kube

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/source"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// cachedWorkload is a WorkloadEntry as its reflector hands it on: its
// namespace/name and its workload, converted in the transform so that
// nothing holds the decoded object past its event (WatchList's initial
// events are held until their end).
type cachedWorkload struct {
	keyed
	workload *entry.Workload // never nil: a WorkloadEntry DNS cannot use has no addresses
	skips    []entry.Skip    // what the conversion left out, reported when it is applied
}

// DeepCopyObject makes cachedWorkload a runtime.Object. The workload is
// immutable once converted, so sharing it is a deep copy.
func (c *cachedWorkload) DeepCopyObject() runtime.Object {
	out := *c
	return &out
}

// toWorkload is the WorkloadEntry reflectors' transform. An object may reach
// it twice (WatchList's initial events, then their Replace), so an already
// converted one passes through unchanged.
func toWorkload(obj any) (any, error) {
	wle, ok := obj.(*entry.WorkloadEntry)
	if !ok {
		return obj, nil
	}
	w, skips := wle.Workload()
	// The key is the workload's, not a copy: one string per object.
	return &cachedWorkload{keyed: keyed{w.Key.Name}, workload: w, skips: skips}, nil
}

// workloadStore is the store of one namespace's WorkloadEntry reflector: it
// takes each change straight to the sink, as readerStore does for
// ServiceEntries. The sink's ReplaceWorkloads removes what a relist no
// longer holds, so the store keeps only the skips of the objects that have
// some, each reported when it first appears.
type workloadStore struct {
	namespace string // "" for all
	sink      source.Sink
	skips     map[string][]entry.Skip

	synced chan struct{} // closed by the first Replace: the namespace is read whole
	// settled is closed once the first read no longer needs waiting for:
	// done (synced), or refused (see refuse).
	settled  chan struct{}
	settle   sync.Once
	refusing atomic.Bool // the last list or watch was refused, and logged
}

func newWorkloadStore(namespace string, sink source.Sink) *workloadStore {
	return &workloadStore{namespace: namespace, sink: sink, skips: make(map[string][]entry.Skip),
		synced: make(chan struct{}), settled: make(chan struct{})}
}

func (s *workloadStore) Transformer() cache.TransformFunc { return toWorkload }

func (s *workloadStore) Add(obj any) error { return s.Update(obj) }

func (s *workloadStore) Update(obj any) error {
	c, err := cachedWorkloadOf(obj)
	if err != nil {
		return err
	}
	s.note(s.skips, c)
	s.sink.SetWorkloads(map[entry.Key]*entry.Workload{entry.WorkloadEntryKey(c.key): c.workload})
	return nil
}

func (s *workloadStore) Delete(obj any) error {
	c, err := cachedWorkloadOf(obj)
	if err != nil {
		return err
	}
	delete(s.skips, c.key)
	s.sink.SetWorkloads(map[entry.Key]*entry.Workload{entry.WorkloadEntryKey(c.key): nil})
	return nil
}

// Replace is a full read of the namespace, the first one or a relist: the
// sink's WorkloadEntries of the namespace become what it holds, as one
// change.
func (s *workloadStore) Replace(list []any, _ string) error {
	all := make(map[entry.Key]*entry.Workload, len(list))
	read := make(map[string][]entry.Skip)
	for _, obj := range list {
		c, err := cachedWorkloadOf(obj)
		if err != nil {
			return err
		}
		s.note(read, c)
		all[entry.WorkloadEntryKey(c.key)] = c.workload
	}
	s.skips = read
	s.sink.ReplaceWorkloads(entry.KindWorkloadEntry, []string{s.namespace}, all)
	select {
	case <-s.synced:
	default:
		close(s.synced)
	}
	s.settle.Do(func() { close(s.settled) })
	return nil
}

func (s *workloadStore) Resync() error { return nil }

// note records c's skips in into when it has some, reporting them when they
// are new for its key: problems are reported when they first appear, not
// again on every update or relist.
func (s *workloadStore) note(into map[string][]entry.Skip, c *cachedWorkload) {
	if len(c.skips) == 0 {
		delete(into, c.key)
		return
	}
	if prev, seen := s.skips[c.key]; !seen || !slices.Equal(prev, c.skips) {
		s.sink.Skipped(entry.WorkloadEntryKey(c.key).String(), c.skips)
	}
	into[c.key] = c.skips
}

func cachedWorkloadOf(obj any) (*cachedWorkload, error) {
	out, err := toWorkload(obj)
	if err != nil {
		return nil, err
	}
	c, ok := out.(*cachedWorkload)
	if !ok {
		return nil, fmt.Errorf("unexpected object %T from the WorkloadEntry reader", out)
	}
	return c, nil
}

// readResult tells the store how a list or a watch went. A refusal (RBAC
// without workloadentries, a plugin upgraded before its ClusterRole) is
// logged once, with what the plugin needs, until a read succeeds again; it
// also settles the first read, so that the plugin becomes ready without
// WorkloadEntries instead of never (see Source.run). The reflector keeps
// retrying: once the permission is granted, the WorkloadEntries arrive as
// changes. A resource gone since discovery (the CRD removed) is refused
// alike. Other failures (the API server unreachable) are the reflector's to
// retry, as for ServiceEntries, which the same server serves.
func (s *workloadStore) readResult(err error) {
	switch {
	case err == nil:
		s.refusing.Store(false)
	case apierrors.IsForbidden(err) || apierrors.IsNotFound(err):
		if !s.refusing.Swap(true) {
			log.Errorf("reading WorkloadEntries is refused: %v (the plugin needs get, list and watch on workloadentries.%s to answer "+
				"headless ServiceEntries with the WorkloadEntries they select); ServiceEntries are served without them", err, entry.Group)
		}
		s.settle.Do(func() { close(s.settled) })
	}
}

// workloadReader reads the WorkloadEntries of one namespace (or all) through
// version into a workloadStore. The label selector of the configuration is
// not applied: it chooses which ServiceEntries publish hosts, while a
// WorkloadEntry publishes none, only addresses for the entries of its own
// namespace that select it, as in Istio.
func (k *Source) workloadReader(namespace, version string) (*cache.Reflector, *workloadStore, error) {
	lw, err := k.workloadLister(namespace, version)
	if err != nil {
		return nil, nil, err
	}
	ws := newWorkloadStore(namespace, k.sink)
	r := cache.NewReflectorWithOptions(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			if !k.lists.begin() {
				return nil, fmt.Errorf("listing WorkloadEntries in %q: %w", namespace, context.Canceled)
			}
			defer k.lists.end()
			obj, err := lw.list(ctx, o)
			ws.readResult(err)
			return obj, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := lw.watch(ctx, o)
			ws.readResult(err)
			return w, err
		},
	}, &entry.WorkloadEntry{}, ws, cache.ReflectorOptions{Name: "workloadentry " + namespace, TypeDescription: "WorkloadEntry"})
	return r, ws, nil
}
