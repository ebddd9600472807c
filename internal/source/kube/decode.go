package kube

import (
	"slices"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

// slimNegotiator is slimCodecs for the source's REST clients, with the JSON
// serializer replaced by slimJSON: for the client of WorkloadEntries when
// workloads is set, of ServiceEntries otherwise.
type slimNegotiator struct {
	runtime.NegotiatedSerializer
	workloads bool
}

func (n slimNegotiator) SupportedMediaTypes() []runtime.SerializerInfo {
	infos := slices.Clone(n.NegotiatedSerializer.SupportedMediaTypes())
	for i, info := range infos {
		if info.MediaType != runtime.ContentTypeJSON {
			continue
		}
		infos[i].Serializer = slimJSON{Serializer: info.Serializer, workloads: n.workloads}
		if info.StreamSerializer != nil {
			stream := *info.StreamSerializer
			stream.Serializer = slimJSON{Serializer: stream.Serializer, workloads: n.workloads}
			infos[i].StreamSerializer = &stream
		}
	}
	return infos
}

// slimJSON decodes what a list or a watch brings (watch events, the
// ServiceEntries in them, lists of them) with one call of the same JSON
// decoder as apimachinery's serializer, which first reads the whole
// document once more to find its kind: a watch event's object is otherwise
// read four times, its envelope four more. Any other document (a Status in
// an error event or response, an unexpected kind) goes to the serializer.
//
// A client reads one kind, so the decoder of a watch event's object knows
// which to expect without looking first: WorkloadEntries (and their lists)
// when workloads is set, ServiceEntries otherwise. An object of the other
// kind is still decoded right, by the serializer.
type slimJSON struct {
	runtime.Serializer
	workloads bool
}

func (s slimJSON) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	switch into := into.(type) {
	case nil:
		if s.workloads {
			wle := &entry.WorkloadEntry{}
			if kjson.UnmarshalCaseSensitivePreserveInts(data, wle) == nil && wle.Kind == "WorkloadEntry" && entry.IsServiceEntryVersion(wle.APIVersion) {
				gvk := wle.GroupVersionKind()
				return wle, &gvk, nil
			}
			break
		}
		se := &entry.ServiceEntry{}
		if kjson.UnmarshalCaseSensitivePreserveInts(data, se) == nil && se.Kind == "ServiceEntry" && entry.IsServiceEntryVersion(se.APIVersion) {
			gvk := se.GroupVersionKind()
			return se, &gvk, nil
		}
	case *metav1.WatchEvent:
		var ev metav1.WatchEvent
		if kjson.UnmarshalCaseSensitivePreserveInts(data, &ev) == nil {
			*into = ev
			// As the serializer names it: the first of the scheme's
			// registrations, the core group's.
			return into, &schema.GroupVersionKind{Version: "v1", Kind: "WatchEvent"}, nil
		}
	case *entry.ServiceEntryList:
		var l entry.ServiceEntryList
		if kjson.UnmarshalCaseSensitivePreserveInts(data, &l) == nil && l.Kind == "ServiceEntryList" && entry.IsServiceEntryVersion(l.APIVersion) {
			*into = l
			gvk := l.GroupVersionKind()
			return into, &gvk, nil
		}
	case *entry.WorkloadEntryList:
		var l entry.WorkloadEntryList
		if kjson.UnmarshalCaseSensitivePreserveInts(data, &l) == nil && l.Kind == "WorkloadEntryList" && entry.IsServiceEntryVersion(l.APIVersion) {
			*into = l
			gvk := l.GroupVersionKind()
			return into, &gvk, nil
		}
	}
	return s.Serializer.Decode(data, defaults, into)
}

// slimScheme knows the slim types under every served version, with the
// meta types list and watch requests need; slimCodecs decodes with it.
var (
	slimScheme = runtime.NewScheme()
	slimCodecs = serializer.NewCodecFactory(slimScheme)
	// slimParams encodes list options into query parameters.
	slimParams = runtime.NewParameterCodec(slimScheme)
)

func init() {
	metav1.AddToGroupVersion(slimScheme, schema.GroupVersion{Version: "v1"})
	for _, v := range entry.ServedVersions {
		gv := schema.GroupVersion{Group: entry.Group, Version: v}
		slimScheme.AddKnownTypeWithName(gv.WithKind("ServiceEntry"), &entry.ServiceEntry{})
		slimScheme.AddKnownTypeWithName(gv.WithKind("ServiceEntryList"), &entry.ServiceEntryList{})
		// WorkloadEntries share the group and its versions (Istio's CRDs
		// serve both at v1, v1beta1 and v1alpha3).
		slimScheme.AddKnownTypeWithName(gv.WithKind("WorkloadEntry"), &entry.WorkloadEntry{})
		slimScheme.AddKnownTypeWithName(gv.WithKind("WorkloadEntryList"), &entry.WorkloadEntryList{})
		metav1.AddToGroupVersion(slimScheme, gv)
	}
}
