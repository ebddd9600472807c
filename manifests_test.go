package serviceentry

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestManifestSource(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.yaml"), seYAML("a", "a.internal", "192.0.2.1")+"---\n"+seYAML("b", "b.internal", "192.0.2.2"))
	writeFile(t, filepath.Join(dir, "c.json"), `{"apiVersion":"networking.istio.io/v1beta1","kind":"ServiceEntry","metadata":{"name":"c","namespace":"ns"},"spec":{"hosts":["c.internal"],"addresses":["192.0.2.3"]}}`)
	writeFile(t, filepath.Join(dir, "notes.txt"), seYAML("ignored", "txt.internal", "192.0.2.9"))
	writeFile(t, filepath.Join(dir, ".hidden.yaml"), seYAML("hidden", "hidden.internal", "192.0.2.9"))

	st := newStore(false)
	src := newManifestSource([]string{dir}, convertOptions{}, st)
	if err := src.start(); err != nil {
		t.Fatal(err)
	}
	defer src.stop()

	for name, want := range map[string]string{"a.internal": "192.0.2.1", "b.internal": "192.0.2.2", "c.internal": "192.0.2.3", "txt.internal": "", "hidden.internal": ""} {
		if got := lookupA(st, name); got != want {
			t.Errorf("%s: got %q, want %q", name, got, want)
		}
	}

	// A change is served.
	writeFile(t, filepath.Join(dir, "a.yaml"), seYAML("a", "a.internal", "192.0.2.11"))
	eventually(t, "a.internal changes", func() bool { return lookupA(st, "a.internal") == "192.0.2.11" })
	if got := lookupA(st, "b.internal"); got != "" {
		t.Errorf("b.internal removed from the file but still served: %q", got)
	}

	// A file that no longer parses keeps its last good content.
	writeFile(t, filepath.Join(dir, "a.yaml"), "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a\n  broken: [\n")
	writeFile(t, filepath.Join(dir, "d.yaml"), seYAML("d", "d.internal", "192.0.2.4"))
	eventually(t, "d.internal appears", func() bool { return lookupA(st, "d.internal") == "192.0.2.4" })
	if got := lookupA(st, "a.internal"); got != "192.0.2.11" {
		t.Errorf("a.internal after a bad edit: got %q, want the last good 192.0.2.11", got)
	}

	// Deleting a file removes its entries.
	if err := os.Remove(filepath.Join(dir, "c.json")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "c.internal disappears", func() bool { return lookupA(st, "c.internal") == "" })
}

// TestManifestBadDocumentKeepsOthers: one invalid ServiceEntry in a file does
// not cost the valid ones beside it.
func TestManifestBadDocumentKeepsOthers(t *testing.T) {
	doc := seYAML("good", "good.internal", "192.0.2.1") + "---\n" +
		"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bad}\nspec: {hosts: [bad.internal], resolution: BOGUS}\n" + "---\n" +
		"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {namespace: x}\nspec: {hosts: [noname.internal], addresses: [192.0.2.3]}\n" + "---\n" +
		seYAML("good2", "good2.internal", "192.0.2.2")
	entries, err := parseManifests([]byte(doc), convertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0].name != "good" || entries[1].name != "good2" {
		t.Fatalf("got %d entries, want good and good2", len(entries))
	}
}

// TestManifestConfigMapVolume: a ConfigMap volume swaps a ..data symlink; the
// change is seen and the timestamped folders are not read twice.
func TestManifestConfigMapVolume(t *testing.T) {
	dir := t.TempDir()
	mkVersion := func(v, addr string) {
		d := filepath.Join(dir, "..v"+v)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(d, "se.yaml"), seYAML("cm", "cm.internal", addr))
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink("..v"+v, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	mkVersion("1", "192.0.2.1")
	if err := os.Symlink("..data/se.yaml", filepath.Join(dir, "se.yaml")); err != nil {
		t.Fatal(err)
	}
	st := newStore(false)
	src := newManifestSource([]string{dir}, convertOptions{}, st)
	if err := src.start(); err != nil {
		t.Fatal(err)
	}
	defer src.stop()
	if got := lookupA(st, "cm.internal"); got != "192.0.2.1" {
		t.Fatalf("got %q", got)
	}
	time.Sleep(10 * time.Millisecond) // a later modification time
	mkVersion("2", "192.0.2.2")
	eventually(t, "ConfigMap update", func() bool { return lookupA(st, "cm.internal") == "192.0.2.2" })
}

func TestManifestMissingPath(t *testing.T) {
	src := newManifestSource([]string{"/nonexistent/serviceentries"}, convertOptions{}, newStore(false))
	if err := src.start(); err == nil {
		t.Fatal("want an error for a missing path")
	}
	src.stop()
}
