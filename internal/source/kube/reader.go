package kube

import (
	"fmt"
	"slices"
	"strings"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

// cachedEntry is a ServiceEntry as the reflector hands it on: its
// namespace/name, which is also the store's key, and the entry already
// converted for the table. A decoded object (metadata, spec and status)
// weighs several times the entry and the table never reads anything else, so
// the conversion happens in the reflector's transform, before WatchList's
// initial events are held until their end.
type cachedEntry struct {
	keyed // namespace/name; the entry's own key when there is an entry

	entry *entry.Entry // nil: nothing to serve or allocate
	skips []entry.Skip // what the conversion left out, reported when it is applied
}

// keyed gives an object converted in a reflector's transform what the
// reflector's caches need of it: WatchList's initial events are held in one
// until their end, keyed by namespace/name.
type keyed struct{ key string }

// GetObjectMeta lets a cache key the object (meta.Accessor accepts it); it
// runs once per event, not per query, so building the metadata is cheap.
func (k keyed) GetObjectMeta() metav1.Object {
	namespace, name, _ := strings.Cut(k.key, "/")
	return &metav1.ObjectMeta{Namespace: namespace, Name: name}
}

// GetObjectKind is runtime.Object's: a converted object is never encoded.
func (keyed) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject makes cachedEntry a runtime.Object. The entry is immutable
// once converted, so sharing it is a deep copy.
func (c *cachedEntry) DeepCopyObject() runtime.Object {
	out := *c
	return &out
}

// toCached is the reflectors' transform. An object may reach it twice (the
// initial events of a WatchList, then their Replace), so an already converted
// one passes through unchanged.
func (k *Source) toCached(obj any) (any, error) {
	if _, done := obj.(*cachedEntry); done {
		return obj, nil
	}
	if se, ok := obj.(*entry.ServiceEntry); ok {
		e, skips, err := se.Entry(k.opts)
		switch {
		case err != nil:
			// The typed decoder fails the whole object (and the list
			// holding it): serve nothing of it, and say why.
			_, key := entry.Identity(&se.ObjectMeta)
			return &cachedEntry{keyed: keyed{key.Name}, skips: []entry.Skip{{Reason: entry.ReasonInvalidObject, Item: err.Error()}}}, nil
		case e != nil:
			return &cachedEntry{keyed: keyed{e.Key.Name}, entry: e, skips: skips}, nil
		}
		_, key := entry.Identity(&se.ObjectMeta)
		return &cachedEntry{keyed: keyed{key.Name}, skips: skips}, nil
	}
	return obj, nil
}

// readerStore is the store of one namespace's reflector. It takes what the
// reflector reads straight to the source's store, without the queue, cache
// and handler goroutines of an informer between them, and keeps of the
// objects only what their next versions are compared with: the skips of
// those whose conversion left something out, which most have not. A relist
// is a replace of the namespace in the source's store, which knows what it
// holds: a set of every key here would cost each entry a map slot. The
// reflector calls it from one goroutine.
type readerStore struct {
	k         *Source
	namespace string // metav1.NamespaceAll: every namespace
	skips     map[string][]entry.Skip
	synced    chan struct{} // closed by the first Replace: the namespace is read whole
}

func newReaderStore(k *Source, namespace string) *readerStore {
	return &readerStore{k: k, namespace: namespace, skips: make(map[string][]entry.Skip), synced: make(chan struct{})}
}

// Transformer converts WatchList's initial events as they arrive (the
// reflector holds them until the last one); other objects are converted by
// the methods below.
func (r *readerStore) Transformer() cache.TransformFunc { return r.k.toCached }

func (r *readerStore) Add(obj any) error { return r.Update(obj) }

func (r *readerStore) Update(obj any) error {
	c, err := r.cached(obj)
	if err != nil {
		return err
	}
	r.note(r.skips, c)
	key := entry.ServiceEntryKey(c.key)
	r.k.sink.Upsert(key, c.entry)
	r.k.entriesChanged(map[entry.Key]*entry.Entry{key: c.entry})
	return nil
}

func (r *readerStore) Delete(obj any) error {
	c, err := r.cached(obj)
	if err != nil {
		return err
	}
	delete(r.skips, c.key)
	key := entry.ServiceEntryKey(c.key)
	r.k.sink.Upsert(key, nil)
	r.k.entriesChanged(map[entry.Key]*entry.Entry{key: nil})
	return nil
}

// Replace is a full read of the namespace, the first one or a relist:
// applied as one change, what it no longer holds removed.
func (r *readerStore) Replace(list []any, _ string) error {
	skips := make(map[string][]entry.Skip)
	all := make(map[entry.Key]*entry.Entry, len(list))
	for _, obj := range list {
		c, err := r.cached(obj)
		if err != nil {
			return err
		}
		r.note(skips, c)
		if c.entry != nil {
			all[entry.ServiceEntryKey(c.key)] = c.entry
		}
	}
	gone := r.k.sink.ReplaceEntries([]string{r.namespace}, all)
	r.skips = skips
	changes := all
	for _, key := range gone {
		changes[key] = nil
	}
	r.k.entriesChanged(changes)
	select {
	case <-r.synced:
	default:
		close(r.synced)
	}
	return nil
}

func (r *readerStore) Resync() error { return nil }

func (r *readerStore) cached(obj any) (*cachedEntry, error) {
	out, err := r.k.toCached(obj)
	if err != nil {
		return nil, err
	}
	c, ok := out.(*cachedEntry)
	if !ok {
		return nil, fmt.Errorf("unexpected object %T from the ServiceEntry reader", out)
	}
	return c, nil
}

// note records c's skips in into, logging and counting them when they are
// new for its key: problems are reported when they first appear, not again
// on every update or relist. An object without skips, and none before, has
// nothing to report.
func (r *readerStore) note(into map[string][]entry.Skip, c *cachedEntry) {
	if !slices.Equal(r.skips[c.key], c.skips) {
		r.k.sink.Skipped(entry.ServiceEntryKey(c.key).String(), c.skips)
	}
	if len(c.skips) > 0 {
		into[c.key] = c.skips
	} else {
		delete(into, c.key)
	}
}
