package manifest

import (
	"slices"
	"strings"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	"k8s.io/apimachinery/pkg/util/validation"
)

// FuzzParseManifests feeds arbitrary bytes to the manifest parser, between two
// valid ServiceEntries: no panic; every entry returned holds only valid,
// lower-case names, every workload only plain IPs under its own key; the valid entry before the input is always returned, and
// the one after it whenever the stream parses to its end.
func FuzzParseManifests(f *testing.F) {
	for _, data := range sourcetest.ManifestFiles(f) {
		f.Add(data)
	}
	f.Add([]byte(`{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"j"},"spec":{"hosts":["J.internal"],"addresses":["192.0.2.1"]}}`))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec: {hosts: ['*'], addresses: ['fe80::1%eth0']}\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte(benchManifestYAML(1)))
	for _, doc := range yamlCaseDocuments(false) {
		f.Add([]byte(doc))
	}
	f.Add([]byte(`{"apiVersion":"networking.istio.io/v1","kind":"WorkloadEntry","metadata":{"name":"w","annotations":{"proxy.istio.io/health-checks-enabled":"true"}},"spec":{"address":"10.0.0.1","labels":{"app":"db"}},"status":{"conditions":[{"type":"Healthy","status":"True"}]}}`))
	f.Add([]byte("apiVersion: networking.istio.io/v1beta1\nkind: WorkloadEntry\nmetadata: {name: w, namespace: ns}\nspec: {address: 'fe80::1%eth0', labels: {'a\\0b': c}}\n"))
	const before = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: fuzz-before, namespace: fuzz}\nspec: {hosts: [before.fuzz], addresses: [192.0.2.1]}\n---\n"
	const after = "\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: fuzz-after, namespace: fuzz}\nspec: {hosts: [after.fuzz], addresses: [192.0.2.2]}\n"
	f.Fuzz(func(t *testing.T, data []byte) {
		input := append(append([]byte(before), data...), after...)
		for _, mode := range []entry.AutoAllocateMode{entry.AutoAllocateStatus, entry.AutoAllocateLegacy} {
			entries, workloads, err := Parse("test.yaml", input, entry.Options{AutoAllocate: mode}, discard{})
			for _, w := range workloads {
				if ns, name, ok := strings.Cut(w.Key.Name, "/"); w.Key.Kind != entry.KindWorkloadEntry || !ok || ns == "" || name == "" {
					t.Fatalf("workload %v: not a WorkloadEntry's namespace/name", w.Key)
				}
				for ip := range w.Addrs() {
					if !ip.IsValid() || ip.Zone() != "" || ip.Is4In6() {
						t.Fatalf("workload %v holds address %v", w.Key, ip)
					}
				}
			}
			keys := make(map[string]bool)
			for _, e := range entries {
				keys[e.Key.Name] = true
			}
			if !keys["fuzz/fuzz-before"] {
				t.Fatalf("the valid entry before the input was lost (err %v)", err)
			}
			if err == nil && !keys["fuzz/fuzz-after"] {
				t.Fatal("the stream parsed to its end but lost the valid entry after the input")
			}
			for _, e := range entries {
				for _, h := range e.Hosts {
					if !validHost(h.Name) {
						t.Fatalf("entry %s holds invalid host %q", e.Key, h.Name)
					}
				}
			}
		}
	})
}

// validHost reports whether name is as the entry model keeps hosts: lower
// case, no trailing dot, an RFC 1123 subdomain whose labels have at most 63
// bytes, or one under a "*." label.
func validHost(name string) bool {
	if name != strings.ToLower(name) || strings.HasSuffix(name, ".") {
		return false
	}
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		name = rest
	}
	return len(validation.IsDNS1123Subdomain(name)) == 0 &&
		!slices.ContainsFunc(strings.Split(name, "."), func(label string) bool { return len(label) > validation.DNS1123LabelMaxLength })
}

// discard is a Reporter that drops what it is told.
type discard struct{}

func (discard) Skipped(string, []entry.Skip) {}
func (discard) Rejected(string)              {}
