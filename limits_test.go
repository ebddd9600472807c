package serviceentry

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/source/manifest"
)

// TestManifestTooLarge: a file over the limit is refused whole, counted and
// logged; its last good content and the other files stay served. A 50 MB file
// under the limit (one entry after 50 MB of comments and other kinds) is read,
// and only what it declares is served.
func TestManifestTooLarge(t *testing.T) {
	dir := t.TempDir()
	big, other := filepath.Join(dir, "big.yaml"), filepath.Join(dir, "other.yaml")
	writeFile(t, big, seYAML("big", "big.internal", "192.0.2.1"))
	writeFile(t, other, seYAML("other", "other.internal", "192.0.2.2"))
	st := startManifests(t, dir)

	// 50 MB of comment lines and other kinds, then one ServiceEntry: under
	// the limit, read.
	var doc bytes.Buffer
	filler := "# " + strings.Repeat("x", 1<<20) + "\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: filler}\n---\n"
	for doc.Len() < 50<<20 {
		doc.WriteString(filler)
	}
	doc.WriteString(seYAML("big", "big.internal", "192.0.2.50"))
	writeFile(t, big, doc.String())
	eventuallyWithin(t, 2*time.Minute, "the 50 MB file read", func() bool { return lookupA(st, "big.internal") == "192.0.2.50" })
	if got := st.table().Hosts; got != 2 {
		t.Errorf("%d names served, want 2", got)
	}

	// Over the limit: refused, the last good content stays.
	tooLarge := func() uint64 { return st.skipped.counts()[manifest.ReasonManifestTooLarge] }
	before := tooLarge()
	doc.WriteString(strings.Repeat("#", manifest.MaxFileBytes-doc.Len()+1))
	doc.WriteString("\n---\n" + seYAML("big", "big.internal", "192.0.2.99"))
	writeFile(t, big, doc.String())
	eventuallyWithin(t, time.Minute, "the refusal counted", func() bool {
		return tooLarge() == before+1
	})
	if got := lookupA(st, "big.internal"); got != "192.0.2.50" {
		t.Errorf("big.internal: %q, want its last good 192.0.2.50", got)
	}
	if got := lookupA(st, "other.internal"); got != "192.0.2.2" {
		t.Fatalf("other.internal: %q", got)
	}
	// The refusal is reported once per change, not on every check: two
	// later changes to another file are read (each check looks at every
	// file) and the count stays.
	for i, addr := range []string{"192.0.2.3", "192.0.2.4"} {
		writeFile(t, other, seYAML("other", "other.internal", addr))
		eventually(t, fmt.Sprintf("later change %d read", i+1), func() bool { return lookupA(st, "other.internal") == addr })
	}
	if got := tooLarge(); got != before+1 {
		t.Errorf("refusal counted %v times", got-before)
	}
	if got := lookupA(st, "big.internal"); got != "192.0.2.50" {
		t.Errorf("big.internal after later checks: %q, want its last good 192.0.2.50", got)
	}
}

// TestManifestTenThousandFiles: a folder of 10,000 files, one entry each, is
// served whole; a change to one file is picked up (each check stats every
// file). The cost of one such look at the folder is logged.
func TestManifestTenThousandFiles(t *testing.T) {
	dir := t.TempDir()
	const n = 10_000
	for i := range n { // before the source starts: no need to write atomically
		content := seYAML(fmt.Sprintf("e%d", i), fmt.Sprintf("h%d.internal", i), fmt.Sprintf("10.0.%d.%d", i/250, i%250+1))
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("se-%05d.yaml", i)), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	began := time.Now()
	st := startManifests(t, dir)
	t.Logf("first read of %d files: %v", n, time.Since(began).Round(time.Millisecond))
	if got := st.table().Hosts; got != n {
		t.Fatalf("%d names served, want %d", got, n)
	}

	writeFile(t, filepath.Join(dir, "se-04242.yaml"), seYAML("e4242", "h4242.internal", "192.0.2.42"))
	eventuallyWithin(t, 10*time.Second, "the changed file", func() bool { return lookupA(st, "h4242.internal") == "192.0.2.42" })
	if got := lookupA(st, "h9999.internal"); got != "10.0.39.250" {
		t.Errorf("h9999.internal: %q", got)
	}
}

// TestAnswerSharing: an entry with 256 hosts and 256 addresses becomes one
// answer shared by its 256 names, so the table grows with what the entry
// says (hosts + addresses), not with hosts x addresses.
func TestAnswerSharing(t *testing.T) {
	var hosts, addrs []string
	for i := range 256 {
		hosts = append(hosts, fmt.Sprintf("h%d.wide.internal", i))
		addrs = append(addrs, fmt.Sprintf("10.2.%d.%d", i/250, i%250+1))
	}
	st := storeFrom(t, entry.Options{}, badEntry("wide", "  hosts: ["+strings.Join(hosts, ", ")+"]\n  addresses: ["+strings.Join(addrs, ", ")+"]\n")+
		"---\n"+badEntry("shadow", "  hosts: [h1.wide.internal]\n  addresses: [192.0.2.1]\n"))
	first := lookupIn(st.table(), "h0.wide.internal")
	if first == nil || first.A().Len() != 256 {
		t.Fatalf("h0: %v", first)
	}
	for _, h := range hosts[2:] {
		if got := lookupIn(st.table(), h); got != first {
			t.Fatalf("%s has an answer of its own", h)
		}
	}
	// A name two entries declare gets its own merged answer.
	if got := lookupIn(st.table(), "h1.wide.internal"); got == first || got.A().Len() != 257 {
		t.Errorf("h1 (declared twice, same namespace): %d addresses, shared %v", got.A().Len(), got == first)
	}
}
