// Package helm renders the official coredns chart (a pinned copy in testdata)
// with deploy/helm/values.yaml, through Helm's own engine and without a
// cluster, and checks what the rendered manifests would run: the Corefile's
// stanza, the image, the service account's RBAC and the memory limit, each
// against the shipped manifest it must agree with.
package helm

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/coredns/caddy/caddyfile"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

const (
	// chartDir is the coredns chart as published (testdata/coredns-1.46.2/NOTICE).
	chartDir = "testdata/coredns-1.46.2"
	// release and namespace are those of deploy/helm/README.md's install command.
	release   = "coredns"
	namespace = "kube-system"
	// root is the repository, whose shipped files the rendering must agree with.
	root = "../.."
)

var valuesFile = filepath.Join(root, "deploy/helm/values.yaml")

// manifests holds Kubernetes objects by "Kind/name", each as its YAML.
type manifests map[string]string

// add indexes the YAML documents of text, read from source. A name seen twice
// is an error: the checks below look objects up by kind and name.
func (m manifests) add(source, text string) error {
	for _, doc := range releaseutil.SplitManifests(text) {
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return fmt.Errorf("%s: %w", source, err)
		}
		if head.Kind == "" { // a document of comments only
			continue
		}
		key := head.Kind + "/" + head.Metadata.Name
		if _, ok := m[key]; ok {
			return fmt.Errorf("%s: %s twice", source, key)
		}
		m[key] = doc
	}
	return nil
}

// render renders the pinned chart for release in namespace with the values in
// file, or with the chart's defaults alone where file is "".
func render(t *testing.T, file string) manifests {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	vals := common.Values{}
	if file != "" {
		if vals, err = common.ReadValuesFile(file); err != nil {
			t.Fatalf("reading the values: %v", err)
		}
	}
	top, err := util.ToRenderValues(chrt, vals, common.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true}, nil)
	if err != nil {
		t.Fatalf("composing the values: %v", err)
	}
	out, err := engine.Render(chrt, top)
	if err != nil {
		t.Fatalf("rendering the chart: %v", err)
	}
	m := manifests{}
	for name, text := range out {
		// NOTES.txt is printed to the user, not applied.
		if filepath.Ext(name) != ".yaml" {
			continue
		}
		if err := m.add(name, text); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// read indexes the manifests of one of the repository's files.
func read(t *testing.T, file string) manifests {
	t.Helper()
	m := manifests{}
	if err := m.add(file, string(readFile(t, file))); err != nil {
		t.Fatal(err)
	}
	return m
}

func readFile(t *testing.T, file string) []byte {
	t.Helper()
	text, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		t.Fatal(err)
	}
	return text
}

// object decodes the object "kind/name" of m.
func object[T any](t *testing.T, m manifests, kind, name string) T {
	t.Helper()
	var obj T
	doc, ok := m[kind+"/"+name]
	if !ok {
		t.Fatalf("no %s %q", kind, name)
	}
	if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
		t.Fatalf("%s %q: %v", kind, name, err)
	}
	return obj
}

// all decodes every object of kind in m.
func all[T any](t *testing.T, m manifests, kind string) []T {
	t.Helper()
	var objs []T
	for key := range m {
		if k, name, _ := strings.Cut(key, "/"); k == kind {
			objs = append(objs, object[T](t, m, kind, name))
		}
	}
	return objs
}

// coredns returns the chart's Deployment, its only one with the autoscaler
// off, and the Deployment's container named coredns.
func coredns(t *testing.T, m manifests) (appsv1.Deployment, corev1.Container) {
	t.Helper()
	deployments := all[appsv1.Deployment](t, m, "Deployment")
	if len(deployments) != 1 {
		t.Fatalf("%d Deployments, want 1", len(deployments))
	}
	return deployments[0], container(t, deployments[0], "coredns")
}

func container(t *testing.T, d appsv1.Deployment, name string) corev1.Container {
	t.Helper()
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("Deployment %q has no container %q", d.Name, name)
	return corev1.Container{}
}

// corefile returns the Corefile the chart's Deployment mounts: the one of
// the ConfigMap its config-volume names, not just any ConfigMap's.
func corefile(t *testing.T, m manifests) string {
	t.Helper()
	d, _ := coredns(t, m)
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "config-volume" && v.ConfigMap != nil {
			return object[corev1.ConfigMap](t, m, "ConfigMap", v.ConfigMap.Name).Data["Corefile"]
		}
	}
	t.Fatalf("Deployment %q mounts no ConfigMap as config-volume", d.Name)
	return ""
}

// dotBlock parses corefile and returns its ".:53" server block.
func dotBlock(t *testing.T, corefile string) caddyfile.ServerBlock {
	t.Helper()
	blocks, err := caddyfile.Parse("Corefile", bytes.NewReader([]byte(corefile)), nil)
	if err != nil {
		t.Fatalf("parsing the Corefile: %v\n%s", err, corefile)
	}
	for _, b := range blocks {
		if slices.Contains(b.Keys, ".:53") {
			return b
		}
	}
	t.Fatalf("no .:53 block in\n%s", corefile)
	return caddyfile.ServerBlock{}
}

// words returns each directive's tokens as text: what CoreDNS reads, whatever
// the lines and indentation.
func words(b caddyfile.ServerBlock) map[string][]string {
	w := map[string][]string{}
	for dir, tokens := range b.Tokens {
		for _, tok := range tokens {
			w[dir] = append(w[dir], tok.Text)
		}
	}
	return w
}

// TestCorefile: the chart's .:53 block is its default one plus the stanza of
// deploy/in-cluster/coredns-configmap.yaml, word for word, written before
// kubernetes as corefile-merge writes it.
func TestCorefile(t *testing.T) {
	ours := dotBlock(t, corefile(t, render(t, valuesFile)))
	stock := words(dotBlock(t, corefile(t, render(t, ""))))
	shipped := words(dotBlock(t, object[corev1.ConfigMap](t,
		read(t, "deploy/in-cluster/coredns-configmap.yaml"), "ConfigMap", "coredns").Data["Corefile"]))

	got := words(ours)
	if !slices.Equal(got["serviceentry"], shipped["serviceentry"]) {
		t.Errorf("stanza %q, deploy/in-cluster's is %q", got["serviceentry"], shipped["serviceentry"])
	}
	for dir := range mergedKeys(got, stock) {
		if dir != "serviceentry" && !slices.Equal(got[dir], stock[dir]) {
			t.Errorf("%s is %q, the chart's default %q", dir, got[dir], stock[dir])
		}
	}
	se, k8s := ours.Tokens["serviceentry"], ours.Tokens["kubernetes"]
	if len(se) == 0 || len(k8s) == 0 || se[0].Line > k8s[0].Line {
		t.Errorf("serviceentry is not written before kubernetes in the .:53 block")
	}
}

// mergedKeys returns the keys of a and of b.
func mergedKeys[K comparable, V any](a, b map[K]V) map[K]bool {
	keys := map[K]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	return keys
}

// TestImage: the chart runs the image of the values, from the repository the
// in-cluster image patch names.
func TestImage(t *testing.T) {
	vals, err := common.ReadValuesFile(valuesFile)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := vals.PathValue("image.repository")
	if err != nil {
		t.Fatal(err)
	}
	tag, err := vals.PathValue("image.tag")
	if err != nil {
		t.Fatal(err)
	}
	_, c := coredns(t, render(t, valuesFile))
	if want := fmt.Sprintf("%s:%s", repo, tag); c.Image != want {
		t.Errorf("image %q, want %q", c.Image, want)
	}
	// A strategic merge patch: a Deployment without kind or name.
	var patch appsv1.Deployment
	if err := yaml.Unmarshal(readFile(t, "deploy/in-cluster/coredns-deployment-patch.yaml"), &patch); err != nil {
		t.Fatal(err)
	}
	patched, _, _ := strings.Cut(container(t, patch, "coredns").Image, "@")
	if repo != patched {
		t.Errorf("repository %q, deploy/in-cluster's patch names %q", repo, patched)
	}
}

// grant is one verb on one resource of one API group.
type grant struct{ group, resource, verb string }

// grants expands rules into each verb on each resource of each group.
func grants(rules []rbacv1.PolicyRule) []grant {
	var g []grant
	for _, r := range rules {
		for _, group := range r.APIGroups {
			for _, res := range r.Resources {
				for _, verb := range r.Verbs {
					g = append(g, grant{group, res, verb})
				}
			}
		}
	}
	return g
}

// TestRBAC: the Deployment's service account is the one deploy/rbac.yaml
// binds, the chart creates it, and every ClusterRole, the chart's and
// deploy/rbac.yaml's (ServiceEntries, WorkloadEntries, pods), is bound to it.
// Wildcards are compared as written: neither file has any.
func TestRBAC(t *testing.T) {
	m := render(t, valuesFile)
	roles := all[rbacv1.ClusterRole](t, m, "ClusterRole")
	shipped := read(t, "deploy/rbac.yaml")
	shippedRoles := all[rbacv1.ClusterRole](t, shipped, "ClusterRole")
	if len(roles) == 0 || len(shippedRoles) == 0 {
		t.Fatalf("%d ClusterRoles in the chart, %d in deploy/rbac.yaml: want some of each", len(roles), len(shippedRoles))
	}
	roles = append(roles, shippedRoles...)
	for key, doc := range shipped {
		if _, ok := m[key]; ok {
			t.Fatalf("deploy/rbac.yaml's %s has the name of one of the chart's", key)
		}
		m[key] = doc
	}

	d, _ := coredns(t, m)
	sa := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: d.Spec.Template.Spec.ServiceAccountName, Namespace: d.Namespace}
	if sa.Namespace != namespace || sa.Name != "coredns" {
		t.Errorf("the Deployment runs as %s/%s, not kube-system/coredns", sa.Namespace, sa.Name)
	}
	if got := object[corev1.ServiceAccount](t, m, "ServiceAccount", sa.Name); got.Namespace != sa.Namespace {
		t.Errorf("the chart creates ServiceAccount %q in %q, the Deployment is in %q", sa.Name, got.Namespace, sa.Namespace)
	}

	granted := map[grant]bool{}
	for _, b := range all[rbacv1.ClusterRoleBinding](t, m, "ClusterRoleBinding") {
		if b.RoleRef.Kind == "ClusterRole" && slices.Contains(b.Subjects, sa) {
			for _, g := range grants(object[rbacv1.ClusterRole](t, m, "ClusterRole", b.RoleRef.Name).Rules) {
				granted[g] = true
			}
		}
	}
	for _, r := range roles {
		for _, g := range grants(r.Rules) {
			if !granted[g] {
				t.Errorf("%s/%s has no %s on %q of group %q (ClusterRole %q)", sa.Namespace, sa.Name, g.verb, g.resource, g.group, r.Name)
			}
		}
	}
}

// quantity writes q, or "none" where it is absent.
func quantity(q resource.Quantity, present bool) string {
	if !present {
		return "none"
	}
	return q.String()
}

// TestResources: the chart's CoreDNS gets deploy/global's requests and limits,
// whose memory limit docs/deploying.md sizes (about 75,000 ServiceEntries in
// 256 MiB), and no CPU limit from the chart's defaults.
func TestResources(t *testing.T) {
	_, c := coredns(t, render(t, valuesFile))
	global := object[appsv1.Deployment](t, read(t, "deploy/global/serviceentry-dns.yaml"), "Deployment", "serviceentry-dns")
	want := container(t, global, "coredns").Resources
	for _, l := range []struct {
		name      string
		got, want corev1.ResourceList
	}{
		{"requests", c.Resources.Requests, want.Requests},
		{"limits", c.Resources.Limits, want.Limits},
	} {
		for res := range mergedKeys(l.got, l.want) {
			got, ok := l.got[res]
			w, wok := l.want[res]
			if ok != wok || got.Cmp(w) != 0 {
				t.Errorf("%s %s: %s, deploy/global's %s", l.name, res, quantity(got, ok), quantity(w, wok))
			}
		}
	}
}
