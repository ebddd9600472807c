package serviceentry

import (
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// cachedEntry is all the informer cache keeps of a ServiceEntry: its
// namespace/name, which is also the store's key, and the entry already
// converted for the table. A decoded
// object (metadata, spec and status) weighs several times the entry and the
// table never reads anything else, so the conversion happens in the
// informer's transform, before the object is stored.
type cachedEntry struct {
	key string // namespace/name; the entry's own key when there is an entry

	entry *entry // nil: nothing to serve or allocate
	skips []skip // what the conversion left out, reported when it is applied
}

// GetObjectMeta lets the cache key the object (meta.Accessor accepts it); it
// runs once per event, not per query, so building the metadata is cheap.
func (c *cachedEntry) GetObjectMeta() metav1.Object {
	namespace, name, _ := strings.Cut(c.key, "/")
	return &metav1.ObjectMeta{Namespace: namespace, Name: name}
}

// GetObjectKind and DeepCopyObject make cachedEntry a runtime.Object. The
// entry is immutable once converted, so sharing it is a deep copy.
func (c *cachedEntry) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (c *cachedEntry) DeepCopyObject() runtime.Object {
	out := *c
	return &out
}

// toCached is the informers' transform. The informer may hand an object to it
// twice, so an already converted one passes through unchanged.
func (k *kubeSource) toCached(obj any) (any, error) {
	if _, done := obj.(*cachedEntry); done {
		return obj, nil
	}
	if se, ok := obj.(*slimServiceEntry); ok {
		e, skips, err := se.entry(k.opts)
		if err != nil {
			// The typed decoder fails the whole object (and the list
			// holding it): serve nothing of it, and say why.
			return &cachedEntry{key: cacheKey(se.Namespace, se.Name),
				skips: []skip{{reason: reasonInvalidObject, item: err.Error()}}}, nil
		}
		if e != nil {
			return &cachedEntry{key: e.key, entry: e, skips: skips}, nil
		}
		return &cachedEntry{key: cacheKey(se.Namespace, se.Name), skips: skips}, nil
	}
	return obj, nil
}

// cacheKey is the store's key of an object read from the API server, which
// always names its namespace.
func cacheKey(namespace, name string) string {
	return types.NamespacedName{Namespace: namespace, Name: name}.String()
}
