package serviceentry

import (
	"bytes"
	"math"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/podindex"
	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/coredns/coredns/plugin/whoami"
	"github.com/miekg/dns"

	_ "github.com/coredns/coredns/plugin/hosts"
)

// TestStackLikeHosts: CoreDNS serves every query on a fresh goroutine whose
// stack starts small, and a chain that needs more than the server's own
// unpacking and sending did makes the runtime copy the stack into a larger
// one on every query (BENCHMARKS.md section 18 has what it cost). The
// plugin's answers, positive and negative, must end on a stack no larger than
// the hosts plugin's answer does; names that are not ours, no larger than
// whoami's alone.
func TestStackLikeHosts(t *testing.T) {
	// The runtime starts goroutines on the average stack it has seen; the
	// sizes are compared from the smallest start, which only a new process
	// can be given.
	if !strings.Contains(os.Getenv("GODEBUG"), fixedStackStart) {
		out, err := rerun(t, "GODEBUG="+fixedStackStart)
		t.Logf("%s", out)
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	st := newStore(false)
	st.ReplaceAll(benchEntries(1_000), nil)
	st.MarkSynced()
	// As deploy/in-cluster serves: pods read (the client, at the address
	// heldConn reads from, is an ambient pod), "exportto client" with an
	// overlay for the client's namespace.
	inCluster := newStore(false)
	entries, _ := exportToBench()
	inCluster.ReplaceAll(entries, nil)
	inCluster.MarkSynced()
	inCluster.clients = podindex.New()
	inCluster.clients.Set("ambient", podClaim(t, "ambient-enabled.yaml", heldPeer.IP.String()))
	inCluster.clients.MarkSynced()
	withPlugin := func(through bool) []plugin.Plugin {
		return []plugin.Plugin{func(next plugin.Handler) plugin.Handler {
			se := &ServiceEntry{Zones: []string{"."}, TTL: 30, SearchDomains: []string{"cluster.local."}, Next: next}
			if through {
				se.Fall = fall.Root
			}
			return se.attach(st)
		}}
	}
	byPod := []plugin.Plugin{func(next plugin.Handler) plugin.Handler {
		return (&ServiceEntry{Zones: []string{"."}, TTL: 30, Fall: fall.Root, SearchDomains: []string{"cluster.local."},
			clients: clientsByPod, Next: next}).attach(inCluster)
	}}
	hosts := hostsChain(t, "hosts /dev/null internal. {\n240.240.0.42 svc-42.ns-42.internal\nno_reverse\n}")
	nxdomain := []plugin.Plugin{func(plugin.Handler) plugin.Handler { return plugin.HandlerFunc(nxdomainChain) }}
	whoamiOnly := []plugin.Plugin{func(plugin.Handler) plugin.Handler { return whoami.Whoami{} }}
	q := func(name string, qtype uint16) *dns.Msg { return new(dns.Msg).SetQuestion(name, qtype) }

	hostsHit, reply := stackAfter(t, hosts, q("svc-42.ns-42.internal.", dns.TypeA))
	if len(reply.Answer) != 1 {
		t.Fatalf("hosts answered %v", reply)
	}
	for _, c := range []struct {
		name    string
		chain   []plugin.Plugin
		query   *dns.Msg
		rcode   int
		answers int
	}{
		{"hit-A", withPlugin(false), q("svc-42.ns-42.internal.", dns.TypeA), dns.RcodeSuccess, 1},
		{"hit-AAAA", withPlugin(false), q("svc-42.ns-42.internal.", dns.TypeAAAA), dns.RcodeSuccess, 1},
		{"nodata", withPlugin(false), q("svc-43.ns-43.internal.", dns.TypeAAAA), dns.RcodeSuccess, 0},
		{"nxdomain", withPlugin(false), q("absent.ns-42.internal.", dns.TypeA), dns.RcodeNameError, 0},
		{"ptr", withPlugin(false), q("42.0.240.240.in-addr.arpa.", dns.TypePTR), dns.RcodeSuccess, 1},
		{"fallthrough-hit-A", withPlugin(true), q("svc-42.ns-42.internal.", dns.TypeA), dns.RcodeSuccess, 1},
		{"expansion-A", append(withPlugin(true), nxdomain...), q("svc-42.ns-42.internal.team.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess, 2},
		{"by-pod-hit-A", byPod, q("svc-42.ns-42.internal.", dns.TypeA), dns.RcodeSuccess, 1},
		{"by-pod-expansion-A", append(byPod, nxdomain...), q("svc-42.ns-42.internal.team.svc.cluster.local.", dns.TypeA), dns.RcodeSuccess, 2},
	} {
		got, reply := stackAfter(t, c.chain, c.query)
		if reply.Rcode != c.rcode || len(reply.Answer) != c.answers {
			t.Errorf("%s: got %s with %d answers, want %s with %d", c.name, dns.RcodeToString[reply.Rcode], len(reply.Answer), dns.RcodeToString[c.rcode], c.answers)
		}
		if got > hostsHit {
			t.Errorf("%s: a goroutine ends on a stack of %d bytes, hosts' hit on %d", c.name, got, hostsHit)
		}
	}
	notOurs := passThroughQueries[0]
	alone, _ := stackAfter(t, whoamiOnly, notOurs)
	for name, chain := range map[string][]plugin.Plugin{"fallthrough": withPlugin(true), "by-pod": byPod} {
		if got, _ := stackAfter(t, append(chain, whoamiOnly...), notOurs); got > alone {
			t.Errorf("%s: a name not ours: a goroutine ends on a stack of %d bytes, with whoami alone on %d", name, got, alone)
		}
	}
}

const fixedStackStart = "adaptivestackstart=0"

// rerun runs the test t in a new process of this test binary with env added,
// and returns its output.
func rerun(t *testing.T, env ...string) ([]byte, error) {
	cmd := exec.Command(os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	return cmd.CombinedOutput()
}

// hostsChain is the chain of CoreDNS's hosts plugin set up from block, as
// its Corefile stanza would (inline entries only: read when set up).
func hostsChain(t testing.TB, block string) []plugin.Plugin {
	t.Helper()
	action, err := caddy.DirectiveAction("dns", "hosts")
	if err != nil {
		t.Fatal(err)
	}
	c := caddy.NewTestController("dns", block)
	if err := action(c); err != nil {
		t.Fatalf("hosts %q: %v", block, err)
	}
	return dnsserver.GetConfig(c).Plugin
}

// stackAfter returns the stack size, in bytes, of the goroutines on which
// CoreDNS's server serves query through chain, n times over a packet
// connection whose writes are held until all n replies are written: the
// growth of the process's stack memory divided by n, to the nearest power of
// two (stack sizes are powers of two; the stacks the first ones outgrew and
// the next ones reuse make the rest), and the last reply. The goroutines run the
// server's own path (read, unpack, ServeDNS, pack, write); the connection is
// not a UDP socket only so that they can be held at the write.
func stackAfter(t testing.TB, chain []plugin.Plugin, query *dns.Msg) (int, *dns.Msg) {
	t.Helper()
	s, err := dnsserver.NewServer("dns://127.0.0.1:0", []*dnsserver.Config{{Zone: ".", Plugin: chain}})
	if err != nil {
		t.Fatal(err)
	}
	packed, err := query.Pack()
	if err != nil {
		t.Fatal(err)
	}
	const n = 512
	conn := &heldConn{packet: packed, unread: n, release: make(chan struct{}), closed: make(chan struct{})}
	conn.written.Add(n)
	allWritten := make(chan struct{})
	go func() { conn.written.Wait(); close(allWritten) }()
	// No collection while they run: it would shrink the held goroutines'
	// stacks.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	served := make(chan error, 1)
	go func() { served <- s.ServePacket(conn) }()
	select {
	case <-allWritten:
	case <-time.After(time.Minute):
		t.Fatalf("%s: not every query was answered", query.Question[0].Name)
	}
	runtime.ReadMemStats(&after)
	close(conn.release)
	if err := s.Stop(); err != nil {
		t.Error(err)
	}
	<-served
	reply := new(dns.Msg)
	if err := reply.Unpack(conn.reply); err != nil {
		t.Fatalf("%s: %v", query.Question[0].Name, err)
	}
	per := (float64(after.StackInuse) - float64(before.StackInuse)) / n
	if per <= 0 {
		t.Fatalf("%s: the process's stack memory did not grow (%d -> %d bytes)", query.Question[0].Name, before.StackInuse, after.StackInuse)
	}
	return 1 << int(math.Round(math.Log2(per))), reply
}

// heldConn is a packet connection that reads packet unread times, then
// nothing until closed, and holds every write until release is closed.
type heldConn struct {
	packet  []byte
	written sync.WaitGroup
	release chan struct{}

	mu        sync.Mutex
	unread    int
	reply     []byte // the last one written
	closed    chan struct{}
	closeOnce sync.Once
}

var heldPeer = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}

func (c *heldConn) ReadFrom(b []byte) (int, net.Addr, error) {
	c.mu.Lock()
	more := c.unread > 0
	c.unread--
	c.mu.Unlock()
	if !more {
		<-c.closed
		return 0, nil, net.ErrClosed
	}
	return copy(b, c.packet), heldPeer, nil
}

func (c *heldConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	c.mu.Lock()
	c.reply = bytes.Clone(b)
	c.mu.Unlock()
	c.written.Done()
	<-c.release
	return len(b), nil
}

func (c *heldConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

func (c *heldConn) LocalAddr() net.Addr         { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (c *heldConn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline with a time past is how the server's Shutdown ends its
// read loop.
func (c *heldConn) SetReadDeadline(t time.Time) error {
	if t.Before(time.Now()) {
		return c.Close()
	}
	return nil
}
func (c *heldConn) SetWriteDeadline(time.Time) error { return nil }
