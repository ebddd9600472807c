package manifest

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"maps"
	"slices"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

// yamlCases are documents on both sides of the direct path's border, with
// whether it takes them: YAML 1.1's booleans, nulls and numbers, keys that
// are not strings to go-yaml, quoting, comments, the ways block collections
// nest, and what it leaves to go-yaml.
var yamlCases = []struct {
	doc   string
	taken bool
}{
	{"", true},
	{"# only a comment\n\n", true},
	{"just a string\n", true},
	{"a:\n", true},
	{"a: yes\nb: No\nc: on\nd: OFF\ne: y\nf: ~\ng: Null\nh: yellow\ni: nan\nj: NaN\n", true},
	{"a: 10\nb: 0\nc: 123456789012345678\nd: 10.0.0.1\ne: 1.2.3.4.5\nf: 1..2\n", true},
	{"a: 010\n", false},
	{"a: 0x1F\n", false},
	{"a: 1_000\n", false},
	{"a: 1.5\n", false},
	{"a: 1e3\n", false},
	{"a: 1234567890123456789\n", false},
	{"a: -5\n", false},
	{"a: +5\n", false},
	{"a: .inf\n", false},
	{"a: 2024-01-02\n", false},
	{"a: 2001:db8::1\nb: 10.0.0.0/8\nc: 2001:db8::/64\nd: 1:2\n", true},
	{"a: 2024-01-02 10:00:00\n", false},
	{"a: 1:2-3\n", false},
	{"a: 3scale.net\n", false},
	{"on: x\n", false},
	{"y: x\n", false},
	{"1: x\n", false},
	{"'a': x\n", false},
	{"\"a\": x\n", false},
	{"? a\n: b\n", false},
	{"<<: {a: b}\n", false},
	{"a: b # a comment\nc: d#not a comment\n", true},
	{"a: # a comment\n  b: c\n", true},
	{"a: x<y>&z\nb: 'q\"uote\\'\nc: \"it's\"\nd: 'it''s'\ne: ''\nf: \"\"\n", true},
	{"a: 'x' # c\n", true},
	{"a: 'x'y\n", false},
	{"a: \"x\\ny\"\n", false},
	{"a: 'multi\n  line'\n", false},
	{"a: plain\n  continued\n", false},
	{"a:\n  plain\n  continued\n", false},
	{"a:\n  value\n", true},
	{"a: b: c\n", false},
	{"a: b:\n", false},
	{"a:b\n", true},
	{"a: b:c\n", true},
	{"a: x,y]z}\n", true},
	{"a: {b: c}\n", false},
	{"a: [b, c]\n", false},
	{"a: &anchor b\nc: *anchor\n", false},
	{"a: !!str 10\n", false},
	{"a: |\n  block\n", false},
	{"a: >\n  folded\n", false},
	{"a: @reserved\n", false},
	{"a: -x\n", false},
	{"%YAML 1.1\n---\na: b\n", false},
	{"a: b\n...\n", false},
	{"\ta: b\n", false},
	{"a:\tb\n", false},
	{"a: b\r\n", false},
	{"a: caf\xc3\xa9\n", false},
	{"a: \x00\n", false},
	{"b: 1\na: 2\nb: 3\n", true},
	{"kind: ServiceEntry\nKind: ConfigMap\n", true},
	{"a:\n  b: 1\na: 2\n", true},
	{"a:\n- b\n- c\nd: e\n", true},
	{"a:\n  - b\n  -   c\n  -\n  - # comment\n  - d: e\n    f: g\n  - - h\n    - i\n", true},
	{"- a\n- b: c\n  d: e\n-\n  f: g\n", true},
	{"-  a: b\n   c: d\n", true},
	{"- a: b\n c: d\n", false},
	{"- a:\n- b\n", true},
	{"- a:\n  - b\n  c: d\n", true},
	{"a:\n    b: c\n  d: e\n", false},
	{"  a: b\n  c: d\n", true},
	{"  a: b\nc: d\n", false},
	{"a: b\n  c: d\n", false},
	{"a:\n  b: c\n   d: e\n", false},
	{"- a\nb: c\n", false},
	{"a: b\n- c\n", false},
	{"-a\n", false},
	{"a.b/c-d_e: 1\nA: 2\n_a: 3\n", false},
	{"a.b/c-d_e: 1\nA: 2\n", true},
}

// documentsOfStream splits a YAML stream as the source does.
func documentsOfStream(t testing.TB, data []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		d, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			return docs // the stream stops here, as it does for the source
		}
		docs = append(docs, bytes.Clone(d))
	}
}

// sameAsSigsYAML fails unless the converter gives doc's JSON byte for byte
// as sigs.k8s.io/yaml does, or the same error, and reports whether the direct
// path took it.
func sameAsSigsYAML(t *testing.T, c *yamlConverter, doc []byte) (taken bool) {
	t.Helper()
	want, wantErr := sigsyaml.YAMLToJSON(doc)
	fast, taken := c.fastJSON(doc)
	if taken && (wantErr != nil || !bytes.Equal(fast, want)) {
		t.Fatalf("direct path on %q:\n got  %s\n want %s (error %v)", doc, fast, want, wantErr)
	}
	got, err := c.toJSON(doc)
	switch {
	case wantErr != nil && (err == nil || err.Error() != "error converting YAML to JSON: "+wantErr.Error()):
		t.Fatalf("on %q: error %v, want the conversion's %q", doc, err, wantErr)
	case wantErr == nil && (err != nil || !bytes.Equal(got, want)):
		t.Fatalf("on %q:\n got  %s (error %v)\n want %s", doc, got, err, want)
	}
	return taken
}

// TestYAMLFastMatchesSigsYAML: the direct path gives sigs.k8s.io/yaml's
// JSON, byte for byte, on every document of the repository's manifests, of
// the benchmark and of the ordering tests, and on the cases above; it takes
// those the cases say (so that it is tried at all), and every document of
// the benchmark and of the examples.
func TestYAMLFastMatchesSigsYAML(t *testing.T) {
	var c yamlConverter
	for _, tc := range yamlCases {
		if taken := sameAsSigsYAML(t, &c, []byte(tc.doc)); taken != tc.taken {
			t.Errorf("%q: taken %v, want %v", tc.doc, taken, tc.taken)
		}
	}
	files := sourcetest.ManifestFiles(t)
	for _, path := range slices.Sorted(maps.Keys(files)) {
		for i, doc := range documentsOfStream(t, files[path]) {
			if taken := sameAsSigsYAML(t, &c, doc); !taken && bytes.HasPrefix([]byte(path), []byte("examples/")) {
				t.Errorf("%s, document %d: not taken by the direct path", path, i+1)
			}
		}
	}
	for i := range 1000 {
		if !sameAsSigsYAML(t, &c, []byte(benchManifestYAML(i))) {
			t.Fatalf("the benchmark's document %d is not taken by the direct path", i)
		}
	}
	for _, doc := range documentsOfStream(t, []byte(yamlStream(orderedDocuments(500, false)))) {
		sameAsSigsYAML(t, &c, doc)
	}
}

// yamlTokens are the pieces of block-style YAML and of what borders it:
// fuzzed bytes read as a string of these (see fromTokens) are mostly
// documents the direct path takes or nearly does, where raw bytes mostly
// are not.
var yamlTokens = []string{
	"\n", "\n  ", "\n    ", " ", "  ", "- ", "-", ": ", ":", "a", "b", "kind", "Kind", "a.b/c-d",
	"'", "''", "\"", "#", " #", "yes", "On", "y", "NULL", "~", "0", "7", "10", "010", "1.5", "1e3",
	"10.0.0.1", "1..2", "2001:db8::1", "10.0.0.0/8", "2024-01-02", "/", "_", ".", "<&>", ",", "[]",
	"{}", "*", "&", "!", "|", ">", "?", "%", "@", "---", "...", "\t", "\r", "\\", "\xc3\xa9",
}

// fromTokens reads data as a string of yamlTokens, a byte a token.
func fromTokens(data []byte) []byte {
	var doc []byte
	for _, b := range data {
		doc = append(doc, yamlTokens[int(b)%len(yamlTokens)]...)
	}
	return doc
}

// FuzzYAMLFastMatchesSigsYAML: on any document, the conversion gives
// sigs.k8s.io/yaml's JSON byte for byte, or its error; the input is tried
// as it is and read as yamlTokens.
func FuzzYAMLFastMatchesSigsYAML(f *testing.F) {
	for _, data := range sourcetest.ManifestFiles(f) {
		for _, doc := range documentsOfStream(f, data) {
			f.Add(doc)
		}
	}
	for _, tc := range yamlCases {
		f.Add([]byte(tc.doc))
	}
	f.Add([]byte(benchManifestYAML(1)))
	var c yamlConverter
	f.Add([]byte{11, 7, 9, 0, 10, 8, 0, 5, 9, 0, 5, 10, 7, 26, 1, 9, 7, 30}) // read as tokens, a block mapping and sequence
	f.Fuzz(func(t *testing.T, doc []byte) {
		sameAsSigsYAML(t, &c, doc)
		sameAsSigsYAML(t, &c, fromTokens(doc))
	})
}
