package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	networking "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// markPod creates a pod in ns holding ip with Istio's marks as istio-cni and
// the injector leave them: annotations, the istio-proxy container (or not),
// and the Initialized condition, set through the status subresource as the
// kubelet would.
func markPod(t *testing.T, kube kubernetes.Interface, ns, name, ip string, annotations map[string]string, sidecar, initialized bool) {
	t.Helper()
	ctx := context.Background()
	createPodAt(t, kube, ns, name, ip)
	pod, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sidecar {
		// Containers cannot be added to a pod: make it again with them.
		if err := kube.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		pod = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "app", Image: "app"},
			{Name: "istio-proxy", Image: "proxyv2", Args: []string{"proxy", "sidecar"}},
		}}}
		if pod, err = kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod.Annotations = annotations
	if pod, err = kube.CoreV1().Pods(ns).Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	status := corev1.ConditionFalse
	if initialized {
		status = corev1.ConditionTrue
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodInitialized, Status: status}}}
	if _, err := kube.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestReachInKubeSystem: kubeadm's stock Corefile with the shipped stanza
// (cache 30 included), against the real API server: a pod outside the mesh
// gets the upstream's real answer of a public host that has an
// auto-allocated address, an ambient pod the VIP, a sidecar without DNS
// capture its declared addresses and the real answer of an auto-allocated
// host, a sidecar with DNS capture the VIP; asked in both orders, so that
// cache could only mix clients if it saw the plugin's answers. A pod whose
// ambient redirection goes from pending to enabled is answered as a mesh
// client as soon as its event arrives. The shipped alert rules and dashboard
// (deploy/monitoring) query only what this server exports.
func TestReachInKubeSystem(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	createNamespace(t, c, "bar", "apps")
	ctx := context.Background()
	ses := c.istio(t).NetworkingV1().ServiceEntries("bar")
	// An egress allow-list entry: resolution DNS, no address; istiod writes
	// its VIP into status.
	for _, e := range []struct{ name, host, vip string }{
		{"api", "api.external.example", "240.240.0.9"},
		{"other", "other.external.example", "240.240.0.10"},
	} {
		se, err := ses.Create(ctx, serviceEntry("bar", e.name, []string{e.host}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		se.Status.Addresses = []*networking.ServiceEntryAddress{{Host: e.host, Value: e.vip}}
		if _, err := ses.UpdateStatus(ctx, se, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	static := serviceEntry("bar", "static", []string{"static.external.example"}, "10.9.0.1")
	static.Spec.Resolution = networking.ServiceEntry_STATIC
	static.Spec.Endpoints = []*networking.WorkloadEntry{{Address: "198.51.100.20"}}
	if _, err := ses.Create(ctx, static, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// An endpoint the plugin skips, so that the skip counter has a series
	// for the monitoring check.
	skipped := serviceEntry("bar", "skipped", []string{"skipped.external.example"}, "10.9.0.2")
	skipped.Spec.Resolution = networking.ServiceEntry_STATIC
	skipped.Spec.Endpoints = []*networking.WorkloadEntry{{Address: "not an address"}}
	if _, err := ses.Create(ctx, skipped, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	const (
		outside = "127.0.0.2" // a pod with no mark
		ambient = "127.0.0.3" // ambient, redirection enabled
		sidecar = "127.0.0.4" // a sidecar without DNS capture
		capture = "127.0.0.5" // a sidecar with DNS capture
		pending = "127.0.0.6" // ambient, redirection pending
	)
	status := map[string]string{"sidecar.istio.io/status": `{"initContainers":["istio-init"],"containers":["istio-proxy"],"revision":"default"}`}
	withCapture := map[string]string{"sidecar.istio.io/status": status["sidecar.istio.io/status"],
		"proxy.istio.io/config": "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n"}
	markPod(t, kube, "apps", "outside", outside, nil, false, true)
	markPod(t, kube, "apps", "ambient", ambient, map[string]string{"ambient.istio.io/redirection": "enabled"}, false, true)
	markPod(t, kube, "apps", "sidecar", sidecar, status, true, true)
	markPod(t, kube, "apps", "capture", capture, withCapture, true, true)
	markPod(t, kube, "apps", "pending", pending, map[string]string{"ambient.istio.io/redirection": "pending"}, false, true)

	kubeconfig := c.kubeconfig(t, adminToken)
	server := runInClusterAsShipped(t, inClusterCorefile(t), kubeconfig, kubeconfig, upstream(t, map[string]string{
		"api.external.example.": "203.0.113.77", "other.external.example.": "203.0.113.78", "static.external.example.": "203.0.113.79"}))
	waitFor(t, 30*time.Second, "ready", server.isReady)
	server.waitAnswerFrom(t, 10*time.Second, ambient, "api.external.example", "NOERROR 240.240.0.9")

	for _, q := range []struct{ from, name, want string }{
		// outside first, then mesh
		{outside, "api.external.example", "NOERROR 203.0.113.77"},
		{ambient, "api.external.example", "NOERROR 240.240.0.9"},
		{outside, "api.external.example", "NOERROR 203.0.113.77"},
		// mesh first, then outside
		{ambient, "other.external.example", "NOERROR 240.240.0.10"},
		{outside, "other.external.example", "NOERROR 203.0.113.78"},
		{ambient, "other.external.example", "NOERROR 240.240.0.10"},
		// a sidecar's Envoy resolves a DNS entry without endpoints itself
		{sidecar, "api.external.example", "NOERROR 203.0.113.77"},
		{capture, "api.external.example", "NOERROR 203.0.113.77"},
		{pending, "api.external.example", "NOERROR 203.0.113.77"},
		{"127.0.0.1", "api.external.example", "NOERROR 203.0.113.77"}, // no pod
		// declared addresses reach sidecars; endpoints reach everyone else
		{capture, "static.external.example", "NOERROR 10.9.0.1"},
		{sidecar, "static.external.example", "NOERROR 10.9.0.1"},
		{ambient, "static.external.example", "NOERROR 10.9.0.1"},
		{outside, "static.external.example", "NOERROR 198.51.100.20"},
		{pending, "static.external.example", "NOERROR 198.51.100.20"},
	} {
		for _, network := range []string{"udp", "tcp"} {
			if got := server.answerFrom(t, q.name, dns.TypeA, network, q.from); got != q.want {
				t.Errorf("%s from %s over %s: %s, want %s", q.name, q.from, network, got, q.want)
			}
		}
	}

	// Redirection in place: the pod becomes a mesh client.
	pod, err := kube.CoreV1().Pods("apps").Get(ctx, "pending", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Annotations["ambient.istio.io/redirection"] = "enabled"
	start := time.Now()
	if _, err := kube.CoreV1().Pods("apps").Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	server.waitAnswerFrom(t, 2*time.Second, pending, "api.external.example", "NOERROR 240.240.0.9")
	t.Logf("redirection enabled: answered as a mesh client after %v", time.Since(start).Round(time.Millisecond))

	// The shipped alert rules and dashboard name what this server exports.
	checkMonitoring(t, server.metricsAddr)
}

// The ServiceEntries of TestReachEndToEnd, one per resolution form of the
// README's "Answers that reach", in namespace egress. vip is the address
// istiod's controller writes into status.addresses.
var reachEntries = []struct {
	name, host string
	resolution networking.ServiceEntry_Resolution
	declared   []string // spec.addresses
	endpoints  []string // IPs or host names
	vip        string   // status.addresses, "" for none
}{
	{"auto", "auto.reach.example", networking.ServiceEntry_DNS, nil, nil, "240.240.10.1"},
	{"static-auto", "static-auto.reach.example", networking.ServiceEntry_STATIC, nil, []string{"198.51.100.11", "198.51.100.12"}, "240.240.10.2"},
	{"static-declared", "static-declared.reach.example", networking.ServiceEntry_STATIC, []string{"10.20.0.1"}, []string{"198.51.100.21"}, ""},
	{"none-declared", "none-declared.reach.example", networking.ServiceEntry_NONE, []string{"10.30.0.1", "10.30.0.2"}, nil, ""},
	{"cname", "cname.reach.example", networking.ServiceEntry_DNS, nil, []string{"backend.provider.example"}, "240.240.10.5"},
	{"round-robin", "rr.reach.example", networking.ServiceEntry_DNS_ROUND_ROBIN, nil, []string{"198.51.100.60"}, "240.240.10.6"},
	{"dns-declared", "dns-declared.reach.example", networking.ServiceEntry_DNS, []string{"10.40.0.1"}, nil, ""},
	{"dns-ips", "dns-ips.reach.example", networking.ServiceEntry_DNS, nil, []string{"198.51.100.70", "198.51.100.71"}, "240.240.10.8"},
	// Asked only in the cache orders: an egress allow-list entry for a public
	// host, with its auto-allocated address.
	{"github", "api.github.com", networking.ServiceEntry_DNS, nil, nil, "240.240.20.1"},
	{"npm", "registry.npmjs.org", networking.ServiceEntry_DNS, nil, nil, "240.240.20.2"},
}

// cnameTarget is the endpoint host of the entry "cname": not a ServiceEntry
// host, so only the next plugin knows its address.
const cnameTarget = "backend.provider.example"

// What a kind of client is answered, in the README's terms: "pass" is the
// next plugin's answer (the query was passed on), "cname" the CNAME to
// cnameTarget followed by the target's records as the whole server gives them,
// anything else the records themselves.
const (
	pass  = "pass"
	cname = "cname"
)

// reachMatrix is, for each host of reachEntries asked in the matrix, what a
// client of each kind gets: mesh without a sidecar (ambient), mesh with a
// sidecar (DNS capture), declared_only (a sidecar without DNS capture), and
// outside (with or without a sidecar, or no pod at all).
var reachMatrix = []struct {
	host                                    string
	ambient, meshSidecar, declared, outside string
}{
	// DNS, no endpoints, auto-allocated: only an ambient pod routes the VIP;
	// every sidecar's Envoy resolves the host itself.
	{"auto.reach.example", "A 240.240.10.1", pass, pass, pass},
	// STATIC with IP endpoints and an auto-allocated address.
	{"static-auto.reach.example", "A 240.240.10.2", "A 240.240.10.2", "A 198.51.100.11 A 198.51.100.12", "A 198.51.100.11 A 198.51.100.12"},
	// STATIC with a declared address: every sidecar routes it.
	{"static-declared.reach.example", "A 10.20.0.1", "A 10.20.0.1", "A 10.20.0.1", "A 198.51.100.21"},
	// NONE: the declared addresses are where the client connects.
	{"none-declared.reach.example", "A 10.30.0.1 A 10.30.0.2", "A 10.30.0.1 A 10.30.0.2", "A 10.30.0.1 A 10.30.0.2", "A 10.30.0.1 A 10.30.0.2"},
	// DNS with a host-name endpoint.
	{"cname.reach.example", "A 240.240.10.5", "A 240.240.10.5", cname, cname},
	// DNS_ROUND_ROBIN with one IP endpoint.
	{"rr.reach.example", "A 240.240.10.6", "A 240.240.10.6", "A 198.51.100.60", "A 198.51.100.60"},
	// DNS with a declared address and no endpoints: a sidecar of any class
	// gets the real answer.
	{"dns-declared.reach.example", "A 10.40.0.1", pass, pass, pass},
	// DNS with IP endpoints.
	{"dns-ips.reach.example", "A 240.240.10.8", "A 240.240.10.8", "A 198.51.100.70 A 198.51.100.71", "A 198.51.100.70 A 198.51.100.71"},
}

// The kinds of client, the columns of reachMatrix.
const (
	kindAmbient = iota
	kindMeshSidecar
	kindDeclared
	kindOutside
)

// reachClients are pods as Istio's injector and istio-cni leave them (the
// fixtures of internal/reach/testdata), each given its own loopback address,
// and the kind of client the README's table makes it.
var reachClients = []struct {
	fixture, name, ip string
	kind              int
	what              string
}{
	{"sidecar-dns-capture", "", "127.0.0.10", kindMeshSidecar, "classic sidecar with DNS capture"},
	{"sidecar-no-dns", "", "127.0.0.11", kindDeclared, "classic sidecar without DNS capture"},
	{"native-sidecar", "", "127.0.0.12", kindMeshSidecar, "native sidecar with DNS capture, app init running"},
	{"sidecar-initializing", "", "127.0.0.13", kindOutside, "classic sidecar with DNS capture, Initialized False"},
	{"ambient-enabled", "", "127.0.0.14", kindAmbient, "ambient, redirection enabled"},
	{"ambient-pending", "", "127.0.0.15", kindOutside, "ambient, redirection pending"},
	{"opted-out", "", "127.0.0.16", kindOutside, "opted out of injection"},
	{"plain", "", "127.0.0.17", kindOutside, "plain pod"},
	{"host-network", "", "127.0.0.18", kindOutside, "host-network pod"},
	// Not a state istio-cni leaves: the host-network pod with ambient's mark,
	// so that only the host network can make it outside.
	{"host-network", "node-agent-ambient", "127.0.0.19", kindOutside, "host-network pod marked ambient enabled"},
	{"", "", "127.0.0.1", kindOutside, "no pod"},
}

// createFixturePod creates the pod of internal/reach/testdata/<file>.yaml
// through the API (name replaced when name is not empty), with its
// ServiceAccount, then sets the fixture's status through the status
// subresource as the kubelet would, with ip as its address. It returns the pod
// as created.
func createFixturePod(t testing.TB, kube kubernetes.Interface, file, name, ip string, mutate func(*corev1.Pod)) *corev1.Pod {
	t.Helper()
	pod := readFixturePod(t, file)
	if name != "" {
		pod.Name = name
	}
	if mutate != nil {
		mutate(pod)
	}
	status := pod.Status
	pod.Status = corev1.PodStatus{}
	ctx := context.Background()
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	if _, err := kube.CoreV1().ServiceAccounts(pod.Namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	created, err := kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating %s: %v", file, err)
	}
	created.Status = status
	created.Status.PodIP, created.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
	if created.Spec.HostNetwork {
		// A host-network pod's address is its node's.
		created.Status.HostIP, created.Status.HostIPs = ip, []corev1.HostIP{{IP: ip}}
	}
	if created, err = kube.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("status of %s: %v", file, err)
	}
	return created
}

// readFixturePod is the pod of internal/reach/testdata/<file>.yaml, status
// included.
func readFixturePod(t testing.TB, file string) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("../../internal/reach/testdata", file+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return &pod
}

// createReachEntries creates reachEntries in namespace ns, and writes each
// one's status address as istiod's controller does.
func createReachEntries(t testing.TB, c *cluster, ns string) {
	t.Helper()
	ctx := context.Background()
	ses := c.istio(t).NetworkingV1().ServiceEntries(ns)
	for _, e := range reachEntries {
		se := serviceEntry(ns, e.name, []string{e.host}, e.declared...)
		se.Spec.Resolution = e.resolution
		for _, ep := range e.endpoints {
			se.Spec.Endpoints = append(se.Spec.Endpoints, &networking.WorkloadEntry{Address: ep})
		}
		created, err := ses.Create(ctx, se, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating %s: %v", e.name, err)
		}
		if e.vip == "" {
			continue
		}
		created.Status.Addresses = []*networking.ServiceEntryAddress{{Host: e.host, Value: e.vip}}
		if _, err := ses.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("status of %s: %v", e.name, err)
		}
	}
}

// chainFrom is the reply to name's query of type qtype from the address from,
// as "RCODE TYPE data...": CNAMEs in order, then the addresses sorted
// (loadbalance shuffles them), e.g.
// "NOERROR CNAME backend.provider.example. A 198.51.100.50".
func (c *coredns) chainFrom(name string, qtype uint16, network, from string) string {
	r, err := c.exchangeFrom(name, qtype, network, from)
	if err != nil {
		return "error: " + err.Error()
	}
	out := []string{dns.RcodeToString[r.Rcode]}
	var addrs []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.CNAME:
			out = append(out, "CNAME", v.Target)
		case *dns.A:
			addrs = append(addrs, "A "+v.A.String())
		case *dns.AAAA:
			addrs = append(addrs, "AAAA "+v.AAAA.String())
		case *dns.PTR:
			out = append(out, "PTR", v.Ptr)
		case *dns.SRV:
			out = append(out, "SRV", strconv.Itoa(int(v.Port)), v.Target)
		default:
			out = append(out, dns.TypeToString[rr.Header().Rrtype])
		}
	}
	sort.Strings(addrs)
	return strings.Join(append(out, addrs...), " ")
}

// pollChainFrom asks name's A record from the address from of every server
// over UDP, every 2 ms, until each replies want, and returns how long after
// start each one did; it fails after timeout. The replies over TCP are then
// checked too.
func pollChainFrom(t *testing.T, servers []reachServer, start time.Time, timeout time.Duration, from, name, want string) []time.Duration {
	t.Helper()
	took := make([]time.Duration, len(servers))
	for left := len(servers); left > 0; {
		for i, s := range servers {
			if took[i] != 0 {
				continue
			}
			if got := s.chainFrom(name, dns.TypeA, "udp", from); got == want {
				took[i] = time.Since(start)
				left--
			} else if time.Since(start) > timeout {
				t.Fatalf("%s: %s from %s still %q %v after the update, want %q", s.name, name, from, got, timeout, want)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	for _, s := range servers {
		if got := s.chainFrom(name, dns.TypeA, "tcp", from); got != want {
			t.Errorf("%s: %s from %s over tcp: %q, want %q", s.name, name, from, got, want)
		}
	}
	return took
}

// countingUpstream is a DNS server standing in for the resolvers of
// /etc/resolv.conf, over UDP and TCP on one port (forward asks over the
// protocol of the query), counting the queries it gets by name.
type countingUpstream struct {
	addr string
	mu   sync.Mutex
	seen map[string]int
}

func startCountingUpstream(t testing.TB, records map[string]string) *countingUpstream {
	t.Helper()
	u := &countingUpstream{seen: make(map[string]int)}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		q := r.Question[0]
		name := strings.ToLower(q.Name)
		u.mu.Lock()
		u.seen[name]++
		u.mu.Unlock()
		m := new(dns.Msg).SetReply(r)
		if ip, ok := records[name]; !ok {
			m.Rcode = dns.RcodeNameError
		} else if q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(ip)})
		}
		_ = w.WriteMsg(m)
	})
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close() // the port is taken over TCP: another one
			continue
		}
		udp, tcp := &dns.Server{PacketConn: pc, Handler: handler}, &dns.Server{Listener: l, Handler: handler}
		go func() { _ = udp.ActivateAndServe() }()
		go func() { _ = tcp.ActivateAndServe() }()
		t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })
		u.addr = pc.LocalAddr().String()
		return u
	}
	t.Fatal("no port free over both UDP and TCP")
	return nil
}

// count is how many queries for name (fully qualified) the upstream got.
func (u *countingUpstream) count(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[strings.ToLower(name)]
}

// metricSum is the sum of every sample of a metric, whatever its labels, from
// CoreDNS's Prometheus endpoint.
func metricSum(t testing.TB, addr, name string) float64 {
	t.Helper()
	var sum float64
	for line := range strings.Lines(string(httpGet(t, "http://"+addr+"/metrics"))) {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// reachServer is a CoreDNS under test with what its next plugin answers for
// each name it is passed: the answers of "pass" and "cname" in reachMatrix.
type reachServer struct {
	name string
	*coredns
	next map[string]string // fully qualified name -> IPv4 address
}

// want expands an answer of reachMatrix for host, as this server gives it.
func (s reachServer) want(t testing.TB, host, answer string) string {
	t.Helper()
	switch answer {
	case pass:
		ip, ok := s.next[host+"."]
		if !ok {
			t.Fatalf("the next plugin of %s has no record for %s", s.name, host)
		}
		return "NOERROR A " + ip
	case cname:
		return "NOERROR CNAME " + cnameTarget + ". A " + s.next[cnameTarget+"."]
	}
	return "NOERROR " + answer
}

// nextRecords gives every host of reachEntries its own address in the next
// plugin, first+i, so that a name wrongly passed on shows, and the CNAME
// target the address target.
func nextRecords(first int, target string) map[string]string {
	records := map[string]string{cnameTarget + ".": target}
	for i, e := range reachEntries {
		records[e.host+"."] = fmt.Sprintf("203.0.113.%d", first+i)
	}
	return records
}

// TestReachEndToEnd: the README's "Answers that reach" through the real API
// server and the built CoreDNS. Pods of every kind Istio's injector and
// istio-cni leave (internal/reach/testdata) ask, from their own addresses,
// for the hosts of ServiceEntries of every resolution form, through two
// Corefiles: a minimal one whose next plugin is hosts, and kubeadm's stock
// Corefile with the shipped stanza (cache 30, forward to a test upstream).
// Each gets what the README's table says its class gets. Then, on the stock
// Corefile, a public host with an auto-allocated address is asked by a pod
// outside the mesh and an ambient pod in both orders, so that cache could
// only mix them if it saw the plugin's answers; and two pods change class
// (redirection pending -> enabled, Initialized False -> True) and are
// answered by their new class as soon as their event arrives.
func TestReachEndToEnd(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	createNamespace(t, c, "egress", "shop", "store", "legacy", "monitoring")
	createReachEntries(t, c, "egress")
	for _, cl := range reachClients {
		if cl.fixture == "" {
			continue
		}
		var mutate func(*corev1.Pod)
		if cl.name == "node-agent-ambient" {
			mutate = func(p *corev1.Pod) { p.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"} }
		}
		createFixturePod(t, kube, cl.fixture, cl.name, cl.ip, mutate)
	}

	kubeconfig := c.kubeconfig(t, adminToken)
	// The minimal Corefile: serviceentry, then hosts.
	hostsNext := nextRecords(1, "198.51.100.50")
	var hostsLines []string
	for name, ip := range hostsNext {
		hostsLines = append(hostsLines, ip+" "+strings.TrimSuffix(name, "."))
	}
	sort.Strings(hostsLines)
	dnsPort, readyPort := freePort(t), freePort(t)
	minimal := runCorefile(t, fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    serviceentry {
        kubeconfig %s
        fallthrough
    }
    hosts {
        %s
    }
    ready 127.0.0.1:%d
}
`, dnsPort, kubeconfig, strings.Join(hostsLines, "\n        "), readyPort), dnsPort, readyPort)
	// kubeadm's stock Corefile with the shipped stanza.
	upstreamNext := nextRecords(101, "198.51.100.51")
	up := startCountingUpstream(t, upstreamNext)
	stock := runInClusterAsShipped(t, inClusterCorefile(t), kubeconfig, kubeconfig, up.addr)
	servers := []reachServer{{"minimal Corefile (hosts next)", minimal, hostsNext}, {"kubeadm's Corefile (forward next)", stock.coredns, upstreamNext}}
	start := time.Now()
	for _, s := range servers {
		// ready may answer a moment before the DNS port is open.
		waitFor(t, 60*time.Second, s.name+" ready", s.isReady)
		s.waitListening(t, 10*time.Second)
	}
	t.Logf("both servers ready %v after start", time.Since(start).Round(time.Millisecond))

	// Ready means the entries and the first list of pods are in: no waiting
	// for the answers.
	for _, s := range servers {
		t.Run("matrix/"+s.name, func(t *testing.T) {
			for _, cl := range reachClients {
				for _, row := range reachMatrix {
					answer := [...]string{row.ambient, row.meshSidecar, row.declared, row.outside}[cl.kind]
					want := s.want(t, row.host, answer)
					for _, network := range []string{"udp", "tcp"} {
						if got := s.chainFrom(row.host, dns.TypeA, network, cl.ip); got != want {
							t.Errorf("%s from %s (%s) over %s: %q, want %q", row.host, cl.ip, cl.what, network, got, want)
						}
					}
				}
			}
		})
	}

	// SRV, PTR and search-path expansions follow the host's answer for the
	// client; passed on, they get the upstream's NXDOMAIN here.
	t.Run("srv, ptr, search path", func(t *testing.T) {
		const capture, declared, ambient, plain = "127.0.0.10", "127.0.0.11", "127.0.0.14", "127.0.0.17"
		for _, q := range []struct {
			from, name string
			qtype      uint16
			want       string
		}{
			{ambient, "_http._tcp.auto.reach.example", dns.TypeSRV, "NOERROR SRV 80 auto.reach.example."},
			{capture, "_http._tcp.auto.reach.example", dns.TypeSRV, "NXDOMAIN"},
			{plain, "_http._tcp.auto.reach.example", dns.TypeSRV, "NXDOMAIN"},
			{plain, "_http._tcp.static-declared.reach.example", dns.TypeSRV, "NOERROR SRV 80 static-declared.reach.example."},
			{ambient, "1.10.240.240.in-addr.arpa", dns.TypePTR, "NOERROR PTR auto.reach.example."},
			{capture, "1.10.240.240.in-addr.arpa", dns.TypePTR, "NXDOMAIN"},
			{plain, "1.10.240.240.in-addr.arpa", dns.TypePTR, "NXDOMAIN"},
			{declared, "1.0.20.10.in-addr.arpa", dns.TypePTR, "NOERROR PTR static-declared.reach.example."},
			{plain, "1.0.20.10.in-addr.arpa", dns.TypePTR, "NXDOMAIN"},
			{ambient, "auto.reach.example.store.svc.cluster.local", dns.TypeA, "NOERROR CNAME auto.reach.example. A 240.240.10.1"},
			{plain, "auto.reach.example.legacy.svc.cluster.local", dns.TypeA, "NXDOMAIN"},
			{declared, "static-declared.reach.example.shop.svc.cluster.local", dns.TypeA, "NOERROR CNAME static-declared.reach.example. A 10.20.0.1"},
			{plain, "static-declared.reach.example.legacy.svc.cluster.local", dns.TypeA, "NOERROR CNAME static-declared.reach.example. A 198.51.100.21"},
		} {
			for _, network := range []string{"udp", "tcp"} {
				if got := stock.chainFrom(q.name, q.qtype, network, q.from); got != q.want {
					t.Errorf("%s %s from %s over %s: %q, want %q", q.name, dns.TypeToString[q.qtype], q.from, network, got, q.want)
				}
			}
		}
	})

	t.Run("cache, both orders", func(t *testing.T) {
		const plain, ambient = "127.0.0.17", "127.0.0.14"
		hits := func() float64 { return metricSum(t, stock.metricsAddr, "coredns_cache_hits_total") }
		for _, order := range []struct {
			host  string
			steps []string // the clients, in order
		}{
			{"api.github.com", []string{plain, ambient, plain, ambient}},     // outside first, then mesh
			{"registry.npmjs.org", []string{ambient, plain, ambient, plain}}, // mesh first, then outside
		} {
			vip, real := "", "NOERROR A "+upstreamNext[order.host+"."]
			for _, e := range reachEntries {
				if e.host == order.host {
					vip = "NOERROR A " + e.vip
				}
			}
			for i, from := range order.steps {
				before := hits()
				want := real
				if from == ambient {
					want = vip
				}
				for _, network := range []string{"udp", "tcp"} {
					if got := stock.chainFrom(order.host, dns.TypeA, network, from); got != want {
						t.Errorf("%s, step %d, from %s over %s: %q, want %q", order.host, i+1, from, network, got, want)
					}
				}
				if from == plain && i >= 2 && hits() < before+2 {
					t.Errorf("%s, step %d: the real answer did not come from cache (hits %v -> %v)", order.host, i+1, before, hits())
				}
			}
			// The upstream was asked once: the mesh answers never went
			// past the plugin, the outside ones after the first came from
			// cache.
			if n := up.count(order.host + "."); n != 1 {
				t.Errorf("%s: the upstream was asked %d times, want once", order.host, n)
			}
		}
	})

	t.Run("class change", func(t *testing.T) {
		ctx := context.Background()
		// Ambient, redirection pending -> enabled, as istio-cni patches it.
		const pending = "127.0.0.15"
		for _, s := range servers {
			if got, want := s.chainFrom("auto.reach.example", dns.TypeA, "udp", pending), s.want(t, "auto.reach.example", pass); got != want {
				t.Fatalf("%s: pending pod before the change: %q, want %q", s.name, got, want)
			}
		}
		start := time.Now()
		if _, err := kube.CoreV1().Pods("store").Patch(ctx, "catalog-6f8d9c7b4-w7kcb", types.MergePatchType,
			[]byte(`{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled"}}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		for i, took := range pollChainFrom(t, servers, start, 2*time.Second, pending, "auto.reach.example", "NOERROR A 240.240.10.1") {
			t.Logf("%s: redirection enabled, answered as a mesh client %v after the update was sent", servers[i].name, took.Round(time.Millisecond))
		}

		// A classic sidecar with DNS capture, Initialized False -> True.
		const initializing = "127.0.0.13"
		for _, s := range servers {
			if got, want := s.chainFrom("static-auto.reach.example", dns.TypeA, "udp", initializing), s.want(t, "static-auto.reach.example", "A 198.51.100.11 A 198.51.100.12"); got != want {
				t.Fatalf("%s: initializing pod before the change: %q, want %q", s.name, got, want)
			}
		}
		pod, err := kube.CoreV1().Pods("shop").Get(ctx, "checkout-7d9f8b6c5d-q8wnl", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status.Phase = corev1.PodRunning
		for i := range pod.Status.Conditions {
			if cond := &pod.Status.Conditions[i]; cond.Type == corev1.PodInitialized {
				cond.Status, cond.Reason, cond.Message = corev1.ConditionTrue, "", ""
			}
		}
		start = time.Now()
		if _, err := kube.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		for i, took := range pollChainFrom(t, servers, start, 2*time.Second, initializing, "static-auto.reach.example", "NOERROR A 240.240.10.2") {
			t.Logf("%s: init done, answered as a mesh client %v after the update was sent", servers[i].name, took.Round(time.Millisecond))
		}
		for _, s := range servers {
			// Still a sidecar: its Envoy gets the real answer of a DNS
			// entry without endpoints.
			if got, want := s.chainFrom("auto.reach.example", dns.TypeA, "udp", initializing), s.want(t, "auto.reach.example", pass); got != want {
				t.Errorf("%s: initialized sidecar, auto.reach.example: %q, want %q", s.name, got, want)
			}
		}
	})
}

// TestReachReadyWaitsForPods: with RBAC that lets CoreDNS read ServiceEntries
// but not pods, the plugin says so, answers every client as one outside the
// mesh (an ambient pod included) and is not ready; once pods may be read it
// becomes ready, and from then on the ambient pod is answered as a mesh
// client.
func TestReachReadyWaitsForPods(t *testing.T) {
	c := startCluster(t, "RBAC")
	c.installCRDs(t, istioCRDs(t))
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	createNamespace(t, c, "egress", "store")
	createReachEntries(t, c, "egress")
	const ambient = "127.0.0.14"
	createFixturePod(t, kube, "ambient-enabled", "", ambient, nil)
	grant := func(name, group, resource string, verbs ...string) {
		c.apply(t, fmt.Appendf(nil, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: %[1]s}
rules:
- apiGroups: [%[2]q]
  resources: [%[3]q]
  verbs: [%[4]s]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: %[1]s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: %[1]s}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: coredns}
`, name, group, resource, strings.Join(verbs, ", ")))
	}
	grant("reach-entries", "networking.istio.io", "serviceentries", "get", "list", "watch")

	records := nextRecords(1, "198.51.100.50")
	up := startCountingUpstream(t, records)
	dnsPort, readyPort := freePort(t), freePort(t)
	server := runCorefile(t, fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    serviceentry {
        kubeconfig %s
        startup_timeout 1s
        fallthrough
    }
    forward . %s
    ready 127.0.0.1:%d
}
`, dnsPort, c.kubeconfig(t, corednsToken), up.addr, readyPort), dnsPort, readyPort)
	server.waitListening(t, 30*time.Second)
	server.waitLog(t, 15*time.Second, "reading pods is forbidden")
	// The entries are in (the endpoint is the plugin's answer, the upstream's
	// would be 203.0.113.x), the pods are not: the ambient pod is answered
	// as a client outside the mesh.
	waitFor(t, 10*time.Second, "the entries read", func() bool {
		return server.chainFrom("static-declared.reach.example", dns.TypeA, "udp", ambient) == "NOERROR A 198.51.100.21"
	})
	for _, q := range []struct{ name, want string }{
		{"static-declared.reach.example", "NOERROR A 198.51.100.21"},
		{"auto.reach.example", "NOERROR A " + records["auto.reach.example."]},
		{"static-auto.reach.example", "NOERROR A 198.51.100.11 A 198.51.100.12"},
	} {
		for _, network := range []string{"udp", "tcp"} {
			if got := server.chainFrom(q.name, dns.TypeA, network, ambient); got != q.want {
				t.Errorf("before the pods are read: %s from the ambient pod over %s: %q, want %q", q.name, network, got, q.want)
			}
		}
	}
	for range 10 {
		if server.isReady() {
			t.Fatal("ready before the first list of pods")
		}
		time.Sleep(100 * time.Millisecond)
	}

	start := time.Now()
	grant("reach-pods", "", "pods", "list", "watch")
	// client-go's reflector retries the refused list with a backoff (0.8 s,
	// doubling, jittered).
	waitFor(t, 90*time.Second, "ready once pods may be read", server.isReady)
	t.Logf("ready %v after pods may be read", time.Since(start).Round(time.Millisecond))
	// Ready: the pods are in, no waiting.
	for _, q := range []struct{ name, want string }{
		{"static-declared.reach.example", "NOERROR A 10.20.0.1"},
		{"auto.reach.example", "NOERROR A 240.240.10.1"},
		{"static-auto.reach.example", "NOERROR A 240.240.10.2"},
	} {
		for _, network := range []string{"udp", "tcp"} {
			if got := server.chainFrom(q.name, dns.TypeA, network, ambient); got != q.want {
				t.Errorf("once ready: %s from the ambient pod over %s: %q, want %q", q.name, network, got, q.want)
			}
		}
	}
}
