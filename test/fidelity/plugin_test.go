package fidelity

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// corednsBinary is the project's cmd/coredns that run.sh builds from the
// plugin's own module, as test/integration and scripts/image build it, so
// that they share Go's build cache.
func corednsBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("SERVICEENTRY_COREDNS")
	if bin == "" {
		t.Fatal("SERVICEENTRY_COREDNS is not set: run the test through test/fidelity/run.sh, which builds cmd/coredns")
	}
	return bin
}

// plugin is the built CoreDNS serving one corpus from manifest files.
type plugin struct {
	addr string
}

// startPlugin runs the binary with "serviceentry { manifests DIR; autoallocate
// MODE; searchpath }" on a loopback server for the root zone, and waits until
// it is ready.
func startPlugin(t *testing.T, manifests, mode string) *plugin {
	t.Helper()
	bin := corednsBinary(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "corpus.yaml"), []byte(manifests), 0o644); err != nil {
		t.Fatal(err)
	}
	var err error
	for range 5 { // the ports are free when drawn; another process may take them first
		var p *plugin
		if p, err = runPlugin(t, bin, dir, mode); err == nil {
			return p
		}
	}
	t.Fatal(err)
	return nil
}

func runPlugin(t *testing.T, bin, dir, mode string) (*plugin, error) {
	dnsPort, readyPort := freePort(t), freePort(t)
	// searchpath answers a pod's search-path expansions; it asks the rest of
	// the chain first, where the file plugin plays an empty cluster.local.
	zonefile := filepath.Join(t.TempDir(), "cluster.local.db")
	if err := os.WriteFile(zonefile, []byte("cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	corefile := fmt.Sprintf(".:%d {\n    bind 127.0.0.1\n    serviceentry {\n        manifests %s\n        autoallocate %s\n        searchpath\n    }\n    file %s cluster.local\n    ready 127.0.0.1:%d\n}\n",
		dnsPort, dir, mode, zonefile, readyPort)
	path := filepath.Join(t.TempDir(), "Corefile")
	if err := os.WriteFile(path, []byte(corefile), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-conf", path)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/ready", readyPort))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-done:
			return nil, fmt.Errorf("coredns exited:\n%s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("coredns not ready after 30s:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &plugin{addr: net.JoinHostPort("127.0.0.1", fmt.Sprint(dnsPort))}, nil
}

func (p *plugin) ask(q question) (*dns.Msg, error) {
	return exchange(p.addr, q.name, q.qtype)
}
