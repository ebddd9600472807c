package kube

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	clientv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	clientv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	serjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
)

// slimSerializer is apimachinery's JSON serializer (case-sensitive) over our
// scheme, as the REST client decodes what slimJSON leaves to it.
var slimSerializer = serjson.NewSerializerWithOptions(serjson.DefaultMetaFactory, slimScheme, slimScheme, serjson.SerializerOptions{})

// transform is the reader's transform for the slim objects, and what it
// was for Istio's typed ones: convert on the typed spec and status.
func transform(obj runtime.Object, opts entry.Options) (any, error) {
	var meta *metav1.ObjectMeta
	var spec *networking.ServiceEntry
	var status *networking.ServiceEntryStatus
	switch se := obj.(type) {
	case *clientv1.ServiceEntry:
		meta, spec, status = &se.ObjectMeta, &se.Spec, &se.Status
	case *clientv1beta1.ServiceEntry:
		meta, spec, status = &se.ObjectMeta, &se.Spec, &se.Status
	case *clientv1alpha3.ServiceEntry:
		meta, spec, status = &se.ObjectMeta, &se.Spec, &se.Status
	default:
		return (&Source{opts: opts}).toCached(obj)
	}
	e, skips := entry.Convert(meta, spec, status, opts)
	_, key := entry.Identity(meta)
	return &cachedEntry{keyed: keyed{key.Name}, entry: e, skips: skips}, nil
}

// informerDocument decodes raw as a watch event's object and passes it through
// the reader's transform (the name is the path's, as informers read).
func informerDocument(s runtime.Decoder, raw []byte, opts entry.Options) sourcetest.Decoded {
	obj, _, err := s.Decode(raw, nil, nil)
	if err != nil {
		return sourcetest.Decoded{Failed: true}
	}
	out, err := transform(obj, opts)
	c, ok := out.(*cachedEntry)
	if err != nil || !ok {
		return sourcetest.Decoded{Failed: true}
	}
	if len(c.skips) == 1 && c.skips[0].Reason == entry.ReasonInvalidObject {
		// Skipped whole: what the typed decoder refuses.
		return sourcetest.Decoded{Failed: true}
	}
	return sourcetest.Decoded{Entry: c.entry, Skips: c.skips}
}

// informerPath is how the Kubernetes reader reads an object: Istio's
// clientset decoded it into the typed objects; the source's REST client
// decodes it with slimJSON, and the reader's transform converts it. (The
// manifests source's path is compared in the entry package's tests.)
var informerPath = sourcetest.DecodePath{
	Name: "informer",
	Typed: func(b []byte, opts entry.Options) sourcetest.Decoded {
		return informerDocument(sourcetest.TypedSerializer, b, opts)
	},
	Slim: func(b []byte, opts entry.Options) sourcetest.Decoded {
		return informerDocument(slimJSON{Serializer: slimSerializer}, b, opts)
	},
}

// TestSlimJSONMatchesTypedOnFixtures: on every ServiceEntry of the
// repository, and on documents that exercise jsonpb's rules, the REST
// client's decoding and the reader's transform agree with Istio's typed
// decoding.
func TestSlimJSONMatchesTypedOnFixtures(t *testing.T) {
	for name, raw := range sourcetest.AllFixtures(t) {
		t.Run(name, func(t *testing.T) { sourcetest.SameDecoding(t, raw, informerPath) })
	}
}

// FuzzSlimJSONMatchesTyped: on documents grown from the repository's
// fixtures, the REST client's decoding agrees with the typed one (see
// sourcetest.SameDecoding). Documents with a key twice in one object are left
// out (see sourcetest.HasDuplicateKeys).
func FuzzSlimJSONMatchesTyped(f *testing.F) { sourcetest.FuzzSameDecoding(f, informerPath) }

// TestReaderStoreUnknownResolution: a resolution this build does not know (a
// newer Istio's) skips that one object, counted under invalid_object, where
// the typed decoder failed the whole list holding it. (The entry package's
// TestUnknownResolutionSkipsObject checks the decoding alone.)
func TestReaderStoreUnknownResolution(t *testing.T) {
	obj, _, err := slimSerializer.Decode(sourcetest.UnknownResolutionList(t), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := sourcetest.NewSink()
	items := obj.(*entry.ServiceEntryList).Items
	objects := make([]any, len(items))
	for i := range items {
		objects[i] = &items[i]
	}
	if err := newReaderStore(&Source{sink: st}, "").Replace(objects, "3"); err != nil {
		t.Fatal(err)
	}
	st.MarkSynced()
	if got := st.Count(entry.ReasonInvalidObject); got != 1 {
		t.Errorf("%v objects counted under %s, want 1", got, entry.ReasonInvalidObject)
	}
	if got := st.FirstA("new.internal"); got != "" {
		t.Errorf("the skipped object is served: %q", got)
	}
	if got := st.FirstA("ok.internal"); got != "192.0.2.2" {
		t.Errorf("the valid object: got %q", got)
	}
}

// TestSlimJSONMatchesSerializer: the REST client's decoder gives what
// apimachinery's serializer gives for every kind of document a list or a
// watch brings, ServiceEntries through its own path, anything else through
// the serializer's.
func TestSlimJSONMatchesSerializer(t *testing.T) {
	object := sourcetest.APIObject("ns1", "a", "a.internal", "192.0.2.1")
	status := `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}`
	for _, c := range []struct {
		name string
		doc  string
		into func() runtime.Object // nil: decode as a watch event's object
	}{
		{"ServiceEntry", object, nil},
		{"ServiceEntry v1alpha3", strings.Replace(object, "networking.istio.io/v1", "networking.istio.io/v1alpha3", 1), nil},
		{"Status of an error event", status, nil},
		{"another kind", strings.Replace(object, `"kind":"ServiceEntry"`, `"kind":"Gateway"`, 1), nil},
		{"no kind", `{"metadata":{"name":"a"}}`, nil},
		{"malformed", `{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","spec":{"hosts":"a"}}`, nil},
		{"watch event", `{"type":"MODIFIED","object":` + object + `}`, func() runtime.Object { return &metav1.WatchEvent{} }},
		{"error event", `{"type":"ERROR","object":` + status + `}`, func() runtime.Object { return &metav1.WatchEvent{} }},
		{"list", `{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntryList","metadata":{"resourceVersion":"7","continue":"x"},"items":[` + object + `]}`,
			func() runtime.Object { return &entry.ServiceEntryList{} }},
		{"list of another kind", `{"apiVersion":"v1","kind":"Status","status":"Failure","code":500}`, func() runtime.Object { return &entry.ServiceEntryList{} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			var wantInto, gotInto runtime.Object
			if c.into != nil {
				wantInto, gotInto = c.into(), c.into()
			}
			want, wantGVK, wantErr := slimSerializer.Decode([]byte(c.doc), nil, wantInto)
			got, gotGVK, gotErr := slimJSON{Serializer: slimSerializer}.Decode([]byte(c.doc), nil, gotInto)
			if (wantErr != nil) != (gotErr != nil) || !reflect.DeepEqual(want, got) || !reflect.DeepEqual(wantGVK, gotGVK) {
				t.Errorf("serializer %T %v %v\n%#v\nslimJSON %T %v %v\n%#v", want, wantGVK, wantErr, want, got, gotGVK, gotErr, got)
			}
		})
	}
}

// TestSlimJSONWorkloadEntries: the WorkloadEntry client's decoder gives
// what apimachinery's serializer gives for every document a list or a watch
// of WorkloadEntries brings, through its own path for WorkloadEntries and
// their lists; a ServiceEntry sent to it is still decoded right.
func TestSlimJSONWorkloadEntries(t *testing.T) {
	object := apiWorkloadEntry("ns1", "w", "10.0.0.1")
	status := `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"forbidden","reason":"Forbidden","code":403}`
	for _, c := range []struct {
		name string
		doc  string
		into func() runtime.Object // nil: decode as a watch event's object
		slim bool                  // slimJSON decodes it itself
	}{
		{"WorkloadEntry", object, nil, true},
		{"WorkloadEntry v1beta1", strings.Replace(object, "networking.istio.io/v1", "networking.istio.io/v1beta1", 1), nil, true},
		{"WorkloadEntry with health checks", `{"apiVersion":"networking.istio.io/v1","kind":"WorkloadEntry","metadata":{"name":"h","namespace":"ns1",` +
			`"annotations":{"proxy.istio.io/health-checks-enabled":"true","other":"x"}},"spec":{"address":"10.0.0.3"},` +
			`"status":{"conditions":[{"type":"Healthy","status":"False"}]}}`, nil, true},
		{"a ServiceEntry", sourcetest.APIObject("ns1", "a", "a.internal", "192.0.2.1"), nil, false},
		{"Status of an error event", status, nil, false},
		{"list", `{"apiVersion":"networking.istio.io/v1","kind":"WorkloadEntryList","metadata":{"resourceVersion":"7"},"items":[` + object + `]}`,
			func() runtime.Object { return &entry.WorkloadEntryList{} }, true},
		{"list of another kind", status, func() runtime.Object { return &entry.WorkloadEntryList{} }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var wantInto, gotInto runtime.Object
			if c.into != nil {
				wantInto, gotInto = c.into(), c.into()
			}
			want, wantGVK, wantErr := slimSerializer.Decode([]byte(c.doc), nil, wantInto)
			got, gotGVK, gotErr := slimJSON{Serializer: slimSerializer, workloads: true}.Decode([]byte(c.doc), nil, gotInto)
			if (wantErr != nil) != (gotErr != nil) || !reflect.DeepEqual(want, got) || !reflect.DeepEqual(wantGVK, gotGVK) {
				t.Errorf("serializer %T %v %v\n%#v\nslimJSON %T %v %v\n%#v", want, wantGVK, wantErr, want, got, gotGVK, gotErr, got)
			}
			// Through its own path: the serializer it wraps is not asked.
			var into runtime.Object
			if c.into != nil {
				into = c.into()
			}
			_, _, err := slimJSON{Serializer: failing{}, workloads: true}.Decode([]byte(c.doc), nil, into)
			if slim := err == nil; slim != c.slim {
				t.Errorf("decoded by slimJSON itself: %v, want %v (%v)", slim, c.slim, err)
			}
		})
	}
	wle, _, err := slimJSON{Serializer: slimSerializer, workloads: true}.Decode([]byte(object), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	w, skips := wle.(*entry.WorkloadEntry).Workload()
	if len(skips) != 0 || w.NumAddrs() != 1 || slices.Collect(w.Addrs())[0].String() != "10.0.0.1" || !w.Labels.Selects(entry.SelectorOf(map[string]string{"app": "db"})) {
		t.Errorf("workload %+v, skips %v", w, skips)
	}
}

// apiWorkloadEntry is a WorkloadEntry as the API server sends it, with
// what the slim decoder skips.
func apiWorkloadEntry(ns, name, address string) string {
	return fmt.Sprintf(`{"apiVersion":"networking.istio.io/v1","kind":"WorkloadEntry","metadata":{"name":%q,"namespace":%q,`+
		`"resourceVersion":"6","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"big\":true}"},`+
		`"managedFields":[{"manager":"kubectl","operation":"Apply","fieldsType":"FieldsV1","fieldsV1":{"f:spec":{"f:address":{}}}}]},`+
		`"spec":{"address":%q,"labels":{"app":"db"},"ports":{"tcp":5432},"network":"n1"}}`, name, ns, address)
}

// failing is a serializer that fails every decode: what slimJSON decodes
// without it succeeds.
type failing struct{ runtime.Serializer }

func (failing) Decode([]byte, *schema.GroupVersionKind, runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	return nil, nil, errors.New("left to the serializer")
}

// TestSlimNegotiatorUsesSlimJSON: the source's REST client decodes JSON
// objects and watch events with slimJSON.
func TestSlimNegotiatorUsesSlimJSON(t *testing.T) {
	var found bool
	for _, info := range (slimNegotiator{NegotiatedSerializer: slimCodecs.WithoutConversion()}).SupportedMediaTypes() {
		if info.MediaType != runtime.ContentTypeJSON {
			continue
		}
		found = true
		if _, ok := info.Serializer.(slimJSON); !ok {
			t.Errorf("JSON objects decoded by %T", info.Serializer)
		}
		if info.StreamSerializer == nil {
			t.Fatal("no stream serializer for JSON")
		}
		if _, ok := info.StreamSerializer.Serializer.(slimJSON); !ok {
			t.Errorf("watch events decoded by %T", info.StreamSerializer.Serializer)
		}
	}
	if !found {
		t.Error("no JSON serializer")
	}
}
