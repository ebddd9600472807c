package manifest

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	"sigs.k8s.io/yaml"
)

// benchManifestYAML is one ServiceEntry as a mesh has them: a few hosts,
// ports, a resolution, kubectl's annotation and the labels tools add.
func benchManifestYAML(i int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: se-%[1]d
  namespace: ns-%[2]d
  labels:
    app: svc-%[1]d
    team: t%[2]d
spec:
  hosts:
  - svc-%[1]d.example.internal
  - svc-%[1]d-alt.example.internal
  addresses:
  - 10.%[3]d.%[4]d.%[5]d
  ports:
  - number: 443
    name: https
    protocol: TLS
  - number: 80
    name: http
    protocol: HTTP
  location: MESH_EXTERNAL
  resolution: DNS
`, i, i%50, i>>16&255, i>>8&255, i&255)
}

// writeBenchManifests writes n entries into files of perFile entries each,
// as YAML documents, or as JSON documents (one per line) when asJSON is set.
func writeBenchManifests(b *testing.B, dir string, n, perFile int, asJSON bool) {
	b.Helper()
	for f := 0; f*perFile < n; f++ {
		var sb strings.Builder
		for i := f * perFile; i < min(n, (f+1)*perFile); i++ {
			if !asJSON {
				sb.WriteString("---\n")
				sb.WriteString(benchManifestYAML(i))
				continue
			}
			j, err := yaml.YAMLToJSON([]byte(benchManifestYAML(i)))
			if err != nil {
				b.Fatal(err)
			}
			sb.Write(j)
			sb.WriteString("\n")
		}
		ext := ".yaml"
		if asJSON {
			ext = ".json"
		}
		sourcetest.WriteFile(b, filepath.Join(dir, fmt.Sprintf("entries-%03d%s", f, ext)), sb.String())
	}
}

// BenchmarkManifests100k: reading a folder of 100,000 ServiceEntries (ten
// files of 10,000) into the store's first set, as start does, from YAML and
// from JSON files.
func BenchmarkManifests100k(b *testing.B) {
	b.Run("yaml", func(b *testing.B) { benchManifests(b, false) })
	b.Run("json", func(b *testing.B) { benchManifests(b, true) })
}

func benchManifests(b *testing.B, asJSON bool) {
	const n = 100_000
	dir := b.TempDir()
	writeBenchManifests(b, dir, n, 10_000, asJSON)
	b.ResetTimer()
	for b.Loop() {
		m := New([]string{dir}, entry.Options{}, sourcetest.NewSink())
		var got int
		m.publish = func(entries map[entry.Key]*entry.Entry, _ map[entry.Key]*entry.Workload) { got = len(entries) }
		m.check(time.Now(), true)
		if got != n {
			b.Fatalf("read %d entries, want %d", got, n)
		}
	}
}
