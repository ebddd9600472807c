package servers

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"text/template"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	dnsaddon "k8s.io/kubernetes/cmd/kubeadm/app/phases/addons/dns"
	kubeadmimage "k8s.io/kubernetes/cmd/kubeadm/app/util/image"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/patches"
	"sigs.k8s.io/yaml"
)

// kubeadmCorefile is the Corefile the pinned kubeadm writes for a cluster
// whose domain is domain: its template, the constant CoreDNSConfigMap
// of cmd/kubeadm/app/phases/addons/dns, filled as kubeadm fills it, with
// text/template (kubeadmutil.ParseTemplate).
func kubeadmCorefile(t *testing.T, domain string) string {
	t.Helper()
	tmpl, err := template.New("coredns").Parse(dnsaddon.CoreDNSConfigMap)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, struct{ DNSDomain, UpstreamNameserver, StubDomain string }{DNSDomain: domain}); err != nil {
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
	want := kubeadmCorefile(t, "cluster.local")
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

// corefileMerge builds cmd/corefile-merge of the plugin's module (run, not
// imported, so that this module's go.sum, which keys the cached servers,
// stays as it is) and returns a function that runs it on a Corefile.
func corefileMerge(t *testing.T) func(in string) (out, stderr string, err error) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "corefile-merge")
	build := exec.Command("go", "build", "-o", bin, "./cmd/corefile-merge")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building cmd/corefile-merge: %v\n%s", err, out)
	}
	return func(in string) (string, string, error) {
		var out, stderr bytes.Buffer
		cmd := exec.Command(bin)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(in), &out, &stderr
		err := cmd.Run()
		return out.String(), stderr.String(), err
	}
}

// TestMergeKubeadmCorefile runs cmd/corefile-merge, as docs/deploying.md
// does, on the Corefile the pinned kubeadm writes: for cluster.local it gives
// the shipped Corefile exactly; for another cluster domain it adds a stanza
// naming that domain and keeps every other line; a second run changes
// nothing.
func TestMergeKubeadmCorefile(t *testing.T) {
	merge := corefileMerge(t)
	manifest, err := os.ReadFile("../../deploy/in-cluster/coredns-configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	shipped := corefileOf(t, manifest)
	for _, domain := range []string{"cluster.local", "k8s.example"} {
		t.Run(domain, func(t *testing.T) {
			stock := kubeadmCorefile(t, domain)
			got, stderr, err := merge(stock)
			if err != nil {
				t.Fatalf("%v: %s", err, stderr)
			}
			if domain == "cluster.local" && got != shipped {
				t.Errorf("merged:\n%s\nthe shipped Corefile:\n%s", got, shipped)
			}
			if back := withoutStanza(t, "merged", got); back != stock {
				t.Errorf("merged without the stanza:\n%s\nkubeadm writes:\n%s", back, stock)
			}
			block := stanza.FindString(got)
			for _, option := range []string{"fallthrough", "searchpath"} {
				if !regexp.MustCompile(`(?m)^\s+` + option + `\b`).MatchString(block) {
					t.Errorf("the stanza has no %s:\n%s", option, block)
				}
			}
			if domain != "cluster.local" {
				for _, line := range []string{"searchpath " + domain, "cluster_domain " + domain} {
					if !strings.Contains(block, line+"\n") {
						t.Errorf("the stanza for %s has no %q:\n%s", domain, line, block)
					}
				}
			}
			again, stderr, err := merge(got)
			if err != nil || again != got {
				t.Errorf("a second run changed the Corefile (%v, %s):\n%s", err, stderr, again)
			}
		})
	}
}

// TestKubeadmPatch: deploy/in-cluster/kubeadm-patches holds a patch that
// kubeadm's --patches takes for its CoreDNS Deployment, and applied as
// kubeadm applies it (a strategic merge patch over the Deployment the pinned
// kubeadm renders) it changes the image of kubeadm's coredns container and
// nothing else. The image has no tag kubeadm can read, so kubeadm takes no
// CoreDNS version from it and migrates nothing, and it is the image of
// coredns-deployment-patch.yaml, the same patch kubectl applies at install.
// kubeadmDeployment is the CoreDNS Deployment the pinned kubeadm writes, as
// JSON: its template (the constant CoreDNSDeployment), filled as kubeadm
// fills it.
func kubeadmDeployment(t *testing.T) []byte {
	t.Helper()
	tmpl, err := template.New("deployment").Parse(dnsaddon.CoreDNSDeployment)
	if err != nil {
		t.Fatal(err)
	}
	replicas := int32(2)
	var rendered bytes.Buffer
	if err := tmpl.Execute(&rendered, struct {
		DeploymentName, Image, ControlPlaneTaintKey string
		Replicas                                    *int32
	}{"coredns", "registry.k8s.io/coredns/coredns:v1.13.1", "node-role.kubernetes.io/control-plane", &replicas}); err != nil {
		t.Fatal(err)
	}
	deployment, err := yaml.YAMLToJSON(rendered.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return deployment
}

// kubeadmProbes is what test/integration's TestKubeadmProbes runs against the
// binary: the probes of kubeadm's coredns container, the ports they name,
// and the pod's grace period for its shutdown (nil: Kubernetes' default).
type kubeadmProbes struct {
	Ports                         []corev1.ContainerPort `json:"ports"`
	LivenessProbe                 *corev1.Probe          `json:"livenessProbe"`
	ReadinessProbe                *corev1.Probe          `json:"readinessProbe"`
	TerminationGracePeriodSeconds *int64                 `json:"terminationGracePeriodSeconds"`
}

// TestKubeadmProbesFixture: test/integration/testdata/kubeadm-probes.yaml
// holds the probes and grace period of the pinned kubeadm's Deployment, so
// that the integration test runs kubeadm's own probes against the binary
// without importing kubeadm.
func TestKubeadmProbesFixture(t *testing.T) {
	var d appsv1.Deployment
	if err := json.Unmarshal(kubeadmDeployment(t), &d); err != nil {
		t.Fatal(err)
	}
	c := d.Spec.Template.Spec.Containers[0]
	want := kubeadmProbes{Ports: c.Ports, LivenessProbe: c.LivenessProbe, ReadinessProbe: c.ReadinessProbe,
		TerminationGracePeriodSeconds: d.Spec.Template.Spec.TerminationGracePeriodSeconds}
	const fixture = "../integration/testdata/kubeadm-probes.yaml"
	raw, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	var got kubeadmProbes
	if err := yaml.UnmarshalStrict(raw, &got); err != nil {
		t.Fatalf("%s: %v", fixture, err)
	}
	if !reflect.DeepEqual(got, want) {
		wantYAML, _ := yaml.Marshal(want)
		t.Errorf("%s differs from the pinned kubeadm's Deployment; it should read:\n%s", fixture, wantYAML)
	}
}

func TestKubeadmPatch(t *testing.T) {
	const dir = "../../deploy/in-cluster/kubeadm-patches"
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	target := patches.CoreDNSDeployment
	if len(files) != 1 || files[0].Name() != target+"+strategic.yaml" {
		t.Fatalf("%s: want one file, %s+strategic.yaml (kubeadm's target and patch type), got %v", dir, target, files)
	}
	patchYAML, err := os.ReadFile(filepath.Join(dir, files[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	patch, err := yaml.YAMLToJSON(patchYAML)
	if err != nil {
		t.Fatal(err)
	}

	original := kubeadmDeployment(t)
	patched, err := strategicpatch.StrategicMergePatch(original, patch, appsv1.Deployment{})
	if err != nil {
		t.Fatalf("kubeadm would refuse the patch: %v", err)
	}
	var before, after appsv1.Deployment
	if err := json.Unmarshal(original, &before); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(patched, &after); err != nil {
		t.Fatal(err)
	}
	containers := after.Spec.Template.Spec.Containers
	if len(containers) != 1 || containers[0].Name != "coredns" {
		t.Fatalf("after the patch, containers %+v: want kubeadm's one coredns container", containers)
	}
	image := containers[0].Image
	if image == before.Spec.Template.Spec.Containers[0].Image || !strings.HasPrefix(image, "registry.example.com/coredns-serviceentry") {
		t.Errorf("the patch left the image %q", image)
	}
	containers[0].Image = before.Spec.Template.Spec.Containers[0].Image
	if !reflect.DeepEqual(before, after) {
		t.Errorf("the patch changes more than the image:\nbefore %+v\nafter  %+v", before.Spec.Template.Spec, after.Spec.Template.Spec)
	}

	// kubeadm's tag reader finds a tag in kubeadm's own image, and none in ours.
	if got := kubeadmimage.TagFromImage(before.Spec.Template.Spec.Containers[0].Image); got != "v1.13.1" {
		t.Fatalf("kubeadm's tag reader gives %q for its own image: this test reads it wrong", got)
	}
	if got := kubeadmimage.TagFromImage(image); got != "" {
		t.Errorf("kubeadm reads the version %q from the patch's image %q: name it by digest only", got, image)
	}

	kubectlYAML, err := os.ReadFile("../../deploy/in-cluster/coredns-deployment-patch.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kubectlPatch, err := yaml.YAMLToJSON(kubectlYAML)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kubectlPatch, patch) {
		t.Errorf("coredns-deployment-patch.yaml (%s) and the kubeadm patch (%s) differ", kubectlPatch, patch)
	}
}
