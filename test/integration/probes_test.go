package integration

import (
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// kubeadmProbes is testdata/kubeadm-probes.yaml: the probes, the ports they
// name and the grace period of the pinned kubeadm's CoreDNS Deployment
// (test/servers keeps it equal to kubeadm's own).
type kubeadmProbes struct {
	Ports                         []corev1.ContainerPort `json:"ports"`
	LivenessProbe                 *corev1.Probe          `json:"livenessProbe"`
	ReadinessProbe                *corev1.Probe          `json:"readinessProbe"`
	TerminationGracePeriodSeconds *int64                 `json:"terminationGracePeriodSeconds"`
}

// port is the container port a probe names, by name or number.
func (k kubeadmProbes) port(t *testing.T, p *corev1.Probe) int32 {
	t.Helper()
	if p.HTTPGet.Port.StrVal == "" {
		return p.HTTPGet.Port.IntVal
	}
	for _, port := range k.Ports {
		if port.Name == p.HTTPGet.Port.StrVal {
			return port.ContainerPort
		}
	}
	t.Fatalf("the probe names port %q, which the container does not have", p.HTTPGet.Port.StrVal)
	return 0
}

// TestKubeadmProbes: kubeadm's own probes pass against the binary running
// the shipped Corefile: liveness (/health) on the port the health plugin
// listens on, readiness (/ready) once the plugin has read its entries. At
// SIGTERM, through the Corefile's lameduck, the server keeps answering the
// entry's host from the table it had while /health stays up, and it exits
// within the pod's grace period.
func TestKubeadmProbes(t *testing.T) {
	var probes kubeadmProbes
	raw, err := os.ReadFile("testdata/kubeadm-probes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(raw, &probes); err != nil {
		t.Fatal(err)
	}
	corefile := inClusterCorefile(t)
	// The probes name the ports where the Corefile's plugins listen: health
	// and ready without an address listen on CoreDNS's defaults.
	for _, c := range []struct {
		probe     *corev1.Probe
		directive string
		port      int32
	}{{probes.LivenessProbe, "health {", 8080}, {probes.ReadinessProbe, "    ready\n", 8181}} {
		if got := probes.port(t, c.probe); got != c.port || !strings.Contains(corefile, c.directive) {
			t.Fatalf("kubeadm probes %s on port %d; the shipped Corefile's %q listens on %d", c.probe.HTTPGet.Path, got, c.directive, c.port)
		}
	}
	lameduck := regexp.MustCompile(`lameduck (\S+)`).FindStringSubmatch(corefile)
	if lameduck == nil {
		t.Fatal("the shipped Corefile has no lameduck")
	}
	duck, err := time.ParseDuration(lameduck[1])
	if err != nil {
		t.Fatal(err)
	}

	c := startCluster(t, "AlwaysAllow")
	c.installCRDs(t, istioCRDs(t))
	createEntry(t, c)
	kubeconfig := c.kubeconfig(t, adminToken)
	server := runInCluster(t, corefile, kubeconfig, kubeconfig, upstream(t, upstreamRecords))
	get := func(addr string, p *corev1.Probe) int {
		timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second // Kubernetes' default is 1 s
		resp, err := (&http.Client{Timeout: timeout}).Get(fmt.Sprintf("%s://%s%s", strings.ToLower(string(p.HTTPGet.Scheme)), addr, p.HTTPGet.Path))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// The kubelet's first liveness probe comes initialDelaySeconds after
	// the start: the binary must be live by then.
	waitFor(t, time.Duration(probes.LivenessProbe.InitialDelaySeconds)*time.Second, "liveness", func() bool {
		return get(server.healthAddr, probes.LivenessProbe) == http.StatusOK
	})
	waitFor(t, 30*time.Second, "readiness", func() bool { return get(server.readyAddr, probes.ReadinessProbe) == http.StatusOK })
	server.waitAnswer(t, 5*time.Second, entryHost, dns.TypeA, entryAnswer)

	if err := server.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	// os.Process's Wait, not exec.Cmd's: the process's cleanup calls the
	// latter, which must be called once.
	exited := make(chan error, 1)
	go func() {
		_, err := server.cmd.Process.Wait()
		exited <- err
	}()
	// Through the lameduck (but the last half second, which the shutdown
	// itself may take) the server answers as before.
	for time.Since(stopped) < duck-500*time.Millisecond {
		if got := server.answer(t, entryHost, dns.TypeA, "udp"); got != entryAnswer {
			t.Fatalf("%v into the lameduck: %s answered %q, want %q", time.Since(stopped).Round(time.Millisecond), entryHost, got, entryAnswer)
		}
		if code := get(server.healthAddr, probes.LivenessProbe); code != http.StatusOK {
			t.Fatalf("%v into the lameduck: /health answered %d", time.Since(stopped).Round(time.Millisecond), code)
		}
		time.Sleep(250 * time.Millisecond)
	}
	grace := 30 * time.Second // Kubernetes' default terminationGracePeriodSeconds
	if probes.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*probes.TerminationGracePeriodSeconds) * time.Second
	}
	select {
	case <-exited:
		t.Logf("exited %v after SIGTERM (lameduck %v, grace %v)", time.Since(stopped).Round(time.Millisecond), duck, grace)
	case <-time.After(grace - time.Since(stopped)):
		t.Fatalf("still running %v after SIGTERM: the kubelet would kill it", grace)
	}
}
