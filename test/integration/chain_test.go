package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestKubernetesNamesWin runs serviceentry in front of the real kubernetes
// plugin, as in kube-system's Corefile: a ServiceEntry host inside
// cluster.local is answered only when Kubernetes has no such name. A Service
// named like a ServiceEntry host keeps its ClusterIP; a ServiceEntry host with
// no Service is answered by the plugin, and takes over once the Service is
// deleted.
func TestKubernetesNamesWin(t *testing.T) {
	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	createNamespace(t, c, "apps")
	kube, err := kubernetes.NewForConfig(c.restConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db, err := kube.CoreV1().Services("apps").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tcp", Port: 5432}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ses := c.istio(t).NetworkingV1().ServiceEntries("apps")
	for _, se := range []struct{ name, host, addr string }{
		{"squat", "db.apps.svc.cluster.local", "192.0.2.40"},
		{"legacy", "legacy.apps.svc.cluster.local", "192.0.2.41"},
	} {
		if _, err := ses.Create(ctx, serviceEntry("apps", se.name, []string{se.host}, se.addr), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	kubeconfig := c.kubeconfig(t, adminToken)
	dnsPort, readyPort := freePort(t), freePort(t)
	corefile := fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    serviceentry {
        kubeconfig %s
        fallthrough
        clients mesh
    }
    kubernetes cluster.local {
        kubeconfig %s
    }
    ready 127.0.0.1:%d
}
`, dnsPort, kubeconfig, kubeconfig, readyPort)
	server := runCorefile(t, corefile, dnsPort, readyPort)
	waitFor(t, 30*time.Second, "CoreDNS ready", server.isReady)

	server.waitAnswer(t, 5*time.Second, "db.apps.svc.cluster.local", dns.TypeA, "NOERROR "+db.Spec.ClusterIP)
	server.waitAnswer(t, 5*time.Second, "legacy.apps.svc.cluster.local", dns.TypeA, "NOERROR 192.0.2.41")
	server.waitAnswer(t, 5*time.Second, "legacy.apps.svc.cluster.local", dns.TypeAAAA, "NOERROR")
	server.waitAnswer(t, 5*time.Second, "nope.apps.svc.cluster.local", dns.TypeA, "NXDOMAIN")

	if err := kube.CoreV1().Services("apps").Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	server.waitAnswer(t, 10*time.Second, "db.apps.svc.cluster.local", dns.TypeA, "NOERROR 192.0.2.40")
}
