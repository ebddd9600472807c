package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// createSelectedPod creates a pod in ns with labels and ip, ready or not, as
// the kubelet would report it through the status subresource (no kubelet
// runs here).
func createSelectedPod(t testing.TB, kube kubernetes.Interface, ns, name, ip string, labels map[string]string, ready bool) {
	t.Helper()
	ctx := context.Background()
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setPodReady(t, kube, pod, ip, ready)
}

// setPodReady writes the pod's status: running at ip, its Ready condition
// as given.
func setPodReady(t testing.TB, kube kubernetes.Interface, pod *corev1.Pod, ip string, ready bool) {
	t.Helper()
	pod.Status = runningStatus(ip, ready)
	if _, err := kube.CoreV1().Pods(pod.Namespace).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runningStatus is a running pod's status at ip, its Ready condition as
// given.
func runningStatus(ip string, ready bool) corev1.PodStatus {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}}
}

// headlessEntry is a headless ServiceEntry of ns (resolution NONE, no
// addresses, one port) answered by the workloads selector picks there.
func headlessEntry(ns, name, host string, selector map[string]string) *clientv1.ServiceEntry {
	return &clientv1.ServiceEntry{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networking.ServiceEntry{Hosts: []string{host},
			Ports:            []*networking.ServicePort{{Number: 5432, Name: "tcp", Protocol: "TCP"}},
			Resolution:       networking.ServiceEntry_NONE,
			WorkloadSelector: &networking.WorkloadSelector{Labels: selector}},
	}
}

func workloadEntry(ns, name, address string, labels map[string]string) *clientv1.WorkloadEntry {
	return &clientv1.WorkloadEntry{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networking.WorkloadEntry{Address: address, Labels: labels},
	}
}

// TestHeadlessEntries: against a real API server with RBAC and
// deploy/rbac.yaml, a headless ServiceEntry (resolution NONE, no addresses,
// ports, a workload selector) is answered by the real binary with the
// addresses of the WorkloadEntries and ready pods it selects in its
// namespace, read from the start; a pod turning unready, a WorkloadEntry
// deleted, drop out of the answer, and new ones join it, within a deadline;
// so do the pods of a namespace where the first selecting entry comes later.
func TestHeadlessEntries(t *testing.T) {
	c := startCluster(t, "RBAC")
	c.installCRDs(t, istioCRDs(t))
	token := corednsServiceAccount(t, c, "rbac.yaml")
	createNamespace(t, c, "db", "other")
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	istio := c.istio(t).NetworkingV1()
	selected := map[string]string{"app": "db"}
	headless := headlessEntry("db", "db", "db.headless.internal", selected)
	if _, err := istio.ServiceEntries("db").Create(ctx, headless, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wles := istio.WorkloadEntries("db")
	for _, w := range []*clientv1.WorkloadEntry{
		workloadEntry("db", "vm-1", "10.20.0.1", selected),
		workloadEntry("db", "vm-6", "fd00:20::1", selected),
		workloadEntry("db", "vm-other-app", "10.20.0.9", map[string]string{"app": "web"}),
	} {
		if _, err := wles.Create(ctx, w, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Selected, but in another namespace: an entry selects in its own.
	if _, err := istio.WorkloadEntries("other").Create(ctx, workloadEntry("other", "vm", "10.20.0.8", selected), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createSelectedPod(t, kube, "db", "db-0", "10.30.0.1", selected, true)
	createSelectedPod(t, kube, "db", "db-1", "10.30.0.2", selected, false)
	createSelectedPod(t, kube, "db", "web-0", "10.30.0.9", map[string]string{"app": "web"}, true)

	// "exportto client" reads the pods (one watch, for the clients and the
	// workloads); "clients mesh" answers every client as a mesh pod.
	server := startCoreDNS(t, "headless.internal", "kubeconfig "+c.kubeconfig(t, token), "exportto client", "clients mesh", "startup_timeout 10s")
	server.waitListening(t, 20*time.Second)
	waitFor(t, 20*time.Second, "ready", server.isReady)
	// Everything was read before the first table: no wait.
	server.waitAnswer(t, 0, "db.headless.internal", dns.TypeA, "NOERROR 10.20.0.1 10.30.0.1")
	server.waitAnswer(t, 0, "db.headless.internal", dns.TypeAAAA, "NOERROR fd00:20::1")

	const deadline = 5 * time.Second
	pods := kube.CoreV1().Pods("db")
	db0, err := pods.Get(ctx, "db-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setPodReady(t, kube, db0, "10.30.0.1", false)
	server.waitAnswer(t, deadline, "db.headless.internal", dns.TypeA, "NOERROR 10.20.0.1")

	db1, err := pods.Get(ctx, "db-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setPodReady(t, kube, db1, "10.30.0.2", true)
	server.waitAnswer(t, deadline, "db.headless.internal", dns.TypeA, "NOERROR 10.20.0.1 10.30.0.2")

	if err := wles.Delete(ctx, "vm-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	server.waitAnswer(t, deadline, "db.headless.internal", dns.TypeA, "NOERROR 10.30.0.2")

	if _, err := wles.Create(ctx, workloadEntry("db", "vm-2", "10.20.0.2", selected), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	server.waitAnswer(t, deadline, "db.headless.internal", dns.TypeA, "NOERROR 10.20.0.2 10.30.0.2")

	if err := pods.Delete(ctx, "db-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	if err := wles.Delete(ctx, "vm-6", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	server.waitAnswer(t, deadline, "db.headless.internal", dns.TypeA, "NOERROR 10.20.0.2")
	server.waitAnswer(t, deadline, "db.headless.internal", dns.TypeAAAA, "NOERROR")

	// The first entry to select in "other" comes after the pods were read:
	// the plugin lists that namespace's pods then, and follows them.
	createSelectedPod(t, kube, "other", "db-0", "10.31.0.1", selected, true)
	late := headlessEntry("other", "late", "late.headless.internal", selected)
	if _, err := istio.ServiceEntries("other").Create(ctx, late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	server.waitAnswer(t, deadline, "late.headless.internal", dns.TypeA, "NOERROR 10.20.0.8 10.31.0.1")
	other0, err := kube.CoreV1().Pods("other").Get(ctx, "db-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setPodReady(t, kube, other0, "10.31.0.1", false)
	server.waitAnswer(t, deadline, "late.headless.internal", dns.TypeA, "NOERROR 10.20.0.8")
}

// TestHeadlessWithoutWorkloadEntryPermission: a ClusterRole from before
// WorkloadEntries were read (serviceentries and pods only) does not keep the
// plugin unready: it says once what it needs, serves its ServiceEntries, and
// reads the WorkloadEntries without a restart once allowed.
func TestHeadlessWithoutWorkloadEntryPermission(t *testing.T) {
	c := startCluster(t, "RBAC")
	c.installCRDs(t, istioCRDs(t))
	c.apply(t, []byte(`apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: old-coredns-serviceentry}
rules:
- apiGroups: ["networking.istio.io"]
  resources: ["serviceentries"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: old-coredns-serviceentry}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: old-coredns-serviceentry}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: coredns}
`))
	ctx := context.Background()
	istio := c.istio(t).NetworkingV1()
	if _, err := istio.ServiceEntries("default").Create(ctx,
		serviceEntry("default", "plain", []string{"plain.headless.internal"}, "192.0.2.70"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	selected := map[string]string{"app": "db"}
	headless := headlessEntry("default", "db", "db.headless.internal", selected)
	if _, err := istio.ServiceEntries("default").Create(ctx, headless, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := istio.WorkloadEntries("default").Create(ctx, workloadEntry("default", "vm", "10.20.0.1", selected), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	server := startCoreDNS(t, "headless.internal", "kubeconfig "+c.kubeconfig(t, corednsToken), "startup_timeout 10s")
	server.waitListening(t, 20*time.Second)
	waitFor(t, 20*time.Second, "ready without permission on WorkloadEntries", server.isReady)
	server.waitAnswer(t, time.Second, "plain.headless.internal", dns.TypeA, "NOERROR 192.0.2.70")
	server.waitLog(t, 5*time.Second, "the plugin needs get, list and watch on workloadentries.networking.istio.io")

	c.apply(t, []byte(`apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: old-coredns-serviceentry}
rules:
- apiGroups: ["networking.istio.io"]
  resources: ["serviceentries", "workloadentries"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
`))
	// The reflector retries with its backoff, up to 30 s.
	server.waitAnswer(t, 45*time.Second, "db.headless.internal", dns.TypeA, "NOERROR 10.20.0.1")
	if n := strings.Count(server.output(), "reading WorkloadEntries is refused"); n != 1 {
		t.Errorf("the refusal logged %d times, want once", n)
	}
}
