package sourcetest

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	networking "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WriteFile replaces path with content atomically (a hidden temporary file in
// the same folder, then a rename), so that a source watching the folder never
// sees it half-written. Tests of in-place writes write on their own.
func WriteFile(t testing.TB, path, content string) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tmp.WriteString(content)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		t.Fatal(err)
	}
}

// SEYAML is a ServiceEntry in namespace ns declaring host with addr.
func SEYAML(name, host, addr string) string {
	return "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: " + name + ", namespace: ns}\n" +
		"spec: {hosts: [" + host + "], addresses: [" + addr + "]}\n"
}

// APIObject is a ServiceEntry as the API server sends it, with what the slim
// decoder skips: kubectl's annotation, managedFields, a status condition.
func APIObject(ns, name, host, addr string) string {
	return fmt.Sprintf(`{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":%q,"namespace":%q,`+
		`"resourceVersion":"5","labels":{"app":"x"},"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"big\":true}"},`+
		`"managedFields":[{"manager":"kubectl","operation":"Apply","fieldsType":"FieldsV1","fieldsV1":{"f:spec":{"f:hosts":{}}}}]},`+
		`"spec":{"hosts":[%q],"addresses":[%q],"ports":[{"number":53,"name":"dns","protocol":"UDP"}],"resolution":"STATIC","location":"MESH_INTERNAL"},`+
		`"status":{"conditions":[{"type":"Reconciled","status":"True"}]}}`, name, ns, host, addr)
}

// Kubeconfig writes a kubeconfig for the API server at url and returns its
// path.
func Kubeconfig(t testing.TB, url string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	WriteFile(t, path, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, url))
	return path
}

// The legacy allocator's fixtures: entry i is e<i> in namespace ns<i%3>,
// created i%5 seconds after a fixed time, declaring h<i>.legacy.internal with
// DNS resolution, so that Istio's order (creation time, then namespace and
// name) is exercised. LegacyEntries gives them as manifests for the sources;
// LegacyFixture as Istio's types, to convert without YAML.
func LegacyFixture(i int) (meta *metav1.ObjectMeta, spec *networking.ServiceEntry) {
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	meta = &metav1.ObjectMeta{Name: fmt.Sprintf("e%d", i), Namespace: fmt.Sprintf("ns%d", i%3),
		CreationTimestamp: metav1.NewTime(base.Add(time.Duration(i%5) * time.Second))}
	spec = &networking.ServiceEntry{Hosts: []string{fmt.Sprintf("h%d.legacy.internal", i)}, Resolution: networking.ServiceEntry_DNS}
	return meta, spec
}

// LegacyEntries is the first n legacy fixtures as ServiceEntry manifests, one
// document each.
func LegacyEntries(n int) []string {
	docs := make([]string, n)
	for i := range docs {
		meta, spec := LegacyFixture(i)
		docs[i] = fmt.Sprintf("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"+
			"metadata: {name: %s, namespace: %s, creationTimestamp: %q}\nspec:\n  hosts: [%s]\n  resolution: DNS\n",
			meta.Name, meta.Namespace, meta.CreationTimestamp.UTC().Format(time.RFC3339), spec.Hosts[0])
	}
	return docs
}

// ModuleRoot returns the folder of the module's go.mod, the first found from
// the test's working folder upwards.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working folder")
		}
		dir = parent
	}
}

// IsManifestName reports whether a file name is one the manifests source
// reads in a folder: *.yaml, *.yml or *.json.
func IsManifestName(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// ManifestFiles returns the content of every manifest file of the repository
// (examples/, deploy/ and test/), by path relative to the module's root.
func ManifestFiles(t testing.TB) map[string][]byte {
	t.Helper()
	root := ModuleRoot(t)
	out := make(map[string][]byte)
	for _, dir := range []string{"examples", "deploy", "test"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !IsManifestName(path) {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, path)
			if err != nil {
				return err
			}
			out[rel] = data
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}
