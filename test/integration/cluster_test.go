package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Tokens of the users the API server knows (--token-auth-file).
const (
	adminToken   = "admin-token"   // system:masters
	corednsToken = "coredns-token" // bound by deploy/rbac.yaml
	nobodyToken  = "nobody-token"  // no binding at all
)

// serversDir is where test/servers/build.sh put kube-apiserver and etcd.
func serversDir(t testing.TB) string {
	dir := os.Getenv("SERVICEENTRY_SERVERS")
	if dir == "" {
		if os.Getenv("SERVICEENTRY_SKIP_INTEGRATION") == "1" {
			t.Skip("SERVICEENTRY_SKIP_INTEGRATION=1")
		}
		t.Fatal("SERVICEENTRY_SERVERS is not set: run ./scripts/test (it builds kube-apiserver and etcd), " +
			"or set SERVICEENTRY_SERVERS=$(test/servers/build.sh); set SERVICEENTRY_SKIP_INTEGRATION=1 to skip on purpose")
	}
	return dir
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// process is a server started by a test, stopped by its PID.
type process struct {
	cmd *exec.Cmd
	log *bytes.Buffer
}

func startProcess(t testing.TB, name string, args ...string) *process {
	t.Helper()
	return startProcessEnv(t, nil, name, args...)
}

// startProcessEnv is startProcess with variables added to the test's
// environment.
func startProcessEnv(t testing.TB, env []string, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...), log: &bytes.Buffer{}}
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	lw := &lockedWriter{w: p.log}
	p.cmd.Stdout, p.cmd.Stderr = lw, lw
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(p.stop)
	return p
}

func (p *process) stop() {
	if p.cmd.ProcessState != nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

func (p *process) output() string {
	if lw, ok := p.cmd.Stdout.(*lockedWriter); ok {
		return lw.String()
	}
	return ""
}

// cluster is one etcd and one kube-apiserver on loopback.
type cluster struct {
	dir       string
	etcdURL   string
	port      int
	authz     string
	apiserver *process
	caFile    string
}

// startCluster starts etcd and kube-apiserver with authorization mode authz
// ("RBAC" or "AlwaysAllow") and waits until the API server is ready.
func startCluster(t testing.TB, authz string) *cluster {
	t.Helper()
	bin := serversDir(t)
	dir := t.TempDir()
	c := &cluster{dir: dir, authz: authz, port: freePort(t)}

	client, peer := freePort(t), freePort(t)
	c.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", client)
	startProcess(t, filepath.Join(bin, "etcd"),
		"--data-dir", filepath.Join(dir, "etcd"), "--unsafe-no-fsync",
		"--listen-client-urls", c.etcdURL, "--advertise-client-urls", c.etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peer),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peer),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", peer))
	waitFor(t, 20*time.Second, "etcd healthy", func() bool {
		resp, err := http.Get(c.etcdURL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	c.writeCredentials(t)
	c.startAPIServer(t)
	return c
}

// writeCredentials makes the serving certificate (our own CA, so a kubeconfig
// can exist before the server does), the service-account key and the tokens.
func (c *cluster) writeCredentials(t testing.TB) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "serviceentry-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		// 10.0.0.1 is the kubernetes Service's address, where TestNodeRollout's
		// pods reach the server.
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.ParseIP(kubernetesServiceIP)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	saKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	saPub, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)

	c.caFile = filepath.Join(c.dir, "ca.crt")
	files := map[string][]byte{
		"ca.crt":     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		"server.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"server.key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		"sa.key":     pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		"sa.pub":     pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
		"tokens.csv": []byte(adminToken + ",admin,admin,system:masters\n" + corednsToken + ",coredns,coredns\n" + nobodyToken + ",nobody,nobody\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(c.dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func (c *cluster) startAPIServer(t testing.TB) {
	t.Helper()
	f := func(name string) string { return filepath.Join(c.dir, name) }
	c.apiserver = startProcess(t, filepath.Join(serversDir(t), "kube-apiserver"),
		"--etcd-servers", c.etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", fmt.Sprint(c.port),
		"--tls-cert-file", f("server.crt"), "--tls-private-key-file", f("server.key"),
		"--cert-dir", f("certs"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", f("sa.pub"), "--service-account-signing-key-file", f("sa.key"),
		"--token-auth-file", f("tokens.csv"),
		"--authorization-mode", c.authz,
		"--service-cluster-ip-range", "10.0.0.0/24", "--endpoint-reconciler-type", "none",
		// TestNodeRollout's node has a name no resolver knows (logs, exec).
		"--kubelet-preferred-address-types", "InternalIP")
	waitFor(t, 60*time.Second, "kube-apiserver ready", c.ready)
}

// stopAPIServer stops the API server but keeps etcd and its data.
func (c *cluster) stopAPIServer() { c.apiserver.stop() }

func (c *cluster) ready() bool {
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/readyz", c.port), nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

// kubeconfig writes a kubeconfig for the user with the given token.
func (c *cluster) kubeconfig(t testing.TB, token string) string {
	t.Helper()
	sum := sha256.Sum256([]byte(token)) // tokens can be longer than a file name may be
	path := filepath.Join(c.dir, fmt.Sprintf("kubeconfig-%x", sum[:6]))
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://127.0.0.1:%d", certificate-authority: %q}
users:
- name: user
  user: {token: %q}
contexts:
- name: test
  context: {cluster: test, user: user}
current-context: test
`, c.port, c.caFile, token)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (c *cluster) restConfig(t testing.TB) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig(t, adminToken))
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 500, 1000
	return cfg
}

func (c *cluster) istio(t testing.TB) versioned.Interface {
	t.Helper()
	client, err := versioned.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// unthrottled are clientsets with no client-side rate limit, for the
// benchmarks: creating their objects is setup, not what they measure.
func (c *cluster) unthrottled(t testing.TB) (versioned.Interface, kubernetes.Interface) {
	t.Helper()
	cfg := c.restConfig(t)
	cfg.QPS = -1
	client, err := versioned.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client, kube
}

// apply creates (or replaces, by server-side apply) every object of a YAML
// stream, with the admin user.
func (c *cluster) apply(t testing.TB, manifest []byte) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return
			}
			t.Fatalf("decoding manifest: %v", err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvr := resourceFor(t, obj.GroupVersionKind())
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if ns := obj.GetNamespace(); ns != "" {
			ri = dyn.Resource(gvr).Namespace(ns)
		}
		data, _ := obj.MarshalJSON()
		force := true
		if _, err := ri.Patch(context.Background(), obj.GetName(), "application/apply-patch+yaml", data,
			metav1.PatchOptions{FieldManager: "serviceentry-test", Force: &force, FieldValidation: "Strict"}); err != nil {
			t.Fatalf("applying %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
}

// resourceFor maps the kinds the tests apply to their resources.
func resourceFor(t testing.TB, gvk schema.GroupVersionKind) schema.GroupVersionResource {
	resources := map[string]string{
		"CustomResourceDefinition": "customresourcedefinitions",
		"ClusterRole":              "clusterroles",
		"ClusterRoleBinding":       "clusterrolebindings",
		"ServiceAccount":           "serviceaccounts",
		"Namespace":                "namespaces",
		"ConfigMap":                "configmaps",
		"Deployment":               "deployments",
		"PodDisruptionBudget":      "poddisruptionbudgets",
		"Service":                  "services",
		"ServiceEntry":             "serviceentries",
	}
	r, ok := resources[gvk.Kind]
	if !ok {
		t.Fatalf("no resource known for kind %s", gvk.Kind)
	}
	return gvk.GroupVersion().WithResource(r)
}

// istioCRDs returns Istio's real CRD file from the istio.io/api module.
func istioCRDs(t testing.TB) []byte {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api").Output()
	if err != nil {
		t.Fatalf("finding istio.io/api: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// installCRDs applies Istio's CRDs and waits until ServiceEntries are served.
func (c *cluster) installCRDs(t testing.TB, crds []byte) {
	t.Helper()
	c.apply(t, crds)
	client := c.istio(t)
	waitFor(t, 30*time.Second, "ServiceEntry CRD served", func() bool {
		_, err := client.NetworkingV1().ServiceEntries("default").List(context.Background(), metav1.ListOptions{Limit: 1})
		return err == nil
	})
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
