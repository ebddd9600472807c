package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// deployFile reads a file of deploy/, the manifests users apply.
func deployFile(t testing.TB, rel string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("../../deploy", rel))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// replaceOnce replaces old by new in s and fails when old is not there
// exactly once, so that a change to a shipped Corefile breaks the test
// instead of silently testing something else.
func replaceOnce(t testing.TB, s, old, new string) string {
	t.Helper()
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("expected %q once in the shipped Corefile, found it %d times:\n%s", old, n, s)
	}
	return strings.Replace(s, old, new, 1)
}

// corefileOf reads the Corefile of a ConfigMap back from the API server: what
// the cluster holds after the apply, not the file.
func corefileOf(t testing.TB, kube kubernetes.Interface, namespace, name string) string {
	t.Helper()
	cm, err := kube.CoreV1().ConfigMaps(namespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cm.Data["Corefile"]
}

// upstream is a DNS server standing in for the resolvers of /etc/resolv.conf.
func upstream(t testing.TB, records map[string]string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		if ip, ok := records[strings.ToLower(r.Question[0].Name)]; ok && r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(ip)})
		} else if !ok {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// TestDeployManifests applies every manifest of deploy/ to the real API
// server (server-side, strict field validation), patches a kubeadm-like
// CoreDNS Deployment with the image patch, and runs the two Corefiles users
// get from deploy/ with the built binary:
//   - in-cluster: kube-system's Corefile with the serviceentry stanza answers
//     ServiceEntry hosts, kubernetes Service names and forwarded names;
//   - .global stub domain: a front CoreDNS with stock plugins only and the
//     kube-system stanza forwards .global to the serviceentry-dns Corefile:
//     entries resolve, unknown .global names get NXDOMAIN at once, other
//     names still resolve through the front's own plugins.
//
// Only what a pod gets from the cluster is substituted: loopback ports for
// :53 and the probe ports, a kubeconfig for the in-cluster credentials, and
// the test's upstream for /etc/resolv.conf.
func TestDeployManifests(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	createNamespace(t, c, "istio-system", "bar")
	for _, f := range []string{"rbac.yaml", "in-cluster/coredns-configmap.yaml", "global/serviceentry-dns.yaml"} {
		c.apply(t, deployFile(t, f))
	}
	checkImagePatch(t, kube)
	checkGlobalAvailability(t, kube)

	ctx := context.Background()
	ses := c.istio(t).NetworkingV1().ServiceEntries("bar")
	for _, se := range []struct{ name, host, addr string }{
		{"httpbin", "httpbin.bar.global", "240.0.0.10"},
		{"external", "api.external.example", "198.51.100.7"},
	} {
		if _, err := ses.Create(ctx, serviceEntry("bar", se.name, []string{se.host}, se.addr), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	web, err := kube.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := c.kubeconfig(t, adminToken)

	t.Run("in-cluster", func(t *testing.T) {
		server := runInCluster(t, corefileOf(t, kube, "kube-system", "coredns"), kubeconfig, kubeconfig,
			upstream(t, map[string]string{"www.example.org.": "192.0.2.80"}))
		waitFor(t, 30*time.Second, "kube-system CoreDNS ready", server.isReady)
		server.waitAnswer(t, 5*time.Second, "api.external.example", dns.TypeA, "NOERROR 198.51.100.7")
		server.waitAnswer(t, 5*time.Second, "httpbin.bar.global", dns.TypeA, "NOERROR 240.0.0.10")
		server.waitAnswer(t, 5*time.Second, "web.default.svc.cluster.local", dns.TypeA, "NOERROR "+web.Spec.ClusterIP)
		server.waitAnswer(t, 5*time.Second, "nope.default.svc.cluster.local", dns.TypeA, "NXDOMAIN")
		server.waitAnswer(t, 5*time.Second, "www.example.org", dns.TypeA, "NOERROR 192.0.2.80")
	})

	t.Run("global-stub-domain", func(t *testing.T) {
		backPort, backReady, backHealth, backMetrics := freePort(t), freePort(t), freePort(t), freePort(t)
		back := corefileOf(t, kube, "istio-system", "serviceentry-dns")
		back = replaceOnce(t, back, "global:53 {", fmt.Sprintf("global:%d {\n    bind 127.0.0.1", backPort))
		back = replaceOnce(t, back, "serviceentry global {\n", "serviceentry global {\n        kubeconfig "+kubeconfig+"\n")
		back = replaceOnce(t, back, "health :8080", fmt.Sprintf("health 127.0.0.1:%d", backHealth))
		back = replaceOnce(t, back, "ready :8181", fmt.Sprintf("ready 127.0.0.1:%d", backReady))
		back = replaceOnce(t, back, "prometheus :9153", fmt.Sprintf("prometheus 127.0.0.1:%d", backMetrics))
		backServer := runCorefile(t, back, backPort, backReady)
		waitFor(t, 30*time.Second, "serviceentry-dns ready", backServer.isReady)

		frontPort, frontReady, frontMetrics := freePort(t), freePort(t), freePort(t)
		front := string(deployFile(t, "global/kube-system-stanza.Corefile"))
		front = replaceOnce(t, front, "global:53 {", fmt.Sprintf("global:%d {\n    bind 127.0.0.1", frontPort))
		front = replaceOnce(t, front, "prometheus :9153", fmt.Sprintf("prometheus 127.0.0.1:%d", frontMetrics))
		front = replaceOnce(t, front, "SERVICEENTRY_DNS_IP", fmt.Sprintf("127.0.0.1:%d", backPort))
		// The rest of a cluster DNS, reduced to one stock plugin with one name.
		front += fmt.Sprintf(".:%d {\n    bind 127.0.0.1\n    hosts {\n        192.0.2.99 other.example\n    }\n    ready 127.0.0.1:%d\n}\n", frontPort, frontReady)
		frontServer := runCorefile(t, front, frontPort, frontReady)
		waitFor(t, 30*time.Second, "front CoreDNS ready", frontServer.isReady)

		frontServer.waitAnswer(t, 5*time.Second, "httpbin.bar.global", dns.TypeA, "NOERROR 240.0.0.10")
		frontServer.waitAnswer(t, 5*time.Second, "httpbin.bar.global", dns.TypeAAAA, "NOERROR")
		frontServer.waitAnswer(t, 5*time.Second, "other.example", dns.TypeA, "NOERROR 192.0.2.99")
		// The back is authoritative for global only: other entries are not
		// served there, and nothing it does not know is forwarded anywhere.
		backServer.waitAnswer(t, 5*time.Second, "api.external.example", dns.TypeA, "REFUSED")

		for _, name := range []string{"unknown.global.", "nope.bar.global."} {
			start := time.Now()
			r, err := frontServer.exchange(name, dns.TypeA, "udp")
			took := time.Since(start)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if r.Rcode != dns.RcodeNameError || len(r.Ns) == 0 || r.Ns[0].Header().Rrtype != dns.TypeSOA {
				t.Errorf("%s: want NXDOMAIN with an SOA, got %s", name, r)
			}
			// A loop or an upstream timeout would take seconds (forward's
			// own timeout is 2 s); an authoritative answer takes a hop.
			if took > time.Second {
				t.Errorf("%s: NXDOMAIN took %v", name, took)
			}
			t.Logf("%s: NXDOMAIN through the stub domain in %v", name, took)
		}
		// The hop is seen by the cluster DNS's metrics: its requests and
		// what it forwarded.
		for _, metric := range []string{"coredns_dns_requests_total", "coredns_proxy_request_duration_seconds_count"} {
			if n := metricSum(t, fmt.Sprintf("127.0.0.1:%d", frontMetrics), metric); n == 0 {
				t.Errorf("the kube-system stanza exports no %s", metric)
			}
		}
	})
}

// checkImagePatch creates the cluster's CoreDNS Deployment as kubeadm does and
// applies deploy/in-cluster/coredns-deployment-patch.yaml as the README says
// (a strategic merge patch): the image changes, nothing else does.
func checkImagePatch(t *testing.T, kube kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	labels := map[string]string{"k8s-app": "kube-dns"}
	deployments := kube.AppsV1().Deployments("kube-system")
	_, err := deployments.Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "coredns", Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: "coredns",
					Containers: []corev1.Container{{
						Name: "coredns", Image: "registry.k8s.io/coredns/coredns:v1.12.0",
						Args:         []string{"-conf", "/etc/coredns/Corefile"},
						VolumeMounts: []corev1.VolumeMount{{Name: "config-volume", MountPath: "/etc/coredns", ReadOnly: true}},
					}},
					Volumes: []corev1.Volume{{Name: "config-volume", VolumeSource: corev1.VolumeSource{
						ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "coredns"}}}}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	patch, err := yaml.YAMLToJSON(deployFile(t, "in-cluster/coredns-deployment-patch.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := deployments.Patch(ctx, "coredns", types.StrategicMergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	containers := got.Spec.Template.Spec.Containers
	if len(containers) != 1 || containers[0].Image != "registry.example.com/coredns-serviceentry@sha256:"+strings.Repeat("0", 64) {
		t.Fatalf("after the patch: %+v", containers)
	}
	if len(containers[0].Args) != 2 || len(containers[0].VolumeMounts) != 1 || got.Spec.Template.Spec.ServiceAccountName != "coredns" {
		t.Errorf("the patch changed more than the image: %+v", got.Spec.Template.Spec)
	}
}

// checkGlobalAvailability: the .global Deployment spreads its replicas over
// nodes, and a PodDisruptionBudget that selects its pods lets a drain take
// one at a time.
func checkGlobalAvailability(t *testing.T, kube kubernetes.Interface) {
	t.Helper()
	ctx := context.Background()
	deploy, err := kube.AppsV1().Deployments("istio-system").Get(ctx, "serviceentry-dns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods := labels.Set(deploy.Spec.Template.Labels)
	anti := deploy.Spec.Template.Spec.Affinity
	if anti == nil || anti.PodAntiAffinity == nil || len(anti.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Fatalf("serviceentry-dns: no preferred pod anti-affinity: %+v", anti)
	}
	term := anti.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm
	if sel, err := metav1.LabelSelectorAsSelector(term.LabelSelector); err != nil || term.TopologyKey != "kubernetes.io/hostname" || !sel.Matches(pods) {
		t.Errorf("serviceentry-dns anti-affinity: topology %q, selector %v (%v), not its own pods by node", term.TopologyKey, term.LabelSelector, err)
	}
	pdb, err := kube.PolicyV1().PodDisruptionBudgets("istio-system").Get(ctx, "serviceentry-dns", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector); err != nil || !sel.Matches(pods) {
		t.Errorf("the PodDisruptionBudget's selector %v (%v) does not select serviceentry-dns's pods", pdb.Spec.Selector, err)
	}
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || *deploy.Spec.Replicas < 2 {
		t.Errorf("PodDisruptionBudget maxUnavailable %v with %d replicas: a drain could take every replica", pdb.Spec.MaxUnavailable, *deploy.Spec.Replicas)
	}
}
