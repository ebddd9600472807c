// Package integration drives the built CoreDNS binary against a real
// kube-apiserver and etcd with Istio's real CRD, over real DNS.
package integration

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// corednsBinary builds cmd/coredns once per test run.
func corednsBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "serviceentry-coredns-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "coredns")
		// Built as scripts/image builds it, so the two share Go's build cache.
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s", "-o", binary, "../../cmd/coredns")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/coredns: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// coredns is a running CoreDNS with its DNS and ready ports.
type coredns struct {
	*process
	corefile  string // its path: rewrite it and send SIGUSR1 to reload
	dnsAddr   string
	readyAddr string
}

// startCoreDNS runs the binary with a Corefile whose serviceentry block holds
// the given lines; names outside the zone get REFUSED-free NXDOMAIN from
// nothing else, so every answer seen comes from our plugin.
func startCoreDNS(t testing.TB, zone string, pluginLines ...string) *coredns {
	t.Helper()
	return startCoreDNSWith(t, nil, zone, pluginLines...)
}

// startCoreDNSWith is startCoreDNS with more lines in the server block.
func startCoreDNSWith(t testing.TB, serverLines []string, zone string, pluginLines ...string) *coredns {
	t.Helper()
	return startCoreDNSEnv(t, nil, serverLines, zone, pluginLines...)
}

// startCoreDNSEnv is startCoreDNSWith with variables added to CoreDNS's
// environment.
func startCoreDNSEnv(t testing.TB, env, serverLines []string, zone string, pluginLines ...string) *coredns {
	t.Helper()
	return startCoreDNSBinary(t, corednsBinary(t), env, serverLines, zone, pluginLines...)
}

// startCoreDNSBinary is startCoreDNSEnv with another CoreDNS binary: one
// built from another commit, that a benchmark compares with this tree's.
func startCoreDNSBinary(t testing.TB, binary string, env, serverLines []string, zone string, pluginLines ...string) *coredns {
	t.Helper()
	// The queries come from 127.0.0.1 (or another loopback address), which no
	// pod with Istio's marks holds: unless the test says how to class clients,
	// every client gets mesh answers, so that the tests of the sources see
	// every address.
	if !slices.ContainsFunc(pluginLines, func(l string) bool { return strings.HasPrefix(l, "clients ") }) {
		pluginLines = append(pluginLines, "clients mesh")
	}
	dnsPort, readyPort := freePort(t), freePort(t)
	corefile := fmt.Sprintf(".:%d {\n    bind 127.0.0.1\n    serviceentry %s {\n        %s\n    }\n    ready 127.0.0.1:%d\n    %s\n}\n",
		dnsPort, zone, strings.Join(pluginLines, "\n        "), readyPort, strings.Join(serverLines, "\n    "))
	return runCorefileBinary(t, binary, env, corefile, dnsPort, readyPort)
}

// runCorefile runs the binary with a whole Corefile that serves DNS on
// 127.0.0.1:dnsPort and ready on 127.0.0.1:readyPort.
func runCorefile(t testing.TB, corefile string, dnsPort, readyPort int) *coredns {
	t.Helper()
	return runCorefileEnv(t, nil, corefile, dnsPort, readyPort)
}

// runCorefileEnv is runCorefile with variables added to CoreDNS's environment.
func runCorefileEnv(t testing.TB, env []string, corefile string, dnsPort, readyPort int) *coredns {
	t.Helper()
	return runCorefileBinary(t, corednsBinary(t), env, corefile, dnsPort, readyPort)
}

// runCorefileBinary is runCorefileEnv with the given CoreDNS binary.
func runCorefileBinary(t testing.TB, binary string, env []string, corefile string, dnsPort, readyPort int) *coredns {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Corefile")
	if err := os.WriteFile(path, []byte(corefile), 0o644); err != nil {
		t.Fatal(err)
	}
	c := &coredns{
		process:   startProcessEnv(t, env, binary, "-conf", path),
		corefile:  path,
		dnsAddr:   fmt.Sprintf("127.0.0.1:%d", dnsPort),
		readyAddr: fmt.Sprintf("127.0.0.1:%d", readyPort),
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("CoreDNS log (Corefile:\n%s):\n%s", corefile, c.output())
		}
	})
	return c
}

// waitListening waits until the DNS port answers anything at all.
func (c *coredns) waitListening(t testing.TB, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, "CoreDNS listening", func() bool {
		_, err := c.exchange("probe.invalid.", dns.TypeA, "udp")
		return err == nil
	})
}

// waitLog waits until CoreDNS's log contains text.
func (c *coredns) waitLog(t testing.TB, timeout time.Duration, text string) {
	t.Helper()
	waitFor(t, timeout, "log line "+strconv.Quote(text), func() bool { return strings.Contains(c.output(), text) })
}

func (c *coredns) isReady() bool {
	resp, err := http.Get("http://" + c.readyAddr + "/ready")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (c *coredns) exchange(name string, qtype uint16, network string) (*dns.Msg, error) {
	return c.exchangeFrom(name, qtype, network, "")
}

// exchangeFrom asks from a given loopback source address ("" for any), as a
// pod with that IP would.
func (c *coredns) exchangeFrom(name string, qtype uint16, network, from string) (*dns.Msg, error) {
	client := &dns.Client{Net: network, Timeout: 2 * time.Second}
	if from != "" {
		client.Dialer = &net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.UDPAddr{IP: net.ParseIP(from)}}
		if network == "tcp" {
			client.Dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
		}
	}
	m := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := client.Exchange(m, c.dnsAddr)
	return r, err
}

// answer is "RCODE ip ip ..." (IPs sorted), for compact comparisons.
func (c *coredns) answer(t testing.TB, name string, qtype uint16, network string) string {
	t.Helper()
	return c.answerFrom(t, name, qtype, network, "")
}

// answerFrom is answer asked from a given source address.
func (c *coredns) answerFrom(t testing.TB, name string, qtype uint16, network, from string) string {
	t.Helper()
	r, err := c.exchangeFrom(name, qtype, network, from)
	if err != nil {
		return "error: " + err.Error()
	}
	var ips []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.A:
			ips = append(ips, v.A.String())
		case *dns.AAAA:
			ips = append(ips, v.AAAA.String())
		}
	}
	sort.Strings(ips)
	return strings.TrimSpace(dns.RcodeToString[r.Rcode] + " " + strings.Join(ips, " "))
}

// waitAnswer waits until name answers want over both UDP and TCP.
func (c *coredns) waitAnswer(t testing.TB, timeout time.Duration, name string, qtype uint16, want string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		udp, tcp := c.answer(t, name, qtype, "udp"), c.answer(t, name, qtype, "tcp")
		if udp == want && tcp == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s: got udp %q tcp %q, want %q", name, dns.TypeToString[qtype], udp, tcp, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lockedWriter lets a process write its log while a test reads it.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}
