package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// createPodAt creates a pod in ns holding ip, as the kubelet would report it
// through the status subresource (no kubelet runs here). The namespace's
// default ServiceAccount, which admission requires, is made as the
// controller manager would.
func createPodAt(t testing.TB, kube kubernetes.Interface, ns, name, ip string) {
	t.Helper()
	ctx := context.Background()
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	if _, err := kube.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestExportToClient: with "exportto client", against a real API server with
// RBAC and deploy/rbac.yaml, queries from different loopback
// addresses are answered as the pods holding them: a namespace-private entry
// only to its own namespace's pods, public ones to everyone, and an address
// given to a pod of another namespace changes the answer within a second.
func TestExportToClient(t *testing.T) {
	c := startCluster(t, "RBAC")
	c.installCRDs(t, istioCRDs(t))
	token := corednsServiceAccount(t, c, "rbac.yaml")
	createNamespace(t, c, "team-b", "team-c", "shared")
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	private := serviceEntry("team-b", "private", []string{"private.client.internal"}, "192.0.2.60")
	private.Spec.ExportTo = []string{"."}
	ses := c.istio(t).NetworkingV1()
	if _, err := ses.ServiceEntries("team-b").Create(ctx, private, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ses.ServiceEntries("shared").Create(ctx,
		serviceEntry("shared", "public", []string{"public.client.internal"}, "192.0.2.61"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createPodAt(t, kube, "team-b", "b", "127.0.0.2")
	createPodAt(t, kube, "team-c", "c", "127.0.0.3")

	server := startCoreDNS(t, "client.internal", "kubeconfig "+c.kubeconfig(t, token), "exportto client", "startup_timeout 10s")
	server.waitListening(t, 20*time.Second)
	waitFor(t, 20*time.Second, "ready", server.isReady)
	server.waitAnswerFrom(t, 10*time.Second, "127.0.0.2", "private.client.internal", "NOERROR 192.0.2.60")
	for _, q := range []struct{ from, name, want string }{
		{"127.0.0.2", "private.client.internal", "NOERROR 192.0.2.60"},
		{"127.0.0.3", "private.client.internal", "NXDOMAIN"},
		{"127.0.0.1", "private.client.internal", "NXDOMAIN"}, // no pod: public only
		{"127.0.0.2", "public.client.internal", "NOERROR 192.0.2.61"},
		{"127.0.0.3", "public.client.internal", "NOERROR 192.0.2.61"},
		{"127.0.0.1", "public.client.internal", "NOERROR 192.0.2.61"},
	} {
		for _, network := range []string{"udp", "tcp"} {
			if got := server.answerFrom(t, q.name, dns.TypeA, network, q.from); got != q.want {
				t.Errorf("%s from %s over %s: %s, want %s", q.name, q.from, network, got, q.want)
			}
		}
	}

	// A new pod of team-c is given the address while team-b's pod is still
	// there (its deletion not seen yet): the newer pod holds it at once.
	cOnly := serviceEntry("team-c", "c-only", []string{"c-only.client.internal"}, "192.0.2.62")
	cOnly.Spec.ExportTo = []string{"."}
	if _, err := ses.ServiceEntries("team-c").Create(ctx, cOnly, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	server.waitAnswerFrom(t, 5*time.Second, "127.0.0.3", "c-only.client.internal", "NOERROR 192.0.2.62")
	// Creation times have a granularity of a second; within one the index
	// breaks the tie by a fixed order, not by age. Make c2 newer for sure.
	b, err := kube.CoreV1().Pods("team-b").Get(ctx, "b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(b.CreationTimestamp.Add(time.Second)))
	start := time.Now()
	createPodAt(t, kube, "team-c", "c2", "127.0.0.2")
	server.waitAnswerFrom(t, time.Second, "127.0.0.2", "c-only.client.internal", "NOERROR 192.0.2.62")
	server.waitAnswerFrom(t, time.Second, "127.0.0.2", "private.client.internal", "NXDOMAIN")
	t.Logf("address claimed by a newer pod: answered as its namespace after %v", time.Since(start).Round(time.Millisecond))

	// Both pods go; the address is given to a new pod of team-b.
	for _, p := range []struct{ ns, name string }{{"team-b", "b"}, {"team-c", "c2"}} {
		if err := kube.CoreV1().Pods(p.ns).Delete(ctx, p.name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
	}
	server.waitAnswerFrom(t, time.Second, "127.0.0.2", "c-only.client.internal", "NXDOMAIN")
	start = time.Now()
	createPodAt(t, kube, "team-b", "b2", "127.0.0.2")
	server.waitAnswerFrom(t, time.Second, "127.0.0.2", "private.client.internal", "NOERROR 192.0.2.60")
	t.Logf("address reused after the deletion: answered as the new pod's namespace after %v", time.Since(start).Round(time.Millisecond))
}

// waitAnswerFrom waits until name's A query from the address from answers
// want over UDP and TCP.
func (c *coredns) waitAnswerFrom(t *testing.T, timeout time.Duration, from, name, want string) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%s from %s: %s", name, from, want), func() bool {
		return c.answerFrom(t, name, dns.TypeA, "udp", from) == want && c.answerFrom(t, name, dns.TypeA, "tcp", from) == want
	})
}
