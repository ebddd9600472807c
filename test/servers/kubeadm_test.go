package servers

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"text/template"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// kubeadmCorefile is the Corefile the pinned kubeadm writes for a cluster
// whose domain is cluster.local: its template, the constant CoreDNSConfigMap
// of cmd/kubeadm/app/phases/addons/dns, read from the source of the pinned
// module (importing the package would add kubeadm's own dependencies to this
// module, whose go.sum keys the cached server build), filled as kubeadm
// fills it, with text/template (kubeadmutil.ParseTemplate).
func kubeadmCorefile(t *testing.T) string {
	t.Helper()
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes").Output()
	if err != nil {
		t.Fatalf("finding the kubernetes module: %v", err)
	}
	path := filepath.Join(strings.TrimSpace(string(dir)), "cmd/kubeadm/app/phases/addons/dns/manifests.go")
	file, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var text string
	ast.Inspect(file, func(n ast.Node) bool {
		if spec, ok := n.(*ast.ValueSpec); ok && len(spec.Names) == 1 && spec.Names[0].Name == "CoreDNSConfigMap" {
			if lit, ok := spec.Values[0].(*ast.BasicLit); ok {
				text, _ = strconv.Unquote(lit.Value)
			}
		}
		return text == ""
	})
	if text == "" {
		t.Fatalf("%s: no constant CoreDNSConfigMap; kubeadm moved its template", path)
	}
	tmpl, err := template.New("coredns").Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, struct{ DNSDomain, UpstreamNameserver, StubDomain string }{DNSDomain: "cluster.local"}); err != nil {
		t.Fatal(err)
	}
	return corefileOf(t, out.Bytes())
}

func corefileOf(t *testing.T, manifest []byte) string {
	t.Helper()
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal(manifest, &cm); err != nil {
		t.Fatal(err)
	}
	return cm.Data["Corefile"]
}

// stanza is the serviceentry block of a Corefile, with its own lines.
var stanza = regexp.MustCompile(`(?m)^[ \t]*serviceentry \{\n(?:.*\n)*?[ \t]*\}\n`)

// withoutStanza is corefile without its one serviceentry block, or fails.
func withoutStanza(t *testing.T, what, corefile string) string {
	t.Helper()
	if n := len(stanza.FindAllString(corefile, -1)); n != 1 {
		t.Fatalf("%s: %d serviceentry blocks, want 1", what, n)
	}
	return stanza.ReplaceAllString(corefile, "")
}

// TestShippedCorefileIsKubeadms: the shipped in-cluster ConfigMap, and the
// README's example of it, are the Corefile the pinned kubeadm writes plus our
// stanza, so that applying them changes nothing else of a stock cluster
// (kubeadm's cache block, for one). A new kubeadm that changes its Corefile
// fails this test when test/servers moves to it.
func TestShippedCorefileIsKubeadms(t *testing.T) {
	want := kubeadmCorefile(t)
	manifest, err := os.ReadFile("../../deploy/in-cluster/coredns-configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	shipped := corefileOf(t, manifest)
	if got := withoutStanza(t, "deploy/in-cluster/coredns-configmap.yaml", shipped); got != want {
		t.Errorf("deploy/in-cluster/coredns-configmap.yaml without the stanza:\n%s\nkubeadm writes:\n%s", got, want)
	}

	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	// The README's example is the first Corefile of its Examples section,
	// indented by four spaces less than in the ConfigMap.
	_, examples, ok := strings.Cut(string(readme), "\n## Examples\n")
	if !ok {
		t.Fatal("README.md has no Examples section")
	}
	_, block, ok := strings.Cut(examples, "~~~ corefile\n")
	if !ok {
		t.Fatal("README.md's Examples section has no Corefile")
	}
	block, _, _ = strings.Cut(block, "~~~\n")
	if block != shipped {
		t.Errorf("README.md's in-cluster example:\n%s\nis not the shipped Corefile:\n%s", block, shipped)
	}
}
