package serviceentry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	clientv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	clientv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
	istioscheme "istio.io/client-go/pkg/clientset/versioned/scheme"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	serjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// decoded is what one decoder made of one document: the entry and its skips,
// or that the document was refused.
type decoded struct {
	entry  *entry
	skips  []skip
	failed bool
}

func (d decoded) String() string {
	if d.failed {
		return "refused"
	}
	return fmt.Sprintf("entry %+v, skips %v", d.entry, d.skips)
}

// typedDocument is the manifests source as it was: encoding/json into Istio's
// v1 type (its spec and status through jsonpb), then convert.
func typedDocument(raw []byte, opts convertOptions) decoded {
	var tm metav1.TypeMeta
	if json.Unmarshal(raw, &tm) != nil || tm.Kind != "ServiceEntry" || !isServiceEntryVersion(tm.APIVersion) {
		return decoded{failed: true}
	}
	var se clientv1.ServiceEntry
	if err := json.Unmarshal(raw, &se); err != nil || se.Name == "" {
		return decoded{failed: true}
	}
	e, skips := convert(&se.ObjectMeta, &se.Spec, &se.Status, opts)
	return decoded{entry: e, skips: skips}
}

func slimDocument(raw []byte, opts convertOptions) decoded {
	e, _, skips, err := convertDocument(raw, opts)
	if err != nil || (e == nil && skips == nil && !isServiceEntryDoc(raw)) {
		return decoded{failed: true}
	}
	return decoded{entry: e, skips: skips}
}

func isServiceEntryDoc(raw []byte) bool {
	var tm metav1.TypeMeta
	return json.Unmarshal(raw, &tm) == nil && tm.Kind == "ServiceEntry" && isServiceEntryVersion(tm.APIVersion)
}

// The Kubernetes reader's decoders: apimachinery's JSON serializer (case-sensitive)
// over Istio's scheme, as Istio's clientset decoded, and over ours.
var (
	typedSerializer = serjson.NewSerializerWithOptions(serjson.DefaultMetaFactory, istioscheme.Scheme, istioscheme.Scheme, serjson.SerializerOptions{})
	slimSerializer  = serjson.NewSerializerWithOptions(serjson.DefaultMetaFactory, slimScheme, slimScheme, serjson.SerializerOptions{})
)

// transform is the reader's transform for the slim objects, and what it
// was for Istio's typed ones: convert on the typed spec and status.
func transform(obj runtime.Object, opts convertOptions) (any, error) {
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
		return (&kubeSource{opts: opts}).toCached(obj)
	}
	e, skips := convert(meta, spec, status, opts)
	_, key := identity(meta)
	return &cachedEntry{key: key, entry: e, skips: skips}, nil
}

// informerDocument decodes raw as a watch event's object and passes it through
// the reader's transform (the name is the path's, as informers read).
func informerDocument(s runtime.Decoder, raw []byte, opts convertOptions) decoded {
	obj, _, err := s.Decode(raw, nil, nil)
	if err != nil {
		return decoded{failed: true}
	}
	out, err := transform(obj, opts)
	c, ok := out.(*cachedEntry)
	if err != nil || !ok {
		return decoded{failed: true}
	}
	if len(c.skips) == 1 && c.skips[0].reason == reasonInvalidObject {
		// Skipped whole: what the typed decoder refuses.
		return decoded{failed: true}
	}
	return decoded{entry: c.entry, skips: c.skips}
}

// pruned keeps of a document only the fields the slim decoder reads, so that
// the typed decoder's verdict on it says whether a refusal came from a field
// the slim decoder does not read (a status condition, an endpoint, ...).
func pruned(raw []byte) ([]byte, bool) {
	var doc map[string]any
	if json.Unmarshal(raw, &doc) != nil {
		return nil, false
	}
	keep := func(v any, keys ...string) any {
		m, ok := v.(map[string]any)
		if !ok {
			return v
		}
		out := map[string]any{}
		for _, k := range keys {
			if x, ok := m[k]; ok {
				out[k] = x
			}
		}
		return out
	}
	out := keep(doc, "apiVersion", "kind", "metadata", "spec", "status").(map[string]any)
	if m, ok := out["metadata"]; ok {
		out["metadata"] = keep(m, "name", "namespace", "creationTimestamp", "labels")
	}
	if s, ok := out["spec"]; ok {
		spec := keep(s, "hosts", "addresses", "ports", "resolution", "exportTo", "export_to")
		if m, ok := spec.(map[string]any); ok {
			if ports, ok := m["ports"].([]any); ok {
				for i, p := range ports {
					ports[i] = keep(p, "number", "name", "protocol")
				}
			}
		}
		out["spec"] = spec
	}
	if s, ok := out["status"]; ok {
		status := keep(s, "addresses")
		if m, ok := status.(map[string]any); ok {
			if addrs, ok := m["addresses"].([]any); ok {
				for i, a := range addrs {
					addrs[i] = keep(a, "value", "host")
				}
			}
		}
		out["status"] = status
	}
	b, err := json.Marshal(out)
	return b, err == nil
}

// sameDecoding checks the slim decoder against the typed one on one JSON
// document, for the manifests and the Kubernetes reader: the same entry and skips,
// or both refuse it. Where the typed decoder refuses a document for a field
// the slim one does not read, the slim one must decode it as the typed one
// decodes the document without those fields.
func sameDecoding(t *testing.T, raw []byte) {
	t.Helper()
	for _, opts := range []convertOptions{
		{},
		{autoAllocate: autoAllocateLegacy, exportTo: exportClient, dualStack: true},
		{autoAllocate: autoAllocateOff, exportTo: exportAll},
	} {
		for _, path := range []struct {
			name        string
			typed, slim func([]byte) decoded
		}{
			{"manifests", func(b []byte) decoded { return typedDocument(b, opts) }, func(b []byte) decoded { return slimDocument(b, opts) }},
			{"informer", func(b []byte) decoded { return informerDocument(typedSerializer, b, opts) }, func(b []byte) decoded { return informerDocument(slimJSON{slimSerializer}, b, opts) }},
		} {
			want, got := path.typed(raw), path.slim(raw)
			if want.failed && !got.failed {
				if p, ok := pruned(raw); ok {
					want = path.typed(p)
				}
			}
			if !reflect.DeepEqual(want, got) {
				t.Fatalf("%s, %+v, document %s:\ntyped %v\nslim  %v", path.name, opts, raw, want, got)
			}
		}
	}
}

// jsonDocuments splits a YAML or JSON stream into JSON documents, the items of
// a List as documents of their own; it stops at the first error.
func jsonDocuments(data []byte) [][]byte {
	var out [][]byte
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return out
		}
		if items, isList, err := listItems(raw); isList && err == nil {
			for _, it := range items {
				out = append(out, it.Raw)
			}
			continue
		}
		out = append(out, raw)
	}
}

var fmtVerb = regexp.MustCompile(`%(\[\d+\])?[-+# 0-9.]*[a-zA-Z]`)

// repositoryFixtures returns every ServiceEntry document of the repository:
// the files of examples/, deploy/ and test/, and the string constants of the
// Go test files (their format verbs filled in with a number).
func repositoryFixtures(t testing.TB) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	add := func(where string, data []byte) {
		for i, d := range jsonDocuments(data) {
			if bytes.Contains(d, []byte("ServiceEntry")) {
				out[fmt.Sprintf("%s#%d", where, i+1)] = d
			}
		}
	}
	for _, dir := range []string{"examples", "deploy", "test"} {
		_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && isManifestName(path) {
				if data, err := os.ReadFile(path); err == nil {
					add(path, data)
				}
			}
			return nil
		})
	}
	files, _ := filepath.Glob("*_test.go")
	more, _ := filepath.Glob("test/*/*_test.go")
	for _, file := range append(files, more...) {
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING || !strings.Contains(lit.Value, "ServiceEntry") {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			add(fmt.Sprintf("%s:%d", file, lit.Pos()), []byte(fmtVerb.ReplaceAllString(s, "7")))
			return true
		})
	}
	return out
}

// TestSlimMatchesTypedOnFixtures: on every ServiceEntry of the repository,
// and on documents that exercise jsonpb's rules, both decoders agree.
func TestSlimMatchesTypedOnFixtures(t *testing.T) {
	fixtures := repositoryFixtures(t)
	if len(fixtures) < 50 {
		t.Fatalf("only %d fixtures found", len(fixtures))
	}
	for name, raw := range edgeDocuments() {
		fixtures[name] = raw
	}
	for name, raw := range fixtures {
		t.Run(name, func(t *testing.T) { sameDecoding(t, raw) })
	}
}

// edgeDocuments are ServiceEntries whose spec or status jsonpb reads in its
// own way: proto names, quoted numbers, enum numbers and unknown names,
// nulls, keys in another case, fields of the wrong type.
func edgeDocuments() map[string][]byte {
	const head = `{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"e","namespace":"ns","creationTimestamp":"2024-01-02T03:04:05Z","labels":{"networking.istio.io/enable-autoallocate-ip":"false"}},`
	specs := map[string]string{
		"export_to":            `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"export_to":["."]}`,
		"export_to and json":   `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"export_to":[5],"exportTo":["ns2"]}`,
		"exportTo null":        `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"export_to":["x"],"exportTo":null}`,
		"quoted port":          `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"ports":[{"number":"53","name":"dns","protocol":"UDP"}]}`,
		"float port":           `"spec":{"hosts":["a.internal"],"ports":[{"number":53.5,"name":"dns"}]}`,
		"negative port":        `"spec":{"hosts":["a.internal"],"ports":[{"number":-1,"name":"dns"}]}`,
		"null port":            `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"ports":[null,{"number":null}]}`,
		"resolution number":    `"spec":{"hosts":["a.internal"],"resolution":4}`,
		"resolution undefined": `"spec":{"hosts":["a.internal"],"resolution":99}`,
		"resolution unknown":   `"spec":{"hosts":["a.internal"],"resolution":"SOMETHING_NEW"}`,
		"resolution lower":     `"spec":{"hosts":["a.internal"],"resolution":"dns"}`,
		"resolution null":      `"spec":{"hosts":["a.internal"],"resolution":null}`,
		"resolution empty":     `"spec":{"hosts":["a.internal"],"resolution":""}`,
		"resolution NONE":      `"spec":{"hosts":["a.internal","b.internal"],"resolution":"NONE"},"status":{"addresses":[{"value":"240.240.0.1","host":"a.internal"}]}`,
		"keys in another case": `"spec":{"Hosts":["a.internal"],"hosts":["b.internal"],"ADDRESSES":["192.0.2.1"]}`,
		"host null":            `"spec":{"hosts":[null,"a.internal"],"addresses":["192.0.2.1"]}`,
		"host number":          `"spec":{"hosts":[1],"addresses":["192.0.2.1"]}`,
		"spec string":          `"spec":"x"`,
		"spec null":            `"spec":null`,
		"status":               `"spec":{"hosts":["a.internal","*.w.internal"],"resolution":"DYNAMIC_DNS"},"status":{"addresses":[{"value":"240.240.0.1","host":"a.internal"},{"value":"2001:2::1","host":"a.internal"},{"value":"240.240.0.2","host":"*.w.internal"},{"value":"x","host":"zz"}]}`,
		"status conditions":    `"spec":{"hosts":["a.internal"]},"status":{"conditions":[{"type":5}],"addresses":[{"value":"240.240.0.1","host":"a.internal"}]}`,
		"status bad address":   `"spec":{"hosts":["a.internal"]},"status":{"addresses":[{"value":5}]}`,
		"endpoints wrong":      `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"endpoints":"x","location":"NOWHERE"}`,
	}
	out := map[string][]byte{}
	for name, s := range specs {
		out["edge "+name] = []byte(head + s + "}")
	}
	out["edge metadata in another case"] = []byte(`{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","Metadata":{"Name":"e"},"Spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"]}}`)
	out["edge managedFields and annotations wrong"] = []byte(`{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"e","managedFields":"x","annotations":{"a":1}},"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"]}}`)
	out["edge bad timestamp"] = []byte(`{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"e","creationTimestamp":"yesterday"},"spec":{"hosts":["a.internal"]}}`)
	return out
}

// FuzzSlimMatchesTyped: on documents grown from the repository's fixtures,
// the slim decoder agrees with the typed one (see sameDecoding). Documents
// with a key twice in one object are left out: YAML refuses them, the API
// server never sends them, and encoding/json and jsonpb merge them
// differently in ways no ServiceEntry relies on.
func FuzzSlimMatchesTyped(f *testing.F) {
	for _, raw := range repositoryFixtures(f) {
		f.Add(raw)
	}
	for _, raw := range edgeDocuments() {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) || hasDuplicateKeys(raw) {
			return
		}
		sameDecoding(t, raw)
	})
}

// hasDuplicateKeys reports whether some object of a valid JSON document holds
// the same key twice.
func hasDuplicateKeys(raw []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(raw))
	type frame struct {
		object bool
		keys   []string
		key    bool // the next token of an object is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return false
		}
		if err != nil {
			return true
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.key {
			if s, ok := tok.(string); ok {
				if slices.Contains(top.keys, s) {
					return true
				}
				top.keys = append(top.keys, s)
				top.key = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		// A value ended: the next token of the enclosing object is a key.
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].key = true
		}
	}
}

// TestUnknownResolutionSkipsObject: a resolution this build does not know (a
// newer Istio's) skips that one object, counted under invalid_object, where
// the typed decoder failed the whole list holding it.
func TestUnknownResolutionSkipsObject(t *testing.T) {
	list := `{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntryList","metadata":{"resourceVersion":"3"},"items":[` +
		`{"metadata":{"name":"new","namespace":"ns"},"spec":{"hosts":["new.internal"],"addresses":["192.0.2.1"],"resolution":"SOMETHING_NEW"}},` +
		`{"metadata":{"name":"ok","namespace":"ns"},"spec":{"hosts":["ok.internal"],"addresses":["192.0.2.2"],"resolution":"STATIC"}}]}`
	if _, _, err := typedSerializer.Decode([]byte(list), nil, nil); err == nil {
		t.Fatal("the typed decoder accepts an unknown resolution; this test's premise is gone")
	}
	obj, _, err := slimSerializer.Decode([]byte(list), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := newStore(false)
	items := obj.(*slimServiceEntryList).Items
	objects := make([]any, len(items))
	for i := range items {
		objects[i] = &items[i]
	}
	if err := newReaderStore(&kubeSource{store: st, skips: &st.skipped}).Replace(objects, "3"); err != nil {
		t.Fatal(err)
	}
	st.markSynced()
	if got := st.skipped.counts()[reasonInvalidObject]; got != 1 {
		t.Errorf("%v objects counted under %s, want 1", got, reasonInvalidObject)
	}
	if got := lookupA(st, "new.internal"); got != "" {
		t.Errorf("the skipped object is served: %q", got)
	}
	if got := lookupA(st, "ok.internal"); got != "192.0.2.2" {
		t.Errorf("the valid object: got %q", got)
	}
}

// BenchmarkDecodeConvert: one watch event's object from the API server's
// JSON to the cached entry, through Istio's typed objects and through the
// slim struct (apimachinery's serializer, then the reader's transform).
func BenchmarkDecodeConvert(b *testing.B) {
	raw := []byte(apiObject("ns1", "a", "a.internal", "192.0.2.1"))
	for _, c := range []struct {
		name string
		s    runtime.Decoder
	}{{"typed", typedSerializer}, {"slim", slimSerializer}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				obj, _, err := c.s.Decode(raw, nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				if out, _ := transform(obj, convertOptions{}); out.(*cachedEntry).entry == nil {
					b.Fatal("no entry")
				}
			}
		})
	}
}

// TestSlimJSONMatchesSerializer: the REST client's decoder gives what
// apimachinery's serializer gives for every kind of document a list or a
// watch brings, ServiceEntries through its own path, anything else through
// the serializer's.
func TestSlimJSONMatchesSerializer(t *testing.T) {
	entry := apiObject("ns1", "a", "a.internal", "192.0.2.1")
	status := `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}`
	for _, c := range []struct {
		name string
		doc  string
		into func() runtime.Object // nil: decode as a watch event's object
	}{
		{"ServiceEntry", entry, nil},
		{"ServiceEntry v1alpha3", strings.Replace(entry, "networking.istio.io/v1", "networking.istio.io/v1alpha3", 1), nil},
		{"Status of an error event", status, nil},
		{"another kind", strings.Replace(entry, `"kind":"ServiceEntry"`, `"kind":"Gateway"`, 1), nil},
		{"no kind", `{"metadata":{"name":"a"}}`, nil},
		{"malformed", `{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","spec":{"hosts":"a"}}`, nil},
		{"watch event", `{"type":"MODIFIED","object":` + entry + `}`, func() runtime.Object { return &metav1.WatchEvent{} }},
		{"error event", `{"type":"ERROR","object":` + status + `}`, func() runtime.Object { return &metav1.WatchEvent{} }},
		{"list", `{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntryList","metadata":{"resourceVersion":"7","continue":"x"},"items":[` + entry + `]}`,
			func() runtime.Object { return &slimServiceEntryList{} }},
		{"list of another kind", `{"apiVersion":"v1","kind":"Status","status":"Failure","code":500}`, func() runtime.Object { return &slimServiceEntryList{} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			var wantInto, gotInto runtime.Object
			if c.into != nil {
				wantInto, gotInto = c.into(), c.into()
			}
			want, wantGVK, wantErr := slimSerializer.Decode([]byte(c.doc), nil, wantInto)
			got, gotGVK, gotErr := slimJSON{slimSerializer}.Decode([]byte(c.doc), nil, gotInto)
			if (wantErr != nil) != (gotErr != nil) || !reflect.DeepEqual(want, got) || !reflect.DeepEqual(wantGVK, gotGVK) {
				t.Errorf("serializer %T %v %v\n%#v\nslimJSON %T %v %v\n%#v", want, wantGVK, wantErr, want, got, gotGVK, gotErr, got)
			}
		})
	}
}

// TestSlimNegotiatorUsesSlimJSON: the source's REST client decodes JSON
// objects and watch events with slimJSON.
func TestSlimNegotiatorUsesSlimJSON(t *testing.T) {
	var found bool
	for _, info := range (slimNegotiator{slimCodecs.WithoutConversion()}).SupportedMediaTypes() {
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
