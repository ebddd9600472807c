package serviceentry

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"weak"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/file"
	_ "github.com/coredns/coredns/plugin/root"
	"github.com/coredns/coredns/plugin/test"
	_ "github.com/coredns/coredns/plugin/whoami"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

// The lifecycle tests run real caddy instances in process, so the directive
// must be known to the dns server type (cmd/coredns inserts it the same way).
func init() {
	if !slices.Contains(dnsserver.Directives, pluginName) {
		i := slices.Index(dnsserver.Directives, "cache")
		dnsserver.Directives = slices.Insert(dnsserver.Directives, i, pluginName)
	}
	caddy.RegisterPlugin(lateUDPName, caddy.Plugin{ServerType: "dns", Action: setupLateUDP})
	dnsserver.Directives = slices.Insert(dnsserver.Directives, slices.Index(dnsserver.Directives, pluginName), lateUDPName)
}

// lateUDP is a test directive that holds its server block's UDP server back
// until the test lets it go, and counts the queries its chain is given:
// CoreDNS calls a block's UDP decorator when the server's serving goroutine
// begins, before the server can be stopped.
const lateUDPName = "late_udp"

type lateUDP struct {
	Next    plugin.Handler
	release chan struct{}
	served  atomic.Int64
}

var lateUDPs sync.Map // the directive's argument → *lateUDP, stored by its test

func setupLateUDP(c *caddy.Controller) error {
	c.Next()
	if !c.NextArg() {
		return c.ArgErr()
	}
	l, ok := lateUDPs.Load(c.Val())
	if !ok {
		return c.Errf("no test holds %s", c.Val())
	}
	late := l.(*lateUDP)
	cfg := dnsserver.GetConfig(c)
	cfg.UDPDecorateWriterFunc = func(*dnsserver.Server) dns.DecorateWriter {
		<-late.release
		return nil
	}
	cfg.AddPlugin(func(next plugin.Handler) plugin.Handler {
		late.Next = next
		return late
	})
	return nil
}

func (l *lateUDP) Name() string { return lateUDPName }

func (l *lateUDP) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	l.served.Add(1)
	return plugin.NextOrFailure(l.Name(), l.Next, ctx, w, r)
}

// verifyNoLeaks fails t if any goroutine is left but the DNS servers' own,
// which CoreDNS stops asynchronously after a stop or reload has returned.
func verifyNoLeaks(t *testing.T, opts ...goleak.Option) {
	t.Helper()
	goleak.VerifyNone(t, append(opts,
		goleak.IgnoreAnyFunction("github.com/miekg/dns.(*Server).serveTCP"),
		goleak.IgnoreAnyFunction("github.com/miekg/dns.(*Server).serveUDP"),
		goleak.IgnoreAnyFunction("github.com/coredns/caddy.startServers.func2"),
		goleak.IgnoreAnyFunction("github.com/coredns/caddy.startServers.func3"))...)
}

// corefileInput is a Corefile serving zone internal. on 127.0.0.1:port with
// the given serviceentry block body and any extra server blocks.
func corefileInput(port int, body string, extraBlocks ...string) caddy.Input {
	text := fmt.Sprintf("internal.:%d {\n bind 127.0.0.1\n serviceentry {\n %s\n }\n}\n", port, body)
	for _, b := range extraBlocks {
		text += b + "\n"
	}
	return caddy.CaddyfileInput{Contents: []byte(text), Filepath: "Corefile", ServerTypeName: "dns"}
}

// startCaddy starts an instance and fails the test if it does not start.
func startCaddy(t *testing.T, input caddy.Input) *caddy.Instance {
	t.Helper()
	inst, err := caddy.Start(input)
	if err != nil {
		t.Fatalf("starting CoreDNS: %v", err)
	}
	return inst
}

// stopCaddy stops an instance as CoreDNS does on SIGTERM.
func stopCaddy(t *testing.T, inst *caddy.Instance) {
	t.Helper()
	if err := inst.Stop(); err != nil {
		t.Errorf("stopping: %v", err)
	}
	for _, err := range inst.ShutdownCallbacks() {
		t.Errorf("shutdown callback: %v", err)
	}
}

// freeUDPPort returns a port free for both UDP and TCP on 127.0.0.1, as a
// CoreDNS server block listens on both.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		tcp, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := tcp.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		tcp.Close()
		if err == nil {
			udp.Close()
			return port
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return 0
}

func askA(t *testing.T, port int, name string) string {
	t.Helper()
	m := new(dns.Msg).SetQuestion(name, dns.TypeA)
	r, err := dns.Exchange(m, fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return "error: " + err.Error()
	}
	if len(r.Answer) == 0 {
		return dns.RcodeToString[r.Rcode]
	}
	return r.Answer[0].(*dns.A).A.String()
}

// sharedSources returns the running sources, for identity checks.
func sharedSources() []*sharedSource {
	running.mu.Lock()
	defer running.mu.Unlock()
	var out []*sharedSource
	for _, s := range running.byKey {
		out = append(out, s)
	}
	return out
}

func manifestDir(t *testing.T, host, addr string) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "se.yaml"), seYAML("a", host, addr))
	return dir
}

// TestReloadKeepsSource: a reload that changes only handler options (here the
// ttl) takes over the running source and its table; the old instance's
// shutdown does not stop it; the last shutdown does, leaving no goroutine.
func TestReloadKeepsSource(t *testing.T) {
	defer verifyNoLeaks(t, goleak.IgnoreCurrent())
	dir := manifestDir(t, "a.internal", "192.0.2.1")
	port := freeUDPPort(t)

	inst := startCaddy(t, corefileInput(port, "manifests "+dir))
	before := sharedSources()
	if len(before) != 1 {
		t.Fatalf("%d sources running, want 1", len(before))
	}
	reloaded, err := inst.Restart(corefileInput(port, "manifests "+dir+"\n ttl 10"))
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	after := sharedSources()
	if len(after) != 1 || after[0] != before[0] {
		t.Fatalf("reload with the same source configuration started a new source: %d running", len(after))
	}
	if got := askA(t, port, "a.internal."); got != "192.0.2.1" {
		t.Fatalf("after the reload: %s", got)
	}
	writeFile(t, filepath.Join(dir, "se.yaml"), seYAML("a", "a.internal", "192.0.2.2"))
	eventually(t, "a change read by the kept source", func() bool { return askA(t, port, "a.internal.") == "192.0.2.2" })

	stopCaddy(t, reloaded)
	if n := len(sharedSources()); n != 0 {
		t.Fatalf("%d sources left after the last shutdown", n)
	}
}

// TestReloadChangedSource: a reload with another source configuration starts
// a new source; the old one stops once the new instance is in place.
func TestReloadChangedSource(t *testing.T) {
	defer verifyNoLeaks(t, goleak.IgnoreCurrent())
	oldDir := manifestDir(t, "a.internal", "192.0.2.1")
	newDir := manifestDir(t, "a.internal", "192.0.2.9")
	port := freeUDPPort(t)

	inst := startCaddy(t, corefileInput(port, "manifests "+oldDir))
	old := sharedSources()[0]
	reloaded, err := inst.Restart(corefileInput(port, "manifests "+newDir))
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	now := sharedSources()
	if len(now) != 1 || now[0] == old {
		t.Fatalf("after a reload with a new configuration: %d sources, old kept: %v", len(now), len(now) > 0 && now[0] == old)
	}
	if got := askA(t, port, "a.internal."); got != "192.0.2.9" {
		t.Fatalf("after the reload: %s", got)
	}
	oldTable := weak.Make(old.store.table())
	old = nil
	for i := 0; i < 50 && oldTable.Value() != nil; i++ {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	if oldTable.Value() != nil {
		t.Error("the replaced source's table is still reachable")
	}
	stopCaddy(t, reloaded)
}

// TestFailedReloadReleases: a reload that fails after our OnStartup ran (a
// later server block cannot bind its port) never runs the new instance's
// shutdown hooks; the source it started is stopped all the same, and the
// running instance keeps its own.
func TestFailedReloadReleases(t *testing.T) {
	defer verifyNoLeaks(t, goleak.IgnoreCurrent())
	dir := manifestDir(t, "a.internal", "192.0.2.1")
	otherDir := manifestDir(t, "a.internal", "192.0.2.9")
	port := freeUDPPort(t)
	taken, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := fmt.Sprintf("other.:%d {\n bind 127.0.0.1\n whoami\n}", taken.LocalAddr().(*net.UDPAddr).Port)

	inst := startCaddy(t, corefileInput(port, "manifests "+dir))
	kept := sharedSources()[0]
	same, err := inst.Restart(corefileInput(port, "manifests "+otherDir, busy))
	if err == nil {
		stopCaddy(t, same)
		t.Fatal("the reload binding a taken port succeeded")
	}
	if now := sharedSources(); len(now) != 1 || now[0] != kept {
		t.Fatalf("after a failed reload: %d sources running, the running instance's kept: %v", len(now), len(now) > 0 && now[0] == kept)
	}
	if got := askA(t, port, "a.internal."); got != "192.0.2.1" {
		t.Fatalf("after the failed reload: %s", got)
	}
	stopCaddy(t, same) // Restart returns the running instance on failure
	if n := len(sharedSources()); n != 0 {
		t.Fatalf("%d sources left after the last shutdown", n)
	}
}

// waitServing waits until the servers on port answer over UDP and TCP.
// CoreDNS stops only the servers whose serving goroutines have begun: an
// instance replaced sooner goes on serving beside its successor.
func waitServing(t *testing.T, port int) {
	t.Helper()
	eventually(t, "serving over UDP and TCP", func() bool {
		for _, network := range []string{"udp", "tcp"} {
			c := &dns.Client{Net: network, Timeout: time.Second}
			if _, _, err := c.Exchange(new(dns.Msg).SetQuestion("probe.internal.", dns.TypeA), fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
				return false
			}
		}
		return true
	})
}

// TestReplacedBeforeServing: CoreDNS stops only the servers whose serving
// goroutines have begun, so a server whose instance a reload replaced before
// it began reads its socket beside its successor's from then on. What that
// stale server hands the plugin is answered by the live instance's block: every
// answer is the live configuration's.
func TestReplacedBeforeServing(t *testing.T) {
	defer verifyNoLeaks(t, goleak.IgnoreCurrent())
	oldDir := manifestDir(t, "a.internal", "192.0.2.1")
	newDir := manifestDir(t, "a.internal", "192.0.2.9")
	port := freeUDPPort(t)
	late := &lateUDP{release: make(chan struct{})}
	key := t.Name()
	lateUDPs.Store(key, late)
	t.Cleanup(func() { lateUDPs.Delete(key) })
	release := sync.OnceFunc(func() { close(late.release) })
	defer release()

	live := startCaddy(t, corefileInput(port, "manifests "+oldDir))
	defer func() { stopCaddy(t, live) }()
	waitServing(t, port)
	second, err := live.Restart(caddy.CaddyfileInput{ServerTypeName: "dns", Filepath: "Corefile", Contents: []byte(fmt.Sprintf(
		"internal.:%d {\n bind 127.0.0.1\n %s %s\n serviceentry {\n manifests %s\n }\n}\n", port, lateUDPName, key, oldDir))})
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	live = second
	third, err := live.Restart(corefileInput(port, "manifests "+newDir))
	if err != nil {
		t.Fatalf("second reload: %v", err)
	}
	live = third
	release() // the replaced instance's UDP server begins now

	// The stale server and the live one read the same socket: ask until the
	// stale one has had a share, and check every answer.
	asked := 0
	eventuallyWithin(t, 30*time.Second, "the replaced instance's UDP server taking queries", func() bool {
		for range 10 {
			asked++
			if got := askA(t, port, "a.internal."); got != "192.0.2.9" {
				t.Fatalf("answer %d: %s, want the live configuration's 192.0.2.9 (the stale server had %d)", asked, got, late.served.Load())
			}
		}
		return late.served.Load() >= 5
	})
}

// TestSuccessor: a replaced block's queries go to the serving instance's
// block with the same servers, zones and view: the oldest registered, not one
// still starting, and never another view's.
func TestSuccessor(t *testing.T) {
	servers := []string{"dns://127.0.0.1:53"}
	block := func(inst *instance, view string) *user {
		return &user{inst: inst, handler: new(ServiceEntry), servers: servers, zones: ".", view: view}
	}
	replaced, serving, starting := new(instance), new(instance), new(instance)
	servingA, servingB, startingA := block(serving, "a"), block(serving, "b"), block(starting, "a")
	var r sourceRegistry
	r.setBlocksLocked([]*user{servingA, servingB, startingA})
	for _, c := range []struct {
		name string
		of   *user
		want *user
	}{
		{"view a goes to the serving instance's view a", block(replaced, "a"), servingA},
		{"view b goes to view b", block(replaced, "b"), servingB},
		{"another zone has none", &user{inst: replaced, servers: servers, zones: "internal.", view: "a"}, nil},
		{"other servers have none", &user{inst: replaced, servers: []string{"dns://127.0.0.1:1053"}, zones: ".", view: "a"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := r.successor(c.of)
			var want *ServiceEntry
			if c.want != nil {
				want = c.want.handler
			}
			if got != want {
				t.Errorf("successor is %p, want %p", got, want)
			}
		})
	}
}

// TestRetiredHandlersLetGo: a handler of an instance replaced by a reload
// holds no table once the reload is done. Where the new instance keeps its
// block, it lets go at once and answers a late packet as the live block does
// (here with the new ttl); where the block is gone, it keeps its store while
// the old servers may still answer a late packet, and lets go at the next
// reload, so that nothing CoreDNS keeps of an old instance holds a table.
func TestRetiredHandlersLetGo(t *testing.T) {
	defer verifyNoLeaks(t, goleak.IgnoreCurrent())
	dir := manifestDir(t, "a.internal", "192.0.2.1")
	port := freeUDPPort(t)
	handler := func() *ServiceEntry {
		running.mu.Lock()
		defer running.mu.Unlock()
		blocks := running.blocks()
		return blocks[len(blocks)-1].handler
	}
	first := startCaddy(t, corefileInput(port, "manifests "+dir))
	waitServing(t, port)
	kept := handler()

	second, err := first.Restart(corefileInput(port, "manifests "+dir+"\n ttl 10"))
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if kept.store.Load() != nil {
		t.Error("the replaced handler of a block the reload kept still holds its store")
	}
	checkCase(t, kept, test.Case{Qname: "a.internal.", Qtype: dns.TypeA, Answer: []dns.RR{test.A("a.internal. 10 IN A 192.0.2.1")}})
	waitServing(t, port)
	gone := handler()

	renamed := caddy.CaddyfileInput{ServerTypeName: "dns", Filepath: "Corefile", Contents: []byte(fmt.Sprintf(
		"internal.:%d {\n bind 127.0.0.1\n serviceentry a.internal. {\n manifests %s\n }\n}\n", port, dir))}
	third, err := second.Restart(renamed)
	if err != nil {
		t.Fatalf("second reload: %v", err)
	}
	if gone.store.Load() == nil {
		t.Error("the replaced handler of a block the reload dropped let go of its store during that reload")
	}
	waitServing(t, port)
	fourth, err := third.Restart(renamed)
	if err != nil {
		t.Fatalf("third reload: %v", err)
	}
	if gone.store.Load() != nil {
		t.Error("the replaced handler of a dropped block still holds its store after the next reload")
	}
	if got := askA(t, port, "a.internal."); got != "192.0.2.1" {
		t.Errorf("after the reloads: %s", got)
	}
	stopCaddy(t, fourth)
}

// TestManifestsFollowRoot: relative manifest paths are read from CoreDNS's
// root directive, as the hosts and file plugins do.
func TestManifestsFollowRoot(t *testing.T) {
	defer verifyNoLeaks(t, goleak.IgnoreCurrent())
	dir := manifestDir(t, "rooted.internal", "192.0.2.3")
	port := freeUDPPort(t)
	input := caddy.CaddyfileInput{ServerTypeName: "dns", Filepath: "Corefile", Contents: []byte(fmt.Sprintf(
		"internal.:%d {\n bind 127.0.0.1\n root %s\n serviceentry {\n manifests se.yaml\n }\n}\n", port, dir))}
	inst := startCaddy(t, input)
	defer stopCaddy(t, inst)
	if got := askA(t, port, "rooted.internal."); got != "192.0.2.3" {
		t.Fatalf("got %s", got)
	}
}

// gauge returns the value of an instance gauge (or counter) for server and
// zones, and whether such a series exists.
func gauge(t *testing.T, name, server, zones string) (float64, bool) {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["server"] == server && labels["zones"] == zones {
				if c := m.GetCounter(); c != nil {
					return c.GetValue(), true
				}
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

// TestInstanceGauges: the gauges and the skipped-items counter carry
// CoreDNS's server and zones labels,
// follow the instance across a reload without a duplicate series, and are gone
// once it stops.
func TestInstanceGauges(t *testing.T) {
	dir := manifestDir(t, "a.internal", "192.0.2.1")
	writeFile(t, filepath.Join(dir, "bad.yaml"), seYAML("bad", "bad_host!", "192.0.2.2"))
	port := freeUDPPort(t)
	server := fmt.Sprintf("dns://127.0.0.1:%d", port)

	inst := startCaddy(t, corefileInput(port, "manifests "+dir))
	for name, want := range map[string]float64{
		"coredns_serviceentry_synced": 1, "coredns_serviceentry_hosts": 1, "coredns_serviceentry_entries": 1,
		"coredns_serviceentry_skipped_items_total": 1, // bad_host!, with the source's instance labels
	} {
		if got, ok := gauge(t, name, server, "internal."); !ok || got != want {
			t.Errorf("%s = %v (present: %v), want %v", name, got, ok, want)
		}
	}
	reloaded, err := inst.Restart(corefileInput(port, "manifests "+dir+"\n ttl 5"))
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if got, ok := gauge(t, "coredns_serviceentry_hosts", server, "internal."); !ok || got != 1 {
		t.Errorf("after the reload: hosts = %v (present: %v)", got, ok)
	}
	stopCaddy(t, reloaded)
	if _, ok := gauge(t, "coredns_serviceentry_synced", server, "internal."); ok {
		t.Error("the stopped instance still reports coredns_serviceentry_synced")
	}
}

// TestClusterDomainReachesHandler: cluster_domain from the Corefile decides
// which ServiceEntry hosts defer to the rest of the chain (here the file
// plugin standing in for the kubernetes plugin).
func TestClusterDomainReachesHandler(t *testing.T) {
	dir := manifestDir(t, "svc.custom.test", "192.0.2.1")
	zone := filepath.Join(dir, "custom.test.zone")
	writeFile(t, zone, "$ORIGIN custom.test.\n@ 60 IN SOA ns hostmaster 1 7200 1800 86400 30\nsvc 60 IN A 203.0.113.1\n")
	port := freeUDPPort(t)
	input := caddy.CaddyfileInput{ServerTypeName: "dns", Filepath: "Corefile", Contents: []byte(fmt.Sprintf(
		".:%d {\n bind 127.0.0.1\n serviceentry {\n manifests %s\n cluster_domain custom.test\n fallthrough\n }\n file %s custom.test\n}\n",
		port, filepath.Join(dir, "se.yaml"), zone))}
	inst := startCaddy(t, input)
	defer stopCaddy(t, inst)
	if got := askA(t, port, "svc.custom.test."); got != "203.0.113.1" {
		t.Fatalf("a name the chain answers inside cluster_domain: got %s, want the chain's 203.0.113.1", got)
	}
}

// TestPerClientRefusesCacheFirst: cache keys replies by name and type only,
// so in front of per-client answers (exportto client, clients pods) it would
// serve one client's answers to another. A CoreDNS built with cache before
// the plugin does not start such a block, and leaves nothing running; this
// module's order, the plugin before cache, starts it.
func TestPerClientRefusesCacheFirst(t *testing.T) {
	defer verifyNoLeaks(t, goleak.IgnoreCurrent())
	kubeconfig := kubeconfigFor(t, "https://127.0.0.1:1")
	ours := dnsserver.Directives
	t.Cleanup(func() { dnsserver.Directives = ours })
	cacheFirst := slices.DeleteFunc(slices.Clone(ours), func(d string) bool { return d == pluginName })
	cacheFirst = slices.Insert(cacheFirst, slices.Index(cacheFirst, "kubernetes"), pluginName)
	for _, c := range []struct {
		name       string
		directives []string
		options    string
		refused    bool
	}{
		{"exportto client after cache", cacheFirst, "exportto client\n clients mesh", true},
		{"clients pods after cache", cacheFirst, "clients pods", true},
		{"the default (clients pods) after cache", cacheFirst, "", true},
		{"the same answers for every client after cache", cacheFirst, "clients mesh", false},
		{"exportto client before cache", ours, "exportto client", false},
		{"clients pods before cache", ours, "clients pods", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dnsserver.Directives = c.directives
			input := caddy.CaddyfileInput{ServerTypeName: "dns", Filepath: "Corefile", Contents: []byte(fmt.Sprintf(
				"internal.:%d {\n bind 127.0.0.1\n cache\n serviceentry {\n kubeconfig %s\n startup_timeout 0s\n %s\n }\n}\n", freeUDPPort(t), kubeconfig, c.options))}
			inst, err := caddy.Start(input)
			if err == nil {
				stopCaddy(t, inst)
			}
			if got := err != nil; got != c.refused {
				t.Fatalf("refused: %v (%v), want %v", got, err, c.refused)
			}
			if c.refused && !strings.Contains(err.Error(), "cache would give one client's answers to another") {
				t.Errorf("error %q does not say why", err)
			}
			if n := len(sharedSources()); n != 0 {
				t.Errorf("%d sources running after the stop", n)
			}
		})
	}
}
