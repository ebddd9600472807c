package servers

import (
	"encoding/json"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes/fake"
	kubeadmapi "k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm"
	kubeadmconstants "k8s.io/kubernetes/cmd/kubeadm/app/constants"
	dnsaddon "k8s.io/kubernetes/cmd/kubeadm/app/phases/addons/dns"
	"k8s.io/kubernetes/cmd/kubeadm/app/phases/upgrade"
	"sigs.k8s.io/yaml"
)

// kubeadmCluster is a fake clientset holding kubeadm's CoreDNS Deployment
// with image and the coredns ConfigMap with corefile: what kubeadm's upgrade
// reads of a cluster's CoreDNS.
func kubeadmCluster(t *testing.T, image, corefile string) *fake.Clientset {
	t.Helper()
	var d appsv1.Deployment
	if err := json.Unmarshal(kubeadmDeployment(t), &d); err != nil {
		t.Fatal(err)
	}
	d.Namespace = "kube-system"
	d.Spec.Template.Spec.Containers[0].Image = image
	cm := &corev1.ConfigMap{Data: map[string]string{"Corefile": corefile}}
	cm.Name, cm.Namespace = kubeadmconstants.CoreDNSConfigMap, "kube-system"
	return fake.NewClientset(&d, cm)
}

// installedImage is the image of the shipped kubeadm patch applied to
// kubeadm's Deployment, as the runbook's image step leaves it: by digest.
func installedImage(t *testing.T) string {
	t.Helper()
	patchYAML, err := os.ReadFile("../../deploy/in-cluster/kubeadm-patches/" + "corednsdeployment+strategic.yaml")
	if err != nil {
		t.Fatal(err)
	}
	patch, err := yaml.YAMLToJSON(patchYAML)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := strategicpatch.StrategicMergePatch(kubeadmDeployment(t), patch, appsv1.Deployment{})
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := json.Unmarshal(patched, &d); err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template.Spec.Containers[0].Image
}

// shippedCorefile is the Corefile of deploy/in-cluster: kubeadm's with the
// stanza.
func shippedCorefile(t *testing.T) string {
	t.Helper()
	manifest, err := os.ReadFile("../../deploy/in-cluster/coredns-configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return corefileOf(t, manifest)
}

// TestKubeadmUpgradePreflight runs the pinned kubeadm's own CoreDNS checks
// of "kubeadm upgrade apply" (RunCoreDNSMigrationCheck,
// phases/upgrade/preflight.go) on a cluster as the runbook leaves it, which
// docs/deploying.md's upgrade command answers with
// --ignore-preflight-errors=CoreDNSUnsupportedPlugins,CoreDNSMigration:
// kubeadm reads no CoreDNS version from an image named by digest, so both
// checks fail, and pass once ignored. On kubeadm's own CoreDNS they pass,
// so the failure is the plugin's install, not this test's cluster.
func TestKubeadmUpgradePreflight(t *testing.T) {
	stockImage := "registry.k8s.io/coredns/coredns:" + kubeadmconstants.CoreDNSVersion
	if err := upgrade.RunCoreDNSMigrationCheck(kubeadmCluster(t, stockImage, kubeadmCorefile(t, "cluster.local")), sets.New[string]()); err != nil {
		t.Fatalf("kubeadm's checks on its own CoreDNS: %v", err)
	}

	installed := kubeadmCluster(t, installedImage(t), shippedCorefile(t))
	var err error
	report := stderrOf(t, func() { err = upgrade.RunCoreDNSMigrationCheck(installed, sets.New[string]()) })
	if err == nil {
		t.Fatal("kubeadm's checks pass on the installed plugin: docs/deploying.md's --ignore-preflight-errors is not needed")
	}
	failed := sets.New[string]()
	for _, m := range regexp.MustCompile(`\[ERROR (\w+)\]`).FindAllStringSubmatch(report, -1) {
		failed.Insert(m[1])
	}
	documented := documentedIgnores(t)
	if !failed.Equal(documented) {
		t.Errorf("kubeadm's failed checks %v, docs/deploying.md ignores %v:\n%s", sets.List(failed), sets.List(documented), report)
	}
	ignore := sets.New[string]()
	for name := range documented {
		ignore.Insert(strings.ToLower(name)) // as kubeadm's flag parsing stores them
	}
	if err := upgrade.RunCoreDNSMigrationCheck(installed, ignore); err != nil {
		t.Errorf("with the documented checks ignored: %v", err)
	}
}

// stderrOf runs f and returns what it wrote to the process's standard
// error, where kubeadm's preflight checks report each check.
func stderrOf(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stderr
	os.Stderr = w
	read := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		read <- b
	}()
	f()
	os.Stderr = saved
	w.Close()
	return string(<-read)
}

// documentedIgnores is the set of checks that docs/deploying.md's
// "kubeadm upgrade apply" command ignores.
func documentedIgnores(t *testing.T) sets.Set[string] {
	t.Helper()
	doc, err := os.ReadFile("../../docs/deploying.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)kubeadm upgrade apply v[^\n]*\\\n\s*--ignore-preflight-errors=(\S+)`).FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/deploying.md has no kubeadm upgrade apply command with --ignore-preflight-errors")
	}
	return sets.New(strings.Split(string(m[1]), ",")...)
}

// TestKubeadmAddonPhaseTaggedImage: the add-on phase that "kubeadm upgrade"
// runs (EnsureDNSAddon) reads the running CoreDNS's version from its image's
// tag. Our image with a tag that is no CoreDNS release fails the phase, the
// failure docs/deploying.md gives for naming the image by tag; by digest
// (the shipped patch) it keeps the Corefile.
func TestKubeadmAddonPhaseTaggedImage(t *testing.T) {
	cfg := &kubeadmapi.ClusterConfiguration{ImageRepository: "registry.k8s.io",
		Networking: kubeadmapi.Networking{ServiceSubnet: "10.96.0.0/12", DNSDomain: "cluster.local"}}
	corefile := shippedCorefile(t)
	for _, tc := range []struct {
		name, image string
		fails       bool
	}{
		{"by tag", "registry.example.com/coredns-serviceentry:v0.4.0", true},
		{"by digest", installedImage(t), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := kubeadmCluster(t, tc.image, corefile)
			err := dnsaddon.EnsureDNSAddon(cfg, client, "", io.Discard, false)
			if failed := err != nil; failed != tc.fails {
				t.Fatalf("kubeadm's add-on phase on %s: error %v, want one: %v", tc.image, err, tc.fails)
			}
			if tc.fails && !strings.Contains(err.Error(), "unable to get list of changes to the configuration") {
				t.Errorf("kubeadm's add-on phase on %s failed otherwise than docs/deploying.md says: %v", tc.image, err)
			}
			cm, err := client.CoreV1().ConfigMaps("kube-system").Get(t.Context(), kubeadmconstants.CoreDNSConfigMap, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if cm.Data["Corefile"] != corefile {
				t.Errorf("kubeadm changed the Corefile:\n%s", cm.Data["Corefile"])
			}
		})
	}
}
