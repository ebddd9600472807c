package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// searchList is a pod's in namespace apps, tried in order as glibc does with
// ndots:5 before the name itself.
var searchList = []string{"apps.svc.cluster.local.", "svc.cluster.local.", "cluster.local."}

// TestSearchPathKubernetes runs kube-system's Corefile (searchpath on) with
// the real kubernetes plugin: a ServiceEntry host asked under a pod's search
// list is answered at the first try with a CNAME to the host and its address,
// and an expansion that is a real name keeps Kubernetes' answer: a Service
// (db in namespace external, against the host db.external) and a pod's
// hostname under a headless Service.
func TestSearchPathKubernetes(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	createNamespace(t, c, "apps", "external")
	createEntry(t, c) // api.external.example in namespace bar
	webIP := createWeb(t, c)
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db, err := kube.CoreV1().Services("external").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tcp", Port: 5432}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Services("apps").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "headless"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "tcp", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// No controller runs here: the slice a controller would write for a
	// pod with hostname pod-0 and subdomain headless.
	podHost, ready := "pod-0", true
	if _, err := kube.DiscoveryV1().EndpointSlices("apps").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "headless-1", Labels: map[string]string{discoveryv1.LabelServiceName: "headless"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.1.2.3"}, Hostname: &podHost,
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ses := c.istio(t).NetworkingV1().ServiceEntries("apps")
	for _, se := range []struct{ name, host, addr string }{
		{"db", "db.external", "192.0.2.50"},
		{"pod", "pod-0.headless", "192.0.2.51"},
	} {
		if _, err := ses.Create(ctx, serviceEntry("apps", se.name, []string{se.host}, se.addr), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	kubeconfig := c.kubeconfig(t, adminToken)
	server := runInCluster(t, inClusterCorefile(t), kubeconfig, kubeconfig, upstream(t, upstreamRecords))
	waitFor(t, 30*time.Second, "CoreDNS ready", server.isReady)
	server.waitAnswer(t, 10*time.Second, entryHost, dns.TypeA, entryAnswer)

	for _, q := range []struct{ name, want string }{
		{"API.External.Example.apps.svc.cluster.local.", "NOERROR CNAME API.External.Example. A 198.51.100.7"},
		{entryHost + ".apps.svc.cluster.local.", "NOERROR CNAME api.external.example. A 198.51.100.7"},
		{entryHost + ".svc.cluster.local.", "NOERROR CNAME api.external.example. A 198.51.100.7"},
		{entryHost + ".cluster.local.", "NOERROR CNAME api.external.example. A 198.51.100.7"},
		{"db.external.svc.cluster.local.", "NOERROR A " + db.Spec.ClusterIP}, // the Service
		{"db.external.apps.svc.cluster.local.", "NOERROR CNAME db.external. A 192.0.2.50"},
		{"pod-0.headless.apps.svc.cluster.local.", "NOERROR A 10.1.2.3"}, // the pod
		{"pod-0.headless.svc.cluster.local.", "NOERROR CNAME pod-0.headless. A 192.0.2.51"},
		{"web.default.svc.cluster.local.", "NOERROR A " + webIP},
		{"nope.apps.svc.cluster.local.", "NXDOMAIN"},
	} {
		for _, network := range []string{"udp", "tcp"} {
			// Case-insensitive: cache, in front of us, answers a name asked
			// again in another case with the CNAME target it holds.
			if got := chain(t, server.coredns, q.name, dns.TypeA, network); !strings.EqualFold(got, q.want) {
				t.Errorf("%s over %s: got %q, want %q", q.name, network, got, q.want)
			}
		}
	}
	if got := chain(t, server.coredns, entryHost+".apps.svc.cluster.local.", dns.TypeAAAA, "udp"); got != "NOERROR CNAME api.external.example." {
		t.Errorf("AAAA of a v4-only host: got %q, want the CNAME alone", got)
	}
}

// chain is "RCODE TYPE data..." of the answer section in order, e.g.
// "NOERROR CNAME api.external.example. A 198.51.100.7".
func chain(t testing.TB, c *coredns, name string, qtype uint16, network string) string {
	t.Helper()
	r, err := c.exchange(name, qtype, network)
	if err != nil {
		return "error: " + err.Error()
	}
	out := []string{dns.RcodeToString[r.Rcode]}
	for _, rr := range r.Answer {
		fields := strings.Fields(rr.String())
		out = append(out, fields[3:]...) // after owner, TTL and class
	}
	return strings.Join(out, " ")
}

// resolve looks name up as a stub resolver with ndots:5 and the search list
// does (glibc's res_search): each expansion in turn, then the name itself,
// stopping at the first reply with an answer. It returns the address found
// and the number of queries sent.
func resolve(t testing.TB, c *coredns, name string) (string, int) {
	t.Helper()
	queries := 0
	for _, suffix := range append(searchList, ".") {
		candidate := name + "." + strings.TrimPrefix(suffix, ".")
		queries++
		r, err := c.exchange(candidate, dns.TypeA, "udp")
		if err != nil {
			t.Fatalf("%s: %v", candidate, err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			continue // NXDOMAIN, or NODATA: the next candidate
		}
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				return a.A.String(), queries
			}
		}
	}
	return "", queries
}

// TestSearchPathSaving measures what searchpath saves a pod with ndots:5
// resolving n ServiceEntry hosts through kube-system's Corefile: round trips
// per lookup and wall time, with and without searchpath.
func TestSearchPathSaving(t *testing.T) {
	const n = 500
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	createNamespace(t, c, "apps")
	hosts := make([]string, n)
	for i := range hosts {
		hosts[i] = fmt.Sprintf("svc-%d.mesh.example", i)
	}
	const perEntry = 250 // Istio's CRD allows 256 hosts per entry
	for i := 0; i < n; i += perEntry {
		if _, err := c.istio(t).NetworkingV1().ServiceEntries("apps").Create(context.Background(),
			serviceEntry("apps", fmt.Sprintf("many-%d", i), hosts[i:min(i+perEntry, n)], "192.0.2.60"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig := c.kubeconfig(t, adminToken)
	with := inClusterCorefile(t)
	without := replaceOnce(t, with, "       searchpath\n", "")

	type result struct {
		queries int
		elapsed time.Duration
	}
	measure := func(corefile string) result {
		server := runInCluster(t, corefile, kubeconfig, kubeconfig, upstream(t, upstreamRecords))
		waitFor(t, 30*time.Second, "CoreDNS ready", server.isReady)
		server.waitAnswer(t, 10*time.Second, hosts[n-1], dns.TypeA, "NOERROR 192.0.2.60")
		var r result
		start := time.Now()
		for _, h := range hosts {
			addr, queries := resolve(t, server.coredns, h)
			if addr != "192.0.2.60" {
				t.Fatalf("%s resolved to %q", h, addr)
			}
			r.queries += queries
		}
		r.elapsed = time.Since(start)
		return r
	}
	on, off := measure(with), measure(without)
	perOn, perOff := float64(on.queries)/n, float64(off.queries)/n
	t.Logf("%d lookups with ndots:5 through kube-system's Corefile: searchpath %.2f round trips and %v per lookup; without %.2f and %v; %.1fx fewer round trips, %.1fx less wall time",
		n, perOn, on.elapsed/n, perOff, off.elapsed/n, perOff/perOn, float64(off.elapsed)/float64(on.elapsed))
	if perOn != 1 || perOff != float64(len(searchList)+1) {
		t.Errorf("round trips per lookup: %.2f with searchpath (want 1), %.2f without (want %d)", perOn, perOff, len(searchList)+1)
	}
}

// TestAutopathAndSearchpath runs kube-system's Corefile with CoreDNS's
// autopath (and the pods verified it needs), without and with searchpath, as
// the README's "searchpath or autopath, not both" describes them:
//   - autopath alone answers a pod's first search form of a ServiceEntry
//     host at once (its walk reaches the bare host through the plugin), but
//     not the other forms, nor a client that is no pod;
//   - searchpath answers every form from any client;
//   - with both, autopath takes the first form and puts its own CNAME in
//     front of the plugin's: the reply carries the CNAME twice.
func TestAutopathAndSearchpath(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	createNamespace(t, c, "apps")
	createEntry(t, c) // api.external.example in namespace bar
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	const pod = "127.0.0.2" // a pod of namespace apps
	createPodAt(t, kube, "apps", "client", pod)
	kubeconfig := c.kubeconfig(t, adminToken)

	first, second := entryHost+".apps.svc.cluster.local.", entryHost+".svc.cluster.local."
	cname := "NOERROR CNAME " + entryHost + ". A 198.51.100.7"
	for _, tc := range []struct {
		name       string
		searchpath bool
		want       map[[2]string]string // {from, name} -> chain
	}{
		{"autopath alone", false, map[[2]string]string{
			{pod, first}:         cname,
			{pod, second}:        "NXDOMAIN",
			{"127.0.0.1", first}: "NXDOMAIN",
		}},
		{"autopath and searchpath", true, map[[2]string]string{
			{pod, first}:         "NOERROR CNAME " + entryHost + ". CNAME " + entryHost + ". A 198.51.100.7",
			{pod, second}:        cname,
			{"127.0.0.1", first}: cname,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			corefile := inClusterCorefile(t)
			corefile = replaceOnce(t, corefile, "    serviceentry {", "    autopath @kubernetes\n    serviceentry {")
			corefile = replaceOnce(t, corefile, "pods insecure", "pods verified")
			if !tc.searchpath {
				corefile = replaceOnce(t, corefile, "       searchpath\n", "")
			}
			server := runInCluster(t, corefile, kubeconfig, kubeconfig, upstream(t, upstreamRecords))
			waitFor(t, 30*time.Second, "CoreDNS ready", server.isReady)
			server.waitAnswer(t, 10*time.Second, entryHost, dns.TypeA, entryAnswer)
			// The kubernetes plugin finds the pod once its pod watch has it:
			// until then autopath does nothing for it.
			waitFor(t, 10*time.Second, "autopath knows the pod", func() bool {
				r, err := server.exchangeFrom(first, dns.TypeA, "udp", pod)
				return err == nil && r.Rcode == dns.RcodeSuccess
			})
			for q, want := range tc.want {
				r, err := server.exchangeFrom(q[1], dns.TypeA, "udp", q[0])
				got := "error"
				if err == nil {
					parts := []string{dns.RcodeToString[r.Rcode]}
					for _, rr := range r.Answer {
						parts = append(parts, strings.Fields(rr.String())[3:]...)
					}
					got = strings.Join(parts, " ")
				}
				if !strings.EqualFold(got, want) {
					t.Errorf("%s from %s: got %q, want %q", q[1], q[0], got, want)
				}
			}
		})
	}
}
