package sourcetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	istioscheme "istio.io/client-go/pkg/clientset/versioned/scheme"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	serjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// The differential tests of the slim decoder (the entry model's, as the
// manifests source and the Kubernetes reader use it) against Istio's typed
// one share the helpers below: what a decoder made of a document, the
// comparison, and the documents compared.

// Decoded is what one decoder made of one document: the entry and its skips,
// or that the document was refused.
type Decoded struct {
	Entry  *entry.Entry
	Skips  []entry.Skip
	Failed bool
}

func (d Decoded) String() string {
	if d.Failed {
		return "refused"
	}
	return fmt.Sprintf("entry %+v, skips %v", d.Entry, d.Skips)
}

// TypedSerializer is apimachinery's JSON serializer (case-sensitive) over
// Istio's scheme, as Istio's clientset decodes.
var TypedSerializer = serjson.NewSerializerWithOptions(serjson.DefaultMetaFactory, istioscheme.Scheme, istioscheme.Scheme, serjson.SerializerOptions{})

// DecodePath is one way a source reads a document, through Istio's typed
// objects and through the slim struct.
type DecodePath struct {
	Name        string
	Typed, Slim func(raw []byte, opts entry.Options) Decoded
}

// SameDecoding checks the slim decoder against the typed one on one JSON
// document, for each path: the same entry and skips, or both refuse it, with
// each set of options that changes the conversion. Where the typed decoder
// refuses a document for a field the slim one does not read, the slim one
// must decode it as the typed one decodes the document without those fields.
func SameDecoding(t testing.TB, raw []byte, paths ...DecodePath) {
	t.Helper()
	for _, opts := range []entry.Options{
		{},
		{AutoAllocate: entry.AutoAllocateLegacy, ExportTo: entry.ExportClient, DualStack: true},
		{AutoAllocate: entry.AutoAllocateOff, ExportTo: entry.ExportAll},
	} {
		for _, path := range paths {
			want, got := path.Typed(raw, opts), path.Slim(raw, opts)
			if want.Failed && !got.Failed {
				if p, ok := pruned(raw); ok {
					want = path.Typed(p, opts)
				}
			}
			if !reflect.DeepEqual(want, got) {
				t.Fatalf("%s, %+v, document %s:\ntyped %v\nslim  %v", path.Name, opts, raw, want, got)
			}
		}
	}
}

// pruned keeps of a document only the fields the slim decoder reads, so that
// the typed decoder's verdict on it says whether a refusal came from a field
// the slim decoder does not read (a status condition, an endpoint, ...).
func pruned(raw []byte) ([]byte, bool) {
	var doc map[string]any
	if json.Unmarshal(raw, &doc) != nil {
		return nil, false
	}
	// keep keeps of v, an object, the keys named; with fold, in any case:
	// on the manifests path the object and its metadata are decoded as
	// sigs.k8s.io/yaml decodes them, matching keys without regard to case
	// ("metAdAtA" is the metadata there, and nothing on the API path,
	// pruned or not), where spec and status are read by exact key.
	keep := func(v any, fold bool, keys ...string) any {
		m, ok := v.(map[string]any)
		if !ok {
			return v
		}
		out := map[string]any{}
		for k, x := range m {
			if slices.ContainsFunc(keys, func(want string) bool { return k == want || fold && strings.EqualFold(k, want) }) {
				out[k] = x
			}
		}
		return out
	}
	// under prunes the value of every key of m that is name in any case.
	under := func(m map[string]any, name string, prune func(any) any) {
		for k, x := range m {
			if strings.EqualFold(k, name) {
				m[k] = prune(x)
			}
		}
	}
	out := keep(doc, true, "apiVersion", "kind", "metadata", "spec", "status").(map[string]any)
	under(out, "metadata", func(m any) any { return keep(m, true, "name", "namespace", "creationTimestamp", "labels") })
	under(out, "spec", func(s any) any {
		spec := keep(s, false, "hosts", "addresses", "ports", "resolution", "exportTo", "export_to", "workloadSelector", "workload_selector")
		if m, ok := spec.(map[string]any); ok {
			if ports, ok := m["ports"].([]any); ok {
				for i, p := range ports {
					ports[i] = keep(p, false, "number", "name", "protocol")
				}
			}
		}
		return spec
	})
	under(out, "status", func(s any) any {
		status := keep(s, false, "addresses")
		if m, ok := status.(map[string]any); ok {
			if addrs, ok := m["addresses"].([]any); ok {
				for i, a := range addrs {
					addrs[i] = keep(a, false, "value", "host")
				}
			}
		}
		return status
	})
	b, err := json.Marshal(out)
	return b, err == nil
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
		var tm metav1.TypeMeta
		if json.Unmarshal(raw, &tm) == nil && tm.Kind == "List" && tm.APIVersion == "v1" {
			var list metav1.List
			if json.Unmarshal(raw, &list) == nil {
				for _, it := range list.Items {
					out = append(out, it.Raw)
				}
				continue
			}
		}
		out = append(out, raw)
	}
}

var fmtVerb = regexp.MustCompile(`%(\[\d+\])?[-+# 0-9.]*[a-zA-Z]`)

// RepositoryFixtures returns every ServiceEntry document of the repository:
// those of its manifest files (see ManifestFiles), and those of the string
// constants of its Go test files and of this package (their format verbs
// filled in with a number), by where they were found.
func RepositoryFixtures(t testing.TB) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	add := func(where string, data []byte) {
		for i, d := range jsonDocuments(data) {
			if bytes.Contains(d, []byte("ServiceEntry")) {
				out[fmt.Sprintf("%s#%d", where, i+1)] = d
			}
		}
	}
	for path, data := range ManifestFiles(t) {
		add(path, data)
	}
	root := ModuleRoot(t)
	files, _ := filepath.Glob(filepath.Join(root, "*_test.go"))
	more, _ := filepath.Glob(filepath.Join(root, "test", "*", "*_test.go"))
	files = append(files, more...)
	_ = filepath.WalkDir(filepath.Join(root, "internal"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(path, "_test.go") ||
			(strings.HasSuffix(path, ".go") && filepath.Base(filepath.Dir(path)) == "sourcetest")) {
			files = append(files, path)
		}
		return nil
	})
	for _, file := range files {
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, file)
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING || !strings.Contains(lit.Value, "ServiceEntry") {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			add(fmt.Sprintf("%s:%d", rel, lit.Pos()), []byte(fmtVerb.ReplaceAllString(s, "7")))
			return true
		})
	}
	return out
}

// EdgeDocuments are ServiceEntries whose spec or status jsonpb reads in its
// own way: proto names, quoted numbers, enum numbers and unknown names,
// nulls, keys in another case, fields of the wrong type.
func EdgeDocuments() map[string][]byte {
	const head = `{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"e","namespace":"ns","creationTimestamp":"2024-01-02T03:04:05Z","labels":{"networking.istio.io/enable-autoallocate-ip":"false"}},`
	specs := map[string]string{
		"export_to":              `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"export_to":["."]}`,
		"export_to and json":     `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"export_to":[5],"exportTo":["ns2"]}`,
		"exportTo null":          `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"export_to":["x"],"exportTo":null}`,
		"quoted port":            `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"ports":[{"number":"53","name":"dns","protocol":"UDP"}]}`,
		"float port":             `"spec":{"hosts":["a.internal"],"ports":[{"number":53.5,"name":"dns"}]}`,
		"negative port":          `"spec":{"hosts":["a.internal"],"ports":[{"number":-1,"name":"dns"}]}`,
		"null port":              `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"ports":[null,{"number":null}]}`,
		"resolution number":      `"spec":{"hosts":["a.internal"],"resolution":4}`,
		"resolution undefined":   `"spec":{"hosts":["a.internal"],"resolution":99}`,
		"resolution unknown":     `"spec":{"hosts":["a.internal"],"resolution":"SOMETHING_NEW"}`,
		"resolution lower":       `"spec":{"hosts":["a.internal"],"resolution":"dns"}`,
		"resolution null":        `"spec":{"hosts":["a.internal"],"resolution":null}`,
		"resolution empty":       `"spec":{"hosts":["a.internal"],"resolution":""}`,
		"resolution NONE":        `"spec":{"hosts":["a.internal","b.internal"],"resolution":"NONE"},"status":{"addresses":[{"value":"240.240.0.1","host":"a.internal"}]}`,
		"keys in another case":   `"spec":{"Hosts":["a.internal"],"hosts":["b.internal"],"ADDRESSES":["192.0.2.1"]}`,
		"host null":              `"spec":{"hosts":[null,"a.internal"],"addresses":["192.0.2.1"]}`,
		"host number":            `"spec":{"hosts":[1],"addresses":["192.0.2.1"]}`,
		"spec string":            `"spec":"x"`,
		"spec null":              `"spec":null`,
		"status":                 `"spec":{"hosts":["a.internal","*.w.internal"],"resolution":"DYNAMIC_DNS"},"status":{"addresses":[{"value":"240.240.0.1","host":"a.internal"},{"value":"2001:2::1","host":"a.internal"},{"value":"240.240.0.2","host":"*.w.internal"},{"value":"x","host":"zz"}]}`,
		"status conditions":      `"spec":{"hosts":["a.internal"]},"status":{"conditions":[{"type":5}],"addresses":[{"value":"240.240.0.1","host":"a.internal"}]}`,
		"status bad address":     `"spec":{"hosts":["a.internal"]},"status":{"addresses":[{"value":5}]}`,
		"endpoints wrong":        `"spec":{"hosts":["a.internal"],"addresses":["192.0.2.1"],"endpoints":"x","location":"NOWHERE"}`,
		"selector":               `"spec":{"hosts":["a.internal"],"resolution":"NONE","ports":[{"number":80,"name":"http"}],"workloadSelector":{"labels":{"app":"db","tier":"x"}}}`,
		"selector empty":         `"spec":{"hosts":["a.internal"],"resolution":"NONE","workloadSelector":{}}`,
		"selector no labels":     `"spec":{"hosts":["a.internal"],"resolution":"NONE","workloadSelector":{"labels":null}}`,
		"selector proto name":    `"spec":{"hosts":["a.internal"],"resolution":"NONE","workload_selector":{"labels":{"app":"db"}}}`,
		"selector null":          `"spec":{"hosts":["a.internal"],"resolution":"NONE","workloadSelector":null,"workload_selector":{"labels":{"app":"db"}}}`,
		"selector both names":    `"spec":{"hosts":["a.internal"],"resolution":"NONE","workloadSelector":{"labels":{"app":"a"}},"workload_selector":{"labels":{"app":"b"}}}`,
		"selector invalid":       `"spec":{"hosts":["a.internal"],"resolution":"NONE","workloadSelector":{"labels":{"app":"*","":"x"}}}`,
		"selector number":        `"spec":{"hosts":["a.internal"],"resolution":"NONE","workloadSelector":{"labels":{"app":5}}}`,
		"selector and endpoints": `"spec":{"hosts":["a.internal"],"addresses":["10.0.0.1"],"resolution":"DNS","endpoints":[{"address":"192.0.2.9"}],"workloadSelector":{"labels":{"app":"db"}}}`,
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

// HasDuplicateKeys reports whether some object of a valid JSON document holds
// the same key twice. The differential fuzzers leave such documents out:
// YAML refuses them, the API server never sends them, and encoding/json and
// jsonpb merge them differently in ways no ServiceEntry relies on.
func HasDuplicateKeys(raw []byte) bool {
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

// AllFixtures is RepositoryFixtures with EdgeDocuments added. Fewer than 50
// fixtures means the repository's were not found: t fails.
func AllFixtures(t testing.TB) map[string][]byte {
	t.Helper()
	fixtures := RepositoryFixtures(t)
	if len(fixtures) < 50 {
		t.Fatalf("only %d fixtures found", len(fixtures))
	}
	for name, raw := range EdgeDocuments() {
		fixtures[name] = raw
	}
	return fixtures
}

// FuzzSameDecoding seeds f with every fixture and holds path to SameDecoding
// on the documents it grows from them. Documents with a key twice in one
// object are left out (see HasDuplicateKeys).
func FuzzSameDecoding(f *testing.F, path DecodePath) {
	for _, raw := range AllFixtures(f) {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) || HasDuplicateKeys(raw) {
			return
		}
		SameDecoding(t, raw, path)
	})
}

// UnknownResolutionList is a ServiceEntryList with one entry of a
// resolution this build does not know (a newer Istio's), ns/new, beside a
// valid one, ns/ok (192.0.2.2). t fails if Istio's typed decoder accepts it:
// the tests that use it rest on the typed decoder failing the whole list.
func UnknownResolutionList(t testing.TB) []byte {
	t.Helper()
	list := []byte(`{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntryList","metadata":{"resourceVersion":"3"},"items":[` +
		`{"metadata":{"name":"new","namespace":"ns"},"spec":{"hosts":["new.internal"],"addresses":["192.0.2.1"],"resolution":"SOMETHING_NEW"}},` +
		`{"metadata":{"name":"ok","namespace":"ns"},"spec":{"hosts":["ok.internal"],"addresses":["192.0.2.2"],"resolution":"STATIC"}}]}`)
	if _, _, err := TypedSerializer.Decode(list, nil, nil); err == nil {
		t.Fatal("the typed decoder accepts an unknown resolution; this test's premise is gone")
	}
	return list
}
