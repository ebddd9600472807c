package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/fsnotify/fsnotify"
	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

func TestManifestSource(t *testing.T) {
	dir := t.TempDir()
	sourcetest.WriteFile(t, filepath.Join(dir, "a.yaml"), sourcetest.SEYAML("a", "a.internal", "192.0.2.1")+"---\n"+sourcetest.SEYAML("b", "b.internal", "192.0.2.2"))
	sourcetest.WriteFile(t, filepath.Join(dir, "c.json"), `{"apiVersion":"networking.istio.io/v1beta1","kind":"ServiceEntry","metadata":{"name":"c","namespace":"ns"},"spec":{"hosts":["c.internal"],"addresses":["192.0.2.3"]}}`)
	sourcetest.WriteFile(t, filepath.Join(dir, "notes.txt"), sourcetest.SEYAML("ignored", "txt.internal", "192.0.2.9"))
	sourcetest.WriteFile(t, filepath.Join(dir, ".hidden.yaml"), sourcetest.SEYAML("hidden", "hidden.internal", "192.0.2.9"))

	st := sourcetest.NewSink()
	src := New([]string{dir}, entry.Options{}, st)
	if err := src.Start(); err != nil {
		t.Fatal(err)
	}
	defer src.Stop()

	for name, want := range map[string]string{"a.internal": "192.0.2.1", "b.internal": "192.0.2.2", "c.internal": "192.0.2.3", "txt.internal": "", "hidden.internal": ""} {
		if got := st.FirstA(name); got != want {
			t.Errorf("%s: got %q, want %q", name, got, want)
		}
	}

	// A change is served.
	sourcetest.WriteFile(t, filepath.Join(dir, "a.yaml"), sourcetest.SEYAML("a", "a.internal", "192.0.2.11"))
	sourcetest.Eventually(t, "a.internal changes", func() bool { return st.FirstA("a.internal") == "192.0.2.11" })
	if got := st.FirstA("b.internal"); got != "" {
		t.Errorf("b.internal removed from the file but still served: %q", got)
	}

	// A file that no longer parses keeps its last good content.
	sourcetest.WriteFile(t, filepath.Join(dir, "a.yaml"), "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a\n  broken: [\n")
	sourcetest.WriteFile(t, filepath.Join(dir, "d.yaml"), sourcetest.SEYAML("d", "d.internal", "192.0.2.4"))
	sourcetest.Eventually(t, "d.internal appears", func() bool { return st.FirstA("d.internal") == "192.0.2.4" })
	if got := st.FirstA("a.internal"); got != "192.0.2.11" {
		t.Errorf("a.internal after a bad edit: got %q, want the last good 192.0.2.11", got)
	}

	// Deleting a file removes its entries.
	if err := os.Remove(filepath.Join(dir, "c.json")); err != nil {
		t.Fatal(err)
	}
	sourcetest.Eventually(t, "c.internal disappears", func() bool { return st.FirstA("c.internal") == "" })
}

// TestManifestBadDocumentKeepsOthers: one invalid ServiceEntry in a file does
// not cost the valid ones beside it.
func TestManifestBadDocumentKeepsOthers(t *testing.T) {
	doc := sourcetest.SEYAML("good", "good.internal", "192.0.2.1") + "---\n" +
		"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bad}\nspec: {hosts: [bad.internal], resolution: BOGUS}\n" + "---\n" +
		"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {namespace: x}\nspec: {hosts: [noname.internal], addresses: [192.0.2.3]}\n" + "---\n" +
		sourcetest.SEYAML("good2", "good2.internal", "192.0.2.2")
	entries, _, err := Parse("test.yaml", []byte(doc), entry.Options{}, sourcetest.NewSink())
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0].Name() != "good" || entries[1].Name() != "good2" {
		t.Fatalf("got %d entries, want good and good2", len(entries))
	}
}

func TestManifestMissingPath(t *testing.T) {
	src := New([]string{"/nonexistent/serviceentries"}, entry.Options{}, sourcetest.NewSink())
	if err := src.Start(); err == nil {
		t.Fatal("want an error for a missing path")
	}
	src.Stop()
}

// startManifestsWith runs a manifests source over paths into a recording
// sink, stopped when the test ends, with a chance to change the source (its
// intervals, its publish hook) before it starts.
func startManifestsWith(t *testing.T, configure func(*Source), paths ...string) (*sourcetest.Sink, *Source) {
	t.Helper()
	sink := sourcetest.NewSink()
	src := New(paths, entry.Options{}, sink)
	if configure != nil {
		configure(src)
	}
	if err := src.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Stop)
	return sink, src
}

// pollHourly sets a source's fallback polls to an hour: what it reads within a
// test, it reads on fsnotify's events.
func pollHourly(src *Source) { src.poll, src.pollUnwatched = time.Hour, time.Hour }

// TestManifestConfigMapVolume: a ConfigMap volume swaps a ..data symlink to a
// new timestamped folder; the swap is seen (by fsnotify: the fallback poll is
// set to an hour) even when the new file has the size and modification time
// of the old one, and the timestamped folders are not read twice.
func TestManifestConfigMapVolume(t *testing.T) {
	for _, watchFile := range []bool{false, true} {
		t.Run(fmt.Sprintf("file=%v", watchFile), func(t *testing.T) {
			dir := t.TempDir()
			mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			version := 0
			swap := func(addr string) {
				version++
				d := fmt.Sprintf("..2026_01_02_03_04_05.%d", version)
				if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
					t.Fatal(err)
				}
				file := filepath.Join(dir, d, "se.yaml")
				sourcetest.WriteFile(t, file, sourcetest.SEYAML("cm", "cm.internal", addr))
				if err := os.Chtimes(file, mtime, mtime); err != nil {
					t.Fatal(err)
				}
				old, _ := os.Readlink(filepath.Join(dir, "..data"))
				tmp := filepath.Join(dir, "..data_tmp")
				if err := os.Symlink(d, tmp); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
					t.Fatal(err)
				}
				if old != "" { // as the kubelet does
					if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
						t.Fatal(err)
					}
				}
			}
			swap("192.0.2.1")
			if err := os.Symlink("..data/se.yaml", filepath.Join(dir, "se.yaml")); err != nil {
				t.Fatal(err)
			}
			path := dir
			if watchFile {
				path = filepath.Join(dir, "se.yaml")
			}
			st, _ := startManifestsWith(t, pollHourly, path)
			if got := st.FirstA("cm.internal"); got != "192.0.2.1" {
				t.Fatalf("got %q", got)
			}
			if n := len(st.Published()); n != 1 {
				t.Fatalf("%d entries, want 1: the timestamped folder was read too", n)
			}
			for i, addr := range []string{"192.0.2.2", "192.0.2.3"} { // equal sizes and times
				swap(addr)
				sourcetest.EventuallyWithin(t, 5*time.Second, fmt.Sprintf("swap %d of ..data read (the fallback poll is an hour: only fsnotify can lead to the read; "+
					"the new file has the size and time of the old one)", i+1),
					func() bool { return st.FirstA("cm.internal") == addr })
			}
		})
	}
}

// TestManifestFsnotify: changes are read on fsnotify's events, whatever the
// way the file changes and whether a folder or a file is configured. The
// fallback poll is set to an hour, so only an event can lead to the read.
func TestManifestFsnotify(t *testing.T) {
	inPlace := func(t *testing.T, path, content string) {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name      string
		watchFile bool // configure the file rather than its folder
		change    func(t *testing.T, dir string)
		host      string
		want      string
	}{
		{name: "written in place", change: func(t *testing.T, dir string) {
			inPlace(t, filepath.Join(dir, "se.yaml"), sourcetest.SEYAML("a", "a.internal", "192.0.2.2"))
		}, host: "a.internal", want: "192.0.2.2"},
		{name: "renamed over", change: func(t *testing.T, dir string) {
			sourcetest.WriteFile(t, filepath.Join(dir, "se.yaml"), sourcetest.SEYAML("a", "a.internal", "192.0.2.2"))
		}, host: "a.internal", want: "192.0.2.2"},
		{name: "new file", change: func(t *testing.T, dir string) {
			sourcetest.WriteFile(t, filepath.Join(dir, "new.yaml"), sourcetest.SEYAML("b", "b.internal", "192.0.2.3"))
		}, host: "b.internal", want: "192.0.2.3"},
		{name: "removed", change: func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "se.yaml")); err != nil {
				t.Fatal(err)
			}
		}, host: "a.internal", want: ""},
		{name: "single file written in place", watchFile: true, change: func(t *testing.T, dir string) {
			inPlace(t, filepath.Join(dir, "se.yaml"), sourcetest.SEYAML("a", "a.internal", "192.0.2.2"))
		}, host: "a.internal", want: "192.0.2.2"},
		{name: "single file renamed over", watchFile: true, change: func(t *testing.T, dir string) {
			sourcetest.WriteFile(t, filepath.Join(dir, "se.yaml"), sourcetest.SEYAML("a", "a.internal", "192.0.2.2"))
		}, host: "a.internal", want: "192.0.2.2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sourcetest.WriteFile(t, filepath.Join(dir, "se.yaml"), sourcetest.SEYAML("a", "a.internal", "192.0.2.1"))
			path := dir
			if tc.watchFile {
				path = filepath.Join(dir, "se.yaml")
			}
			st, _ := startManifestsWith(t, pollHourly, path)
			if got := st.FirstA("a.internal"); got != "192.0.2.1" {
				t.Fatalf("first read: a.internal %q", got)
			}
			tc.change(t, dir)
			sourcetest.EventuallyWithin(t, 5*time.Second, tc.name+": the change read with the fallback poll set to an hour (fsnotify did not lead to a read)",
				func() bool { return st.FirstA(tc.host) == tc.want })
		})
	}
}

// TestManifestWithoutFsnotify: where fsnotify cannot watch (inotify limits),
// the source polls, and changes are still read once stable.
func TestManifestWithoutFsnotify(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "se.yaml")
	sourcetest.WriteFile(t, path, sourcetest.SEYAML("a", "a.internal", "192.0.2.1"))
	st, src := startManifestsWith(t, func(src *Source) {
		src.newWatcher = func() (*fsnotify.Watcher, error) { return nil, errors.New("too many open files") }
		src.poll, src.pollUnwatched = time.Hour, 50*time.Millisecond
	}, dir)
	if src.watcher != nil {
		t.Fatal("a watcher despite the error")
	}
	if got := st.FirstA("a.internal"); got != "192.0.2.1" {
		t.Fatalf("first read: a.internal %q", got)
	}
	if err := os.WriteFile(path, []byte(sourcetest.SEYAML("a", "a.internal", "192.0.2.2")), 0o644); err != nil {
		t.Fatal(err)
	}
	sourcetest.Eventually(t, "the change read by polling", func() bool { return st.FirstA("a.internal") == "192.0.2.2" })
}

// TestManifestSlowWriterInPlace: a file rewritten in place by a slow writer
// (truncate, pause, write half, pause, write the rest) is read only once it is
// whole: no table published while it is written lacks any of its entries, and
// its final content is served once the writer is done.
//
// The source reads a file once it has stayed unchanged for the settle
// interval, so a loaded machine that stalls the writer that long between two
// writes makes reading the half-written file right. Such a read is told from
// a loss by what it holds: which state of the file it is (truncated, or the
// first half of one generation), and whether that state stayed on disk for a
// settle interval. Every other publish that lacks entries fails the test: it
// never skips, whatever the machine.
func TestManifestSlowWriterInPlace(t *testing.T) {
	const n = 20
	dir := t.TempDir()
	path := filepath.Join(dir, "se.yaml")
	halves := func(g int) (string, string) { // each half whole documents: valid alone
		var first, second strings.Builder
		for i := range n {
			b := &first
			if i >= n/2 {
				b = &second
			}
			b.WriteString("---\n" + sourcetest.SEYAML(fmt.Sprintf("e%d", i), fmt.Sprintf("h%d.internal", i), fmt.Sprintf("10.%d.0.%d", g, i+1)))
		}
		return first.String(), second.String()
	}
	a, b := halves(1)
	sourcetest.WriteFile(t, path, a+b)

	// lacking is a publish that lacks entries of the file: what it held.
	type lacking struct {
		what string
		gen  int  // of the half it held: state (gen, half written); 0 when it held none
		torn bool // neither nothing nor exactly a first half: no state of the file
	}
	var mu sync.Mutex
	var losses []lacking
	publishes := 0
	st, src := startManifestsWith(t, func(src *Source) {
		publish := src.publish
		src.publish = func(entries map[entry.Key]*entry.Entry, workloads map[entry.Key]*entry.Workload) {
			mu.Lock()
			publishes++
			var present []int
			gens := make(map[int]bool)
			for i := range n {
				if e := entries[entry.ServiceEntryKey(fmt.Sprintf("ns/e%d", i))]; e != nil {
					present = append(present, i)
					gens[int(e.Hosts[0].Addrs()[0].As4()[1])] = true
				}
			}
			if len(present) < n {
				l := lacking{what: fmt.Sprintf("publish %d holds %d of the %d entries (%v) of generations %v",
					publishes, len(present), n, present, slices.Sorted(maps.Keys(gens)))}
				switch {
				case len(present) == 0:
				case len(gens) == 1 && len(present) == n/2 && present[n/2-1] == n/2-1:
					for g := range gens {
						l.gen = g
					}
				default:
					l.torn = true
				}
				losses = append(losses, l)
			}
			mu.Unlock()
			publish(entries, workloads)
		}
	}, dir)

	// Write for four of the old 0.5 s polls; the file is whole a third of
	// the time. The source must not read it until it stops changing. Each
	// write's time is taken before it begins and after it returns, so that
	// a state of the file lasted at most from the write that made it began
	// to the write that ended it returned.
	type writes struct{ truncate, aBegan, aDone, bDone time.Time }
	timeline := make(map[int]writes)
	const pause = 20 * time.Millisecond
	var longest time.Duration // the longest the file was not whole
	g := 1
	for began := time.Now(); time.Since(began) < 2*time.Second && g < 250; {
		g++
		a, b := halves(g)
		var w writes
		w.truncate = time.Now()
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(pause)
		w.aBegan = time.Now()
		if _, err := f.WriteString(a); err != nil {
			t.Fatal(err)
		}
		w.aDone = time.Now()
		time.Sleep(pause)
		if _, err := f.WriteString(b); err != nil {
			t.Fatal(err)
		}
		w.bDone = time.Now()
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		timeline[g] = w
		longest = max(longest, time.Since(w.truncate))
		time.Sleep(pause)
	}
	final := fmt.Sprintf("10.%d.0.", g)
	sourcetest.Eventually(t, "the final content served", func() bool {
		return st.FirstA("h0.internal") == final+"1" && st.FirstA(fmt.Sprintf("h%d.internal", n-1)) == final+fmt.Sprint(n)
	})
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d writes, %d publishes; the file was not whole for at most %v", g-1, publishes, longest.Round(time.Millisecond))

	// stable reports whether a state of the file can have stayed on disk for
	// a settle interval, and for how long at most.
	stable := func(l lacking) (bool, time.Duration) {
		if l.torn {
			return false, 0
		}
		var most time.Duration
		for gen, w := range timeline {
			if l.gen == 0 {
				most = max(most, w.aDone.Sub(w.truncate)) // truncated, until the first half
			} else if gen == l.gen {
				most = w.bDone.Sub(w.aBegan) // the first half, until the second
			}
		}
		return most >= src.settle, most
	}
	var lost []string
	for _, l := range losses {
		if ok, most := stable(l); ok {
			t.Logf("the writer stalled: %s, a state of the file that stayed for up to %v, longer than the settle interval %v, so read rightly",
				l.what, most.Round(time.Millisecond), src.settle)
			continue
		}
		lost = append(lost, l.what)
	}
	if len(lost) > 0 {
		t.Errorf("tables published while the file was written lacked its entries: %d of %d publishes, first: %s", len(lost), publishes, lost[0])
	}
}

// TestManifestList: kind List documents (what kubectl get -o yaml writes)
// are read, with other kinds among the items ignored and a bad item skipped
// alone.
func TestManifestList(t *testing.T) {
	item := func(name, version string) string {
		return fmt.Sprintf(`{"apiVersion":"networking.istio.io/%s","kind":"ServiceEntry","metadata":{"name":%q,"namespace":"ns"},"spec":{"hosts":["%s.internal"],"addresses":["192.0.2.1"]}}`, version, name, name)
	}
	configMap := `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm"},"data":{"k":"v"}}`
	jsonList := func(items ...string) string {
		return `{"apiVersion":"v1","kind":"List","metadata":{"resourceVersion":""},"items":[` + strings.Join(items, ",") + `]}`
	}
	cases := []struct {
		name string
		doc  string
		want []string
	}{
		{name: "kubectl get -o yaml", doc: `apiVersion: v1
items:
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata:
    name: a
    namespace: ns
    resourceVersion: "1"
  spec:
    hosts: [a.internal]
    addresses: [192.0.2.1]
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cm, namespace: ns}
  data: {k: v}
- apiVersion: networking.istio.io/v1beta1
  kind: ServiceEntry
  metadata: {name: b, namespace: ns}
  spec: {hosts: [b.internal], addresses: [192.0.2.2]}
kind: List
metadata:
  resourceVersion: ""
`, want: []string{"ns/a", "ns/b"}},
		{name: "JSON", doc: jsonList(item("a", "v1"), configMap, item("b", "v1alpha3")), want: []string{"ns/a", "ns/b"}},
		{name: "beside other documents", doc: sourcetest.SEYAML("c", "c.internal", "192.0.2.3") + "---\n" + jsonList(item("d", "v1")) + "\n---\n" + configMap,
			want: []string{"ns/c", "ns/d"}},
		{name: "bad item skipped alone", doc: jsonList(item("", "v1"), `{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"x"},"spec":{"hosts":"not a list"}}`, item("e", "v1")),
			want: []string{"ns/e"}},
		{name: "null and empty items", doc: jsonList("null", "{}", item("f", "v1")), want: []string{"ns/f"}},
		{name: "empty", doc: "apiVersion: v1\nkind: List\nitems: []\n", want: nil},
		{name: "no items", doc: "apiVersion: v1\nkind: List\n", want: nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			entries, _, err := Parse("test.yaml", []byte(tc.doc), entry.Options{}, sourcetest.NewSink())
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range entries {
				got = append(got, e.Key.Name)
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestManifestStopLeavesNoGoroutine: stop ends the source's goroutines and
// closes its fsnotify watcher, also while a change is waiting to settle.
func TestManifestStopLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	file := filepath.Join(dir, "se.yaml")
	sourcetest.WriteFile(t, file, sourcetest.SEYAML("a", "a.internal", "192.0.2.1"))
	for _, paths := range [][]string{{dir}, {file}, {dir, file}} {
		src := New(paths, entry.Options{}, sourcetest.NewSink())
		if err := src.Start(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(sourcetest.SEYAML("a", "a.internal", "192.0.2.2")), 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(src.settle / 2) // a read is pending
		src.Stop()
		src.Stop() // twice is harmless
	}
}

// TestManifestEmptied: a file that loses all its entries keeps them through
// one look (an emptied file: one read; a removed file: one check) and loses
// them when the next look a settle interval later finds it so again; a writer
// that fills it again in between costs nothing. The source is driven by hand
// with a clock of its own: no goroutine, no timing.
func TestManifestEmptied(t *testing.T) {
	inPlace := func(content string) func(t *testing.T, path string) {
		return func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	remove := func(t *testing.T, path string) {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name   string
		empty  func(t *testing.T, path string)
		kept   int  // checks, a settle interval apart, that keep the entries: the change seen, then the first read
		refill bool // written again after the last check that keeps the entries
	}{
		{name: "truncated", empty: inPlace(""), kept: 2},
		{name: "comments only", empty: inPlace("# nothing yet\n"), kept: 2},
		{name: "other kinds only", empty: inPlace("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"), kept: 2},
		{name: "removed", empty: remove, kept: 1},
		{name: "truncated, then written", empty: inPlace(""), kept: 2, refill: true},
		{name: "removed, then written", empty: remove, kept: 1, refill: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "se.yaml")
			sourcetest.WriteFile(t, path, sourcetest.SEYAML("a", "a.internal", "192.0.2.1"))
			sourcetest.WriteFile(t, filepath.Join(dir, "other.yaml"), sourcetest.SEYAML("b", "b.internal", "192.0.2.2"))
			st := sourcetest.NewSink()
			src := New([]string{dir}, entry.Options{}, st)
			now := time.Now()
			src.check(now, true)
			st.MarkSynced()
			look := func(what, want string) {
				t.Helper()
				now = now.Add(src.settle)
				src.check(now, false)
				if got := st.FirstA("a.internal"); got != want {
					t.Fatalf("%s: a.internal %q, want %q", what, got, want)
				}
				if got := st.FirstA("b.internal"); got != "192.0.2.2" {
					t.Fatalf("%s: the other file's b.internal %q", what, got)
				}
			}
			look("before the change", "192.0.2.1")
			tc.empty(t, path)
			for i := range tc.kept {
				look(fmt.Sprintf("check %d after the change", i+1), "192.0.2.1")
			}
			if !tc.refill {
				look("still without entries a settle interval later", "")
				look("and after", "")
				return
			}
			inPlace(sourcetest.SEYAML("a", "a.internal", "192.0.2.3"))(t, path)
			look("written again: the change seen", "192.0.2.1")
			look("written again: read", "192.0.2.3")
		})
	}
}

// parseManifestsSequential is Parse as it was before documents were
// converted on several goroutines: the reference for what Parse
// must return, count and log.
func parseManifestsSequential(source string, data []byte, opts entry.Options, tally Reporter) ([]*entry.Entry, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var entries []*entry.Entry
	for doc := 1; ; doc++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return entries, nil
			}
			return entries, fmt.Errorf("document %d: %w", doc, err)
		}
		items, isList, err := listItems(raw)
		if err != nil {
			tally.Rejected(ReasonInvalidManifest)
			log.Errorf("manifests: %s: document %d: %v", source, doc, err)
			continue
		}
		if !isList {
			items = []runtime.RawExtension{{Raw: raw}}
		}
		for i, item := range items {
			e, key, skips, err := convertDocumentSequential(item.Raw, opts)
			if err != nil {
				tally.Rejected(ReasonInvalidManifest)
				if isList {
					log.Errorf("manifests: %s: document %d, item %d: %v", source, doc, i+1, err)
				} else {
					log.Errorf("manifests: %s: document %d: %v", source, doc, err)
				}
				continue
			}
			tally.Skipped("ServiceEntry "+key, skips)
			if e != nil {
				entries = append(entries, e)
			}
		}
	}
}

// listItems returns the items of a kind List document; isList is false for
// any other document (the source reads the type once, in jsonDocument; the
// sequential reference splits streams with this).
func listItems(raw json.RawMessage) (items []runtime.RawExtension, isList bool, err error) {
	var tm metav1.TypeMeta
	if json.Unmarshal(raw, &tm) != nil || !isListType(tm) {
		return nil, false, nil
	}
	items, err = decodeList(raw)
	return items, true, err
}

// convertDocumentSequential is convertDocument as it was: the type read on
// its own, then the slim struct.
func convertDocumentSequential(raw json.RawMessage, opts entry.Options) (e *entry.Entry, key string, skips []entry.Skip, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, "", nil, nil
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(raw, &tm); err != nil {
		return nil, "", nil, err
	}
	if tm.Kind != "ServiceEntry" || !entry.IsServiceEntryVersion(tm.APIVersion) {
		return nil, "", nil, nil
	}
	var se entry.ServiceEntry
	if err := json.Unmarshal(raw, &se); err != nil {
		return nil, "", nil, fmt.Errorf("ServiceEntry: %w", err)
	}
	if se.Name == "" {
		return nil, "", nil, errors.New("ServiceEntry without metadata.name")
	}
	e, skips, err = se.Entry(opts)
	if err != nil {
		return nil, "", nil, fmt.Errorf("ServiceEntry: %w", err)
	}
	_, k := entry.Identity(&se.ObjectMeta)
	return e, k.Name, skips, nil
}

// parsed is what one parse of a stream gave: entries, error, counts and log.
type parsed struct {
	entries []*entry.Entry
	err     string
	counts  map[string]uint64
	log     []string // without the timestamps
}

// parseEntries is Parse without the workloads, which the sequential
// reference does not read.
func parseEntries(source string, data []byte, opts entry.Options, tally Reporter) ([]*entry.Entry, error) {
	entries, _, err := Parse(source, data, opts, tally)
	return entries, err
}

// parseLogged runs parse on data and records what it logged. The log is the
// process's: the test that calls it must not run in parallel.
func parseLogged(parse func(string, []byte, entry.Options, Reporter) ([]*entry.Entry, error), data []byte, opts entry.Options) parsed {
	var buf bytes.Buffer
	clog.SetOutput(&buf)
	defer clog.Discard()
	tally := sourcetest.NewSink()
	entries, err := parse("test.yaml", data, opts, tally)
	p := parsed{entries: entries, counts: tally.Counts()}
	if err != nil {
		p.err = err.Error()
	}
	for line := range strings.Lines(buf.String()) {
		if i := strings.Index(line, "["); i >= 0 {
			line = line[i:]
		}
		p.log = append(p.log, line)
	}
	return p
}

// sameAsSequential fails unless Parse returns, counts and logs for
// data exactly what a sequential read does, in the same order.
func sameAsSequential(t *testing.T, data []byte, opts entry.Options) {
	t.Helper()
	want := parseLogged(parseManifestsSequential, data, opts)
	got := parseLogged(parseEntries, data, opts)
	if got.err != want.err {
		t.Errorf("error %q, want %q", got.err, want.err)
	}
	if !maps.Equal(got.counts, want.counts) {
		t.Errorf("skip counts %v, want %v", got.counts, want.counts)
	}
	if !slices.Equal(got.log, want.log) {
		t.Errorf("log differs from the sequential read's:\n%s", diffLines(got.log, want.log))
	}
	if len(got.entries) != len(want.entries) {
		t.Fatalf("%d entries, want %d", len(got.entries), len(want.entries))
	}
	for i := range want.entries {
		if !reflect.DeepEqual(got.entries[i], want.entries[i]) {
			t.Fatalf("entry %d: %s %+v, want %s %+v", i, got.entries[i].Key, got.entries[i], want.entries[i].Key, want.entries[i])
		}
	}
}

// diffLines shows the first line where got and want differ.
func diffLines(got, want []string) string {
	for i := range max(len(got), len(want)) {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			return fmt.Sprintf("line %d (of %d, want %d):\n got  %q\n want %q", i+1, len(got), len(want), g, w)
		}
	}
	return ""
}

// orderedDocuments are n YAML documents whose order matters: each name is
// defined twice, the later with another address (which must win); some
// documents are invalid, some have a host convert leaves out, some are Lists
// with a bad item and a ConfigMap, some hold only a comment, and some
// separators stand alone (no document, no number). As JSON (one document a
// line), the comments and lone separators are left out.
func orderedDocuments(n int, asJSON bool) []string {
	half := n / 2
	var docs []string
	for i := range n {
		j := i % half
		var doc string
		switch {
		case i%97 == 5:
			doc = fmt.Sprintf("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bad-%d, namespace: ns}\nspec: {hosts: [bad-%d.internal], resolution: BOGUS}\n", i, i)
		case i%211 == 11:
			doc = fmt.Sprintf("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: list-%d, namespace: ns}, spec: {hosts: [list-%d.internal], addresses: [192.0.2.1]}}\n"+
				"- {apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {namespace: ns}, spec: {hosts: [noname.internal]}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: cm}}\n", i, i)
		case i%53 == 3 && !asJSON:
			doc = "# nothing here yet\n"
		default:
			hosts := fmt.Sprintf("[h-%d.internal]", j)
			if i%89 == 7 {
				hosts = fmt.Sprintf("[h-%d.internal, 'not a host', '*.bad*.internal']", j)
			}
			doc = fmt.Sprintf("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se-%d, namespace: ns}\nspec: {hosts: %s, addresses: [10.%d.%d.%d]}\n",
				j, hosts, i/half, j>>8&255, j&255)
		}
		if asJSON {
			j, err := sigsyaml.YAMLToJSON([]byte(doc))
			if err != nil {
				panic(err)
			}
			doc = string(j) + "\n"
		} else if i%61 == 2 {
			doc = "---\n" + doc
		}
		docs = append(docs, doc)
	}
	return docs
}

// blockDocuments are n ServiceEntries in block style, which the direct
// YAML path converts, each name defined twice.
func blockDocuments(n int) []string {
	docs := make([]string, n)
	for i := range docs {
		docs[i] = benchManifestYAML(i % (n / 2))
	}
	return docs
}

// yamlCaseDocuments are yamlCases' documents the direct path takes (valid
// YAML all), or all of them.
func yamlCaseDocuments(takenOnly bool) []string {
	var docs []string
	for _, tc := range yamlCases {
		if tc.taken || !takenOnly {
			docs = append(docs, tc.doc)
		}
	}
	return docs
}

func yamlStream(docs []string) string { return "---\n" + strings.Join(docs, "---\n") }

func jsonStream(docs []string) string { return strings.Join(docs, "") }

// TestManifestParallelMatchesSequential: converting documents on several
// goroutines changes nothing a sequential read shows: entries and their
// order (of two definitions of a name, the later wins), the document numbers
// in the log and in the error that stops a stream, and the skip counts, also
// when the stream stops part-way.
func TestManifestParallelMatchesSequential(t *testing.T) {
	const n = 3000
	yamlDocs, jsonDocs := orderedDocuments(n, false), orderedDocuments(n, true)
	broken := func(docs []string, at int, bad string) []string {
		return slices.Insert(slices.Clone(docs), at, bad)
	}
	streams := map[string]string{
		"YAML":                      yamlStream(yamlDocs),
		"YAML, syntax error":        yamlStream(broken(yamlDocs, 2*n/3, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a\n  broken: [\n")),
		"YAML, bad separator":       yamlStream(broken(yamlDocs, n/2, "--- not a separator\n")),
		"YAML, tabs":                yamlStream(broken(yamlDocs, n/3, "apiVersion: v1\n\tkind: List\n")),
		"JSON":                      jsonStream(jsonDocs),
		"JSON, syntax error":        jsonStream(broken(jsonDocs, 2*n/3, `{"apiVersion": "v1", "kind": }`+"\n")),
		"JSON, then YAML":           jsonDocs[0] + yamlStream(yamlDocs[1:]),
		"JSON, then a bad document": jsonDocs[0] + "kind: [\n" + jsonStream(jsonDocs[1:]),
		"odd kinds and types": yamlStream([]string{
			"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\nspec: not an object\n",
			"apiVersion: networking.istio.io/v1\nkind: 5\nmetadata: {name: k}\n",
			"APIVERSION: networking.istio.io/v1\nKind: ServiceEntry\nmetadata: {name: upper, namespace: ns}\nspec: {hosts: [upper.internal], addresses: [192.0.2.9]}\n",
			"apiVersion: v1\nkind: List\nspec: 5\nitems: [{apiVersion: networking.istio.io/v1, kind: ServiceEntry, metadata: {name: in-list}, spec: {hosts: [in.internal], addresses: [192.0.2.8]}}]\n",
			"apiVersion: v1\nkind: List\nitems: {not: a list}\n",
			"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: typed}\nspec: {hosts: 5}\n",
			"- a list\n- at the top\n",
			"just a string\n",
			"kind: ServiceEntry\napiVersion: networking.istio.io/v1\nmetadata: {name: dup}\nkind: ConfigMap\n",
			`{"kind":"ServiceEntry","Kind":"ConfigMap","apiVersion":"networking.istio.io/v1","metadata":{"name":"fold"}}` + "\n",
			`{"Kind":"ConfigMap","kind":"ServiceEntry","apiVersion":"networking.istio.io/v1","metadata":{"name":"fold2"},"spec":{"hosts":["f.internal"]}}` + "\n",
		}),
		"YAML, block style":            yamlStream(blockDocuments(300)),
		"YAML, the direct path's edge": yamlStream(yamlCaseDocuments(true)),
		"one document":                 yamlDocs[0],
		"only comments":                "# a\n---\n# b\n",
		"empty":                        "",
	}
	for i, doc := range yamlCaseDocuments(false) {
		streams[fmt.Sprintf("direct path's case %d", i)] = doc
	}
	for name, s := range streams {
		t.Run(name, func(t *testing.T) {
			for _, opts := range []entry.Options{{}, {AutoAllocate: entry.AutoAllocateLegacy}} {
				sameAsSequential(t, []byte(s), opts)
			}
		})
	}

	// Through the source: the later of two definitions is served.
	dir := t.TempDir()
	sourcetest.WriteFile(t, filepath.Join(dir, "ordered.yaml"), streams["YAML"])
	st := sourcetest.NewSink()
	src := New([]string{dir}, entry.Options{}, st)
	src.check(time.Now(), true)
	st.MarkSynced()
	if got := st.FirstA("h-1.internal"); got != "10.1.0.1" {
		t.Errorf("h-1.internal: %q, want the later definition's 10.1.0.1", got)
	}
}

// TestManifestManyFiles: files read at the same time give what one at a
// time did: every file's entries, the one of a name defined in several files
// from the path that sorts last, and one count for a file that does not parse.
func TestManifestManyFiles(t *testing.T) {
	dir := t.TempDir()
	const n = 40
	for i := range n {
		sourcetest.WriteFile(t, filepath.Join(dir, fmt.Sprintf("f-%02d.yaml", i)),
			sourcetest.SEYAML(fmt.Sprintf("own-%d", i), fmt.Sprintf("own-%d.internal", i), fmt.Sprintf("192.0.2.%d", i))+"---\n"+
				sourcetest.SEYAML("shared", "shared.internal", fmt.Sprintf("198.51.100.%d", i)))
	}
	sourcetest.WriteFile(t, filepath.Join(dir, "g-bad.yaml"), "metadata: {name: a\n  broken: [\n")
	badDoc := filepath.Join(dir, "h-bad-document.yaml")
	sourcetest.WriteFile(t, badDoc, sourcetest.SEYAML("h", "h.internal", "192.0.2.200")+"---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec: x\n")
	var logged bytes.Buffer
	clog.SetOutput(&logged)
	defer clog.Discard()
	st := sourcetest.NewSink()
	src := New([]string{dir}, entry.Options{}, st)
	src.check(time.Now(), true)
	st.MarkSynced()
	if want := "manifests: " + badDoc + ": document 2: "; !strings.Contains(logged.String(), want) {
		t.Errorf("no %q in the log (a document's problem names its file):\n%s", want, logged.String())
	}
	for i := range n {
		if got, want := st.FirstA(fmt.Sprintf("own-%d.internal", i)), fmt.Sprintf("192.0.2.%d", i); got != want {
			t.Errorf("own-%d.internal: %q, want %q", i, got, want)
		}
	}
	if got, want := st.FirstA("shared.internal"), fmt.Sprintf("198.51.100.%d", n-1); got != want {
		t.Errorf("shared.internal: %q, want the last path's %q", got, want)
	}
	if got := st.Counts(); !maps.Equal(got, map[string]uint64{ReasonInvalidManifest: 2}) {
		t.Errorf("skip counts %v, want two invalid manifests (a file, a document)", got)
	}
}

// TestManifestFixturesMatchSequential: every manifest of the repository reads
// as it does sequentially.
func TestManifestFixturesMatchSequential(t *testing.T) {
	files := sourcetest.ManifestFiles(t)
	if len(files) == 0 {
		t.Fatal("no manifests found")
	}
	for _, path := range slices.Sorted(maps.Keys(files)) {
		t.Run(path, func(t *testing.T) { sameAsSequential(t, files[path], entry.Options{}) })
	}
}

// FuzzManifestsMatchSequential: on any stream, Parse returns,
// counts and logs what a sequential read does.
func FuzzManifestsMatchSequential(f *testing.F) {
	for _, data := range sourcetest.ManifestFiles(f) {
		f.Add(data)
	}
	f.Add([]byte(yamlStream(orderedDocuments(40, false))))
	f.Add([]byte(jsonStream(orderedDocuments(40, true))))
	f.Add([]byte("{\"kind\": \"List\"}\n---\nkind: List\napiVersion: v1\nitems: [null, {}]\n--- # comment\non: yes\n"))
	f.Add([]byte(yamlStream(blockDocuments(10))))
	for _, doc := range yamlCaseDocuments(false) {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sameAsSequential(t, data, entry.Options{})
	})
}
