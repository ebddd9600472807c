package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	clientv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

func serviceEntry(ns, name string, hosts []string, addrs ...string) *clientv1.ServiceEntry {
	return &clientv1.ServiceEntry{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networking.ServiceEntry{Hosts: hosts, Addresses: addrs,
			Ports:      []*networking.ServicePort{{Number: 80, Name: "http", Protocol: "HTTP"}},
			Resolution: networking.ServiceEntry_DNS},
	}
}

func createNamespace(t testing.TB, c *cluster, names ...string) {
	t.Helper()
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range names {
		if _, err := kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestChanges: creates, updates and deletes through the API are answered over
// UDP and TCP; istiod's status.addresses follow Istio's rules; the
// apply -> answer latency of 200 changes is reported.
func TestChanges(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	createNamespace(t, c, "apps")
	ctx := context.Background()
	ses := c.istio(t).NetworkingV1().ServiceEntries("apps")
	if _, err := ses.Create(ctx, serviceEntry("apps", "db", []string{"db.mesh.internal"}, "192.0.2.1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	dnsServer := startCoreDNS(t, "mesh.internal", "kubeconfig "+c.kubeconfig(t, adminToken), "startup_timeout 10s")
	dnsServer.waitListening(t, 20*time.Second)
	dnsServer.waitAnswer(t, 5*time.Second, "db.mesh.internal", dns.TypeA, "NOERROR 192.0.2.1")
	dnsServer.waitAnswer(t, time.Second, "db.mesh.internal", dns.TypeAAAA, "NOERROR")
	dnsServer.waitAnswer(t, time.Second, "nope.mesh.internal", dns.TypeA, "NXDOMAIN")
	if !dnsServer.isReady() {
		t.Error("not ready after sync")
	}

	// Update addresses, hosts and labels.
	se, err := ses.Get(ctx, "db", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	se.Spec.Addresses = []string{"192.0.2.2", "2001:db8::2"}
	se.Spec.Hosts = []string{"db2.mesh.internal"}
	se.Labels = map[string]string{"tier": "db"}
	if _, err := ses.Update(ctx, se, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	dnsServer.waitAnswer(t, 5*time.Second, "db2.mesh.internal", dns.TypeAAAA, "NOERROR 2001:db8::2")
	dnsServer.waitAnswer(t, time.Second, "db.mesh.internal", dns.TypeA, "NXDOMAIN")

	// istiod's allocation, written through the status subresource.
	auto, err := ses.Create(ctx, serviceEntry("apps", "auto", []string{"auto.mesh.internal"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	auto.Status.Addresses = []*networking.ServiceEntryAddress{{Host: "auto.mesh.internal", Value: "240.240.0.1"}, {Host: "auto.mesh.internal", Value: "2001:2::1"}}
	if auto, err = ses.UpdateStatus(ctx, auto, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	dnsServer.waitAnswer(t, 5*time.Second, "auto.mesh.internal", dns.TypeA, "NOERROR 240.240.0.1")
	auto.Labels = map[string]string{"networking.istio.io/enable-autoallocate-ip": "FALSE"}
	if _, err = ses.Update(ctx, auto, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	dnsServer.waitAnswer(t, 5*time.Second, "auto.mesh.internal", dns.TypeA, "NXDOMAIN")

	// Delete.
	if err := ses.Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	dnsServer.waitAnswer(t, 5*time.Second, "db2.mesh.internal", dns.TypeA, "NXDOMAIN")

	// Latency from the API call returning to the new answer, over 200 changes.
	var latencies []time.Duration
	for i := range 200 {
		host := fmt.Sprintf("lat-%d.mesh.internal", i)
		addr := fmt.Sprintf("198.51.100.%d", i%250+1)
		start := time.Now()
		if _, err := ses.Create(ctx, serviceEntry("apps", fmt.Sprintf("lat-%d", i), []string{host}, addr), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for dnsServer.answer(t, host, dns.TypeA, "udp") != "NOERROR "+addr {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("%s not answered within 10s", host)
			}
			time.Sleep(time.Millisecond)
		}
		latencies = append(latencies, time.Since(start))
	}
	slices.Sort(latencies)
	t.Logf("apply -> answer latency over %d creates: p50 %v, p99 %v, max %v",
		len(latencies), latencies[len(latencies)/2], latencies[len(latencies)*99/100], latencies[len(latencies)-1])
}

// TestScoping: namespaces and labels limit what is read.
func TestScoping(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	createNamespace(t, c, "a", "b", "c")
	ctx := context.Background()
	client := c.istio(t)
	for _, ns := range []string{"a", "b", "c"} {
		for _, team := range []string{"red", "blue"} {
			se := serviceEntry(ns, team, []string{team + "." + ns + ".scope.internal"}, "192.0.2.7")
			se.Labels = map[string]string{"team": team}
			if _, err := client.NetworkingV1().ServiceEntries(ns).Create(ctx, se, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	dnsServer := startCoreDNS(t, "scope.internal", "kubeconfig "+c.kubeconfig(t, adminToken), "namespaces a b", "labels team=red")
	dnsServer.waitListening(t, 20*time.Second)
	for name, want := range map[string]string{
		"red.a.scope.internal":  "NOERROR 192.0.2.7",
		"red.b.scope.internal":  "NOERROR 192.0.2.7",
		"blue.a.scope.internal": "NXDOMAIN",
		"red.c.scope.internal":  "NXDOMAIN",
	} {
		dnsServer.waitAnswer(t, 5*time.Second, name, dns.TypeA, want)
	}
}

// TestStartBeforeAPIServer: with the API server down, the DNS port opens
// within the plugin's startup_timeout, answers SERVFAIL and reports not
// ready; once the API server comes up the answers are right.
func TestStartBeforeAPIServer(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	if _, err := c.istio(t).NetworkingV1().ServiceEntries("default").Create(context.Background(),
		serviceEntry("default", "early", []string{"early.start.internal"}, "192.0.2.9"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.stopAPIServer()

	start := time.Now()
	dnsServer := startCoreDNS(t, "start.internal", "kubeconfig "+c.kubeconfig(t, adminToken), "startup_timeout 1s")
	dnsServer.waitListening(t, 15*time.Second)
	t.Logf("DNS port open %v after start with the API server down (startup_timeout 1s)", time.Since(start))
	if got := dnsServer.answer(t, "early.start.internal", dns.TypeA, "udp"); got != "SERVFAIL" {
		t.Errorf("before sync: got %q, want SERVFAIL", got)
	}
	if dnsServer.isReady() {
		t.Error("ready before sync")
	}

	c.startAPIServer(t)
	dnsServer.waitAnswer(t, 60*time.Second, "early.start.internal", dns.TypeA, "NOERROR 192.0.2.9")
	waitFor(t, 5*time.Second, "ready", dnsServer.isReady)
}

// TestAPIServerOutage: during a 30 s outage every known host keeps its answer;
// changes made after the restart are picked up.
func TestAPIServerOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("takes more than 30 s")
	}
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	ctx := context.Background()
	ses := c.istio(t).NetworkingV1().ServiceEntries("default")
	if _, err := ses.Create(ctx, serviceEntry("default", "kept", []string{"kept.outage.internal"}, "192.0.2.20"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dnsServer := startCoreDNS(t, "outage.internal", "kubeconfig "+c.kubeconfig(t, adminToken))
	dnsServer.waitListening(t, 20*time.Second)
	dnsServer.waitAnswer(t, 5*time.Second, "kept.outage.internal", dns.TypeA, "NOERROR 192.0.2.20")

	c.stopAPIServer()
	outage := time.Now()
	for time.Since(outage) < 30*time.Second {
		if got := dnsServer.answer(t, "kept.outage.internal", dns.TypeA, "udp"); got != "NOERROR 192.0.2.20" {
			t.Fatalf("%v into the outage: got %q", time.Since(outage).Round(time.Second), got)
		}
		time.Sleep(500 * time.Millisecond)
	}
	c.startAPIServer(t)
	ses = c.istio(t).NetworkingV1().ServiceEntries("default")
	if _, err := ses.Create(ctx, serviceEntry("default", "after", []string{"after.outage.internal"}, "192.0.2.21"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// client-go's reflector retries a failed watch with a backoff capped at
	// 30 s and a jitter of up to as much again: after a 30 s outage the
	// first retry may come a minute after the restart.
	dnsServer.waitAnswer(t, 120*time.Second, "after.outage.internal", dns.TypeA, "NOERROR 192.0.2.21")
	dnsServer.waitAnswer(t, time.Second, "kept.outage.internal", dns.TypeA, "NOERROR 192.0.2.20")
}

// TestRBAC: with --authorization-mode RBAC, deploy/rbac.yaml is enough for
// CoreDNS's own ServiceAccount (a real token from the TokenRequest API); a
// user without the binding gets a clear error and stays not ready.
func TestRBAC(t *testing.T) {
	c := startCluster(t, "RBAC")
	c.installCRDs(t, istioCRDs(t))
	token := corednsServiceAccount(t, c, "rbac.yaml")
	ctx := context.Background()
	if _, err := c.istio(t).NetworkingV1().ServiceEntries("default").Create(ctx,
		serviceEntry("default", "rbac", []string{"ok.rbac.internal"}, "192.0.2.30"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	allowed := startCoreDNS(t, "rbac.internal", "kubeconfig "+c.kubeconfig(t, token), "startup_timeout 10s")
	allowed.waitListening(t, 20*time.Second)
	allowed.waitAnswer(t, 10*time.Second, "ok.rbac.internal", dns.TypeA, "NOERROR 192.0.2.30")
	allowed.waitLog(t, 5*time.Second, "reading WorkloadEntries through")
	if strings.Contains(allowed.output(), "is refused") || strings.Contains(allowed.output(), "is forbidden") {
		t.Errorf("deploy/rbac.yaml does not allow everything the plugin reads:\n%s", allowed.output())
	}

	denied := startCoreDNS(t, "rbac.internal", "kubeconfig "+c.kubeconfig(t, nobodyToken), "startup_timeout 1s")
	denied.waitListening(t, 20*time.Second)
	denied.waitLog(t, 15*time.Second, "reading ServiceEntries is forbidden")
	if denied.isReady() {
		t.Error("ready without permission")
	}
	if got := denied.answer(t, "ok.rbac.internal", dns.TypeA, "udp"); got != "SERVFAIL" {
		t.Errorf("without permission: got %q, want SERVFAIL", got)
	}
}

// corednsServiceAccount applies deploy/<rbacFile>, creates CoreDNS's
// ServiceAccount kube-system/coredns and returns a real token of it from the
// TokenRequest API.
func corednsServiceAccount(t *testing.T, c *cluster, rbacFile string) string {
	t.Helper()
	rbac, err := os.ReadFile("../../deploy/" + rbacFile)
	if err != nil {
		t.Fatal(err)
	}
	c.apply(t, rbac)
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := kube.CoreV1().ServiceAccounts("kube-system").Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "coredns"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, err := kube.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "coredns", &authv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Status.Token
}

// TestNoCRDThenInstall: without Istio's CRD the plugin says so once, is
// ready, and is authoritative for an empty table (NXDOMAIN in its zone);
// installing the CRD later serves the entries without a restart.
func TestNoCRDThenInstall(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	dnsServer := startCoreDNS(t, "crd.internal", "kubeconfig "+c.kubeconfig(t, adminToken), "startup_timeout 1s")
	dnsServer.waitListening(t, 20*time.Second)
	dnsServer.waitLog(t, 10*time.Second, "Istio's CRD is not installed")
	waitFor(t, 5*time.Second, "ready without a CRD", dnsServer.isReady)
	dnsServer.waitAnswer(t, time.Second, "late.crd.internal", dns.TypeA, "NXDOMAIN")

	c.installCRDs(t, istioCRDs(t))
	if _, err := c.istio(t).NetworkingV1().ServiceEntries("default").Create(context.Background(),
		serviceEntry("default", "late", []string{"late.crd.internal"}, "192.0.2.40"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dnsServer.waitAnswer(t, 60*time.Second, "late.crd.internal", dns.TypeA, "NOERROR 192.0.2.40")
	if n := strings.Count(dnsServer.output(), "Istio's CRD is not installed"); n != 1 {
		t.Errorf("the missing CRD is logged %d times, want once", n)
	}
}

// TestOlderIstioVersion: a cluster whose CRD serves only v1beta1 (Istio before
// 1.22) is read through v1beta1.
func TestOlderIstioVersion(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	c.apply(t, serviceEntryCRDOnly(t, "v1beta1"))
	waitFor(t, 30*time.Second, "v1beta1 served", func() bool {
		_, err := c.istio(t).NetworkingV1beta1().ServiceEntries("default").List(context.Background(), metav1.ListOptions{})
		return err == nil
	})
	if _, err := c.istio(t).NetworkingV1().ServiceEntries("default").List(context.Background(), metav1.ListOptions{}); err == nil {
		t.Fatal("the trimmed CRD still serves v1")
	}
	se := &clientv1beta1.ServiceEntry{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "old"},
		Spec:       networking.ServiceEntry{Hosts: []string{"old.v1beta1.internal"}, Addresses: []string{"192.0.2.50"}, Resolution: networking.ServiceEntry_STATIC},
	}
	if _, err := c.istio(t).NetworkingV1beta1().ServiceEntries("default").Create(context.Background(), se, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dnsServer := startCoreDNS(t, "v1beta1.internal", "kubeconfig "+c.kubeconfig(t, adminToken))
	dnsServer.waitListening(t, 20*time.Second)
	dnsServer.waitAnswer(t, 10*time.Second, "old.v1beta1.internal", dns.TypeA, "NOERROR 192.0.2.50")
	if !strings.Contains(dnsServer.output(), "networking.istio.io/v1beta1") {
		t.Error("log does not say which version is read")
	}
}

// serviceEntryCRDOnly returns Istio's ServiceEntry CRD trimmed to one served
// (and stored) version, as an older Istio installed it.
func serviceEntryCRDOnly(t testing.TB, version string) []byte {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(istioCRDs(t)), 4096)
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err != nil {
			t.Fatalf("no ServiceEntry CRD found: %v", err)
		}
		if obj.GetName() != "serviceentries.networking.istio.io" {
			continue
		}
		versions, _, _ := unstructured.NestedSlice(obj.Object, "spec", "versions")
		var kept []any
		for _, v := range versions {
			m := v.(map[string]any)
			if m["name"] == version {
				m["served"], m["storage"] = true, true
				kept = append(kept, m)
			}
		}
		if err := unstructured.SetNestedSlice(obj.Object, kept, "spec", "versions"); err != nil {
			t.Fatal(err)
		}
		out, err := yaml.Marshal(obj.Object)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
}
