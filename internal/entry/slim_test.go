package entry_test

import (
	"encoding/json"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/source/manifest"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	serjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
)

// The differential tests of the slim decoder against Istio's typed one, on
// the manifests source's path. The Kubernetes reader's path (its REST
// client's decoder and its transform) is compared in its package's tests,
// TestSlimJSONMatchesTypedOnFixtures and FuzzSlimJSONMatchesTyped.

// typedDocument is the manifests source as it was: encoding/json into Istio's
// v1 type (its spec and status through jsonpb), then convert.
func typedDocument(raw []byte, opts entry.Options) sourcetest.Decoded {
	if !isServiceEntryDoc(raw) {
		return sourcetest.Decoded{Failed: true}
	}
	var se clientv1.ServiceEntry
	if err := json.Unmarshal(raw, &se); err != nil || se.Name == "" {
		return sourcetest.Decoded{Failed: true}
	}
	e, skips := entry.Convert(&se.ObjectMeta, &se.Spec, &se.Status, opts)
	return sourcetest.Decoded{Entry: e, Skips: skips}
}

// manifestDocument is the manifests source as it is: one JSON document
// parsed by manifest.Parse, which decodes it into the slim struct. A kind
// List document is refused, as the typed path refuses it (Parse reads its
// items, which the fixtures hold as documents of their own).
func manifestDocument(raw []byte, opts entry.Options) sourcetest.Decoded {
	var tm metav1.TypeMeta
	if json.Unmarshal(raw, &tm) == nil && tm.Kind == "List" && tm.APIVersion == "v1" {
		return sourcetest.Decoded{Failed: true}
	}
	var r report
	entries, _, err := manifest.Parse("test.json", raw, opts, &r)
	if err != nil || r.rejected || len(entries) > 1 {
		return sourcetest.Decoded{Failed: true}
	}
	var e *entry.Entry
	if len(entries) == 1 {
		e = entries[0]
	}
	if e == nil && r.skips == nil && !isServiceEntryDoc(raw) {
		return sourcetest.Decoded{Failed: true}
	}
	return sourcetest.Decoded{Entry: e, Skips: r.skips}
}

// report is what Parse told of one document: the skips of its conversion,
// or that it was left out whole.
type report struct {
	skips    []entry.Skip
	rejected bool
}

func (r *report) Skipped(_ string, skips []entry.Skip) { r.skips = skips }
func (r *report) Rejected(string)                      { r.rejected = true }

func isServiceEntryDoc(raw []byte) bool {
	var tm metav1.TypeMeta
	return json.Unmarshal(raw, &tm) == nil && tm.Kind == "ServiceEntry" && entry.IsServiceEntryVersion(tm.APIVersion)
}

var manifestsPath = sourcetest.DecodePath{Name: "manifests", Typed: typedDocument, Slim: manifestDocument}

// TestSlimMatchesTypedOnFixtures: on every ServiceEntry of the repository,
// and on documents that exercise jsonpb's rules, both decoders agree.
func TestSlimMatchesTypedOnFixtures(t *testing.T) {
	for name, raw := range sourcetest.AllFixtures(t) {
		t.Run(name, func(t *testing.T) { sourcetest.SameDecoding(t, raw, manifestsPath) })
	}
}

// FuzzSlimMatchesTyped: on documents grown from the repository's fixtures,
// the slim decoder agrees with the typed one (see sourcetest.SameDecoding).
// Documents with a key twice in one object are left out (see
// sourcetest.HasDuplicateKeys).
func FuzzSlimMatchesTyped(f *testing.F) { sourcetest.FuzzSameDecoding(f, manifestsPath) }

// slimSerializer is apimachinery's JSON serializer over a scheme of the slim
// types under every served version, as the Kubernetes source registers them
// (its scheme is its own; this one is built alike).
var slimSerializer = func() *serjson.Serializer {
	scheme := runtime.NewScheme()
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	for _, v := range entry.ServedVersions {
		gv := schema.GroupVersion{Group: entry.Group, Version: v}
		scheme.AddKnownTypeWithName(gv.WithKind("ServiceEntry"), &entry.ServiceEntry{})
		scheme.AddKnownTypeWithName(gv.WithKind("ServiceEntryList"), &entry.ServiceEntryList{})
		metav1.AddToGroupVersion(scheme, gv)
	}
	return serjson.NewSerializerWithOptions(serjson.DefaultMetaFactory, scheme, scheme, serjson.SerializerOptions{})
}()

// TestUnknownResolutionSkipsObject: a resolution this build does not know (a
// newer Istio's) leaves that one object out, where the typed decoder failed
// the whole list holding it: the slim list decodes, and only that object's
// conversion fails. (The Kubernetes reader counts it under invalid_object:
// its TestReaderStoreUnknownResolution.)
func TestUnknownResolutionSkipsObject(t *testing.T) {
	obj, _, err := slimSerializer.Decode(sourcetest.UnknownResolutionList(t), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	items := obj.(*entry.ServiceEntryList).Items
	if len(items) != 2 {
		t.Fatalf("%d items, want 2", len(items))
	}
	if e, _, err := items[0].Entry(entry.Options{}); err == nil || e != nil {
		t.Errorf("the unknown resolution converts: %+v, %v", e, err)
	}
	e, _, err := items[1].Entry(entry.Options{})
	if err != nil || e == nil || e.Key.Name != "ns/ok" || len(e.Hosts) != 1 || len(e.Hosts[0].Addrs()) != 1 || e.Hosts[0].Addrs()[0].String() != "192.0.2.2" {
		t.Errorf("the valid object: %+v, %v", e, err)
	}
}

// BenchmarkDecodeConvert: one watch event's object from the API server's
// JSON to the converted entry, through Istio's typed objects and through the
// slim struct (apimachinery's serializer, then the conversion).
func BenchmarkDecodeConvert(b *testing.B) {
	raw := []byte(sourcetest.APIObject("ns1", "a", "a.internal", "192.0.2.1"))
	convert := func(obj runtime.Object) *entry.Entry {
		switch se := obj.(type) {
		case *clientv1.ServiceEntry:
			e, _ := entry.Convert(&se.ObjectMeta, &se.Spec, &se.Status, entry.Options{})
			return e
		case *entry.ServiceEntry:
			e, _, _ := se.Entry(entry.Options{})
			return e
		}
		return nil
	}
	for _, c := range []struct {
		name string
		s    runtime.Decoder
	}{{"typed", sourcetest.TypedSerializer}, {"slim", slimSerializer}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				obj, _, err := c.s.Decode(raw, nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				if convert(obj) == nil {
					b.Fatal("no entry")
				}
			}
		})
	}
}
