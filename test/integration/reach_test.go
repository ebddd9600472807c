package integration

import (
	"context"
	"testing"
	"time"

	"github.com/miekg/dns"
	networking "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
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
// client as soon as its event arrives.
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
}
