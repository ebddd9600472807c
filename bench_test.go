package serviceentry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/metrics"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/plugin/whoami"
	"github.com/miekg/dns"
)

// benchEntries makes n entries svc-i.ns-(i%100).internal with one IPv4 each and
// an IPv6 for every other one, plus one wildcard.
func benchEntries(n int) map[entry.Key]*entry.Entry {
	out := make(map[entry.Key]*entry.Entry, n+1)
	for i := range n {
		addrs := []netip.Addr{netip.AddrFrom4([4]byte{240, 240, byte(i >> 8), byte(i)})}
		if i%2 == 0 {
			addrs = append(addrs, netip.MustParseAddr(fmt.Sprintf("2001:2::%x:%x", i>>16, i&0xffff)))
		}
		e := &entry.Entry{Key: entry.ServiceEntryKey(fmt.Sprintf("ns/e%d", i)),
			Hosts: []entry.Host{entry.NewHost(fmt.Sprintf("svc-%d.ns-%d.internal", i, i%100), addrs...)}}
		out[e.Key] = e
	}
	w := &entry.Entry{Key: entry.ServiceEntryKey("ns/wild"),
		Hosts: []entry.Host{entry.NewHost("*.wild.internal", netip.MustParseAddr("203.0.113.1"))},
		Ports: []entry.Port{{Name: "https", Number: 443}}}
	out[w.Key] = w
	return out
}

// nxdomainChain stands for the kubernetes plugin asked before an expansion is
// answered: it knows no name.
func nxdomainChain(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeNameError)
	w.WriteMsg(m)
	return dns.RcodeNameError, nil
}

func BenchmarkServeDNS(b *testing.B) {
	st := newStore(false)
	st.ReplaceAll(benchEntries(10_000), nil)
	st.MarkSynced()
	se := (&ServiceEntry{Zones: []string{"internal."}, TTL: 30, Next: test.NextHandler(dns.RcodeSuccess, nil)}).attach(st)
	withFall := (&ServiceEntry{Zones: []string{"internal."}, TTL: 30, Fall: fall.Root, Next: test.NextHandler(dns.RcodeSuccess, nil)}).attach(st)
	// kube-system's layout with searchpath: zone ".", fallthrough, the
	// kubernetes plugin after us.
	withPath := (&ServiceEntry{Zones: []string{"."}, TTL: 30, Fall: fall.Root, SearchDomains: []string{"cluster.local."},
		Next: test.HandlerFunc(nxdomainChain)}).attach(st)
	for _, c := range []struct {
		name  string
		se    *ServiceEntry
		qname string
		qtype uint16
	}{
		{"hit-A", se, "svc-42.ns-42.internal.", dns.TypeA},
		{"hit-AAAA", se, "svc-42.ns-42.internal.", dns.TypeAAAA},
		{"nodata", se, "svc-43.ns-43.internal.", dns.TypeAAAA},
		{"wildcard", se, "a.b.wild.internal.", dns.TypeA},
		{"nxdomain", se, "absent.ns-1.internal.", dns.TypeA},
		{"empty-non-terminal", se, "ns-1.internal.", dns.TypeA},
		{"escaped-label", se, `a\.b.wild.internal.`, dns.TypeA},
		{"apex-soa", se, "internal.", dns.TypeSOA},
		{"fallthrough", withFall, "absent.ns-1.internal.", dns.TypeA},
		{"searchpath-hit-A", withPath, "svc-42.ns-42.internal.", dns.TypeA},
		{"searchpath-not-expansion", withPath, "web.default.svc.cluster.local.", dns.TypeA},
		{"expansion-A", withPath, "svc-42.ns-42.internal.default.svc.cluster.local.", dns.TypeA},
		{"expansion-wildcard-A", withPath, "a.wild.internal.default.svc.cluster.local.", dns.TypeA},
		{"expansion-nodata", withPath, "svc-43.ns-43.internal.default.svc.cluster.local.", dns.TypeAAAA},
		{"srv", se, "_https._tcp.a.wild.internal.", dns.TypeSRV},
		{"ptr", withPath, "42.0.240.240.in-addr.arpa.", dns.TypePTR},
	} {
		b.Run(c.name, func(b *testing.B) {
			m := new(dns.Msg).SetQuestion(c.qname, c.qtype)
			w := &test.ResponseWriter{}
			b.ReportAllocs()
			for b.Loop() {
				rec := dnstest.NewRecorder(w)
				_, _ = c.se.ServeDNS(context.Background(), rec, m)
			}
		})
	}
}

// BenchmarkTableUpdate: the cost of one change (one entry replaced) once the
// store holds n entries: it must not grow with n.
func BenchmarkTableUpdate(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			entries := benchEntries(n)
			st := newStore(false)
			st.ReplaceAll(entries, nil)
			st.MarkSynced()
			alternateUpdates(b, st, entries[entry.ServiceEntryKey("ns/e7")])
		})
	}
}

// alternateUpdates times one change per iteration: e's address replaced,
// then e again.
func alternateUpdates(b *testing.B, st *store, e *entry.Entry) {
	changed := *e
	changed.Hosts = []entry.Host{entry.NewHost(e.Hosts[0].Name, netip.MustParseAddr("192.0.2.1"))}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			st.Upsert(e.Key, &changed)
		} else {
			st.Upsert(e.Key, e)
		}
	}
}

// BenchmarkInitialSync: building the first table from n entries.
func BenchmarkInitialSync(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		entries := benchEntries(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				st := newStore(false)
				st.ReplaceAll(entries, nil)
				st.MarkSynced()
			}
		})
	}
}

// BenchmarkStoreMemory reports what the store and its table keep per entry
// at 100,000 entries shaped as scripts/bench-scale's (one host, an IPv4
// address and an IPv6 one on every other entry, a port 443 named "https" of
// its own, as each decoded entry has it): the live heap after a collection,
// the heap in use, which adds the free room of the spans that hold it, and
// the live objects, which the collector marks.
// The entries are counted: the store keeps them.
func BenchmarkStoreMemory(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		base, baseInUse, baseObjects := sourcetest.LiveHeap(), sourcetest.HeapInUse(), sourcetest.LiveObjects()
		entries := benchEntries(n)
		for _, e := range entries {
			e.Ports = []entry.Port{{Name: strings.Clone("https"), Number: 443}}
		}
		st := newStore(false)
		st.ReplaceAll(entries, nil)
		st.MarkSynced()
		entries = nil
		b.ReportMetric(float64(sourcetest.LiveHeap()-base)/n, "B/entry")
		b.ReportMetric(float64(sourcetest.HeapInUse()-baseInUse)/n, "inuse-B/entry")
		b.ReportMetric(float64(sourcetest.LiveObjects()-baseObjects)/n, "objects/entry")
		runtime.KeepAlive(st)
	}
}

// BenchmarkLegacyChurn: adding and removing eligible hosts as fast as they
// come, with n in the store. Each change moves other hosts' addresses, so the
// full recomputation is coalesced; cpu-ns/op is the process CPU time per
// change (the deferred recomputations run on timers, outside the loop).
func BenchmarkLegacyChurn(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			entries := legacyParsed(b, n+1, entry.Options{AutoAllocate: entry.AutoAllocateLegacy})
			st := newStore(true)
			all := make(map[entry.Key]*entry.Entry, n)
			for _, e := range entries[:n] {
				all[e.Key] = e
			}
			st.ReplaceAll(all, nil)
			st.MarkSynced()
			defer st.close()
			churn := entries[n]
			cpu0 := processCPU(b)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if i%2 == 0 {
					st.Upsert(churn.Key, churn)
				} else {
					st.Upsert(churn.Key, nil)
				}
			}
			b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// exportToBench is benchEntries(10,000) with every tenth entry exported to
// one of 1,000 namespaces instead of to all, and 10,000 client pods spread
// over those namespaces: each namespace has an overlay of one host.
func exportToBench() (map[entry.Key]*entry.Entry, map[string]string) {
	entries := benchEntries(10_000)
	for i := 0; i < 10_000; i += 10 {
		entries[entry.ServiceEntryKey(fmt.Sprintf("ns/e%d", i))].Extras = &entry.Extras{ExportedTo: []string{fmt.Sprintf("team-%d", i/10)}}
	}
	pods := make(map[string]string, 10_000)
	for i := range 10_000 {
		pods[fmt.Sprintf("10.1.%d.%d", i>>8, i&0xff)] = fmt.Sprintf("team-%d", i%1000)
	}
	return entries, pods
}

// fromAddr is a test writer whose client address is made once, as a DNS
// server's writer holds the one it read (test.ResponseWriter makes a new
// one on every call).
type fromAddr struct {
	test.ResponseWriter
	remote net.Addr
}

func (w *fromAddr) RemoteAddr() net.Addr { return w.remote }

// BenchmarkExportTo: a query with "exportto client" against the same query
// with "exportto public", from a pod whose namespace sees one private host.
func BenchmarkExportTo(b *testing.B) {
	entries, pods := exportToBench()
	public := newStore(false)
	publicEntries := make(map[entry.Key]*entry.Entry, len(entries))
	for key, e := range entries {
		if e.ExportedTo() == nil {
			publicEntries[key] = e
		}
	}
	public.ReplaceAll(publicEntries, nil)
	public.MarkSynced()
	client := newStore(false)
	client.ReplaceAll(entries, nil)
	client.MarkSynced()
	client.clients = clientsOf(b, pods)
	// Pod 42 is in team-42, which sees svc-420's private entry.
	for _, c := range []struct {
		name, qname, from string
		st                *store
	}{
		{"public/hit-A", "svc-41.ns-41.internal.", "10.1.0.42", public},
		{"client/hit-A", "svc-41.ns-41.internal.", "10.1.0.42", client},
		{"client/private-hit-A", "svc-420.ns-20.internal.", "10.1.0.42", client},
		{"client/unknown-client-hit-A", "svc-41.ns-41.internal.", "10.9.9.9", client},
		{"public/nxdomain", "absent.ns-1.internal.", "10.1.0.42", public},
		{"client/nxdomain", "absent.ns-1.internal.", "10.1.0.42", client},
	} {
		b.Run(c.name, func(b *testing.B) {
			se := (&ServiceEntry{Zones: []string{"internal."}, TTL: 30}).attach(c.st)
			m := new(dns.Msg).SetQuestion(c.qname, dns.TypeA)
			w := &fromAddr{remote: &net.UDPAddr{IP: net.ParseIP(c.from).To4(), Port: 40212}}
			b.ReportAllocs()
			for b.Loop() {
				rec := dnstest.NewRecorder(w)
				_, _ = se.ServeDNS(context.Background(), rec, m)
			}
		})
	}
}

// BenchmarkExportToMemory reports the live heap of the stores (entries
// excluded) at 10,000 entries, 10 % of them exported to one of 1,000
// namespaces each: "exportto public" serving the 9,000 public ones, and
// "exportto client" serving all with 1,000 overlays; and of the index of
// 10,000 client pods. The timed loop is one overlay rebuild (a private entry
// replaced).
func BenchmarkExportToMemory(b *testing.B) {
	entries, pods := exportToBench()
	publicEntries := make(map[entry.Key]*entry.Entry, len(entries))
	for key, e := range entries {
		if e.ExportedTo() == nil {
			publicEntries[key] = e
		}
	}
	base := sourcetest.LiveHeap()
	public := newStore(false)
	public.ReplaceAll(publicEntries, nil)
	public.MarkSynced()
	withPublic := sourcetest.LiveHeap()
	st := newStore(false)
	st.ReplaceAll(entries, nil)
	st.MarkSynced()
	withClient := sourcetest.LiveHeap()
	st.clients = clientsOf(b, pods)
	withIndex := sourcetest.LiveHeap()
	if len(st.table().Overlays) != 1000 {
		b.Fatalf("%d overlays, want 1000", len(st.table().Overlays))
	}
	alternateUpdates(b, st, entries[entry.ServiceEntryKey("ns/e420")])
	b.ReportMetric(float64(withPublic-base), "public-store-B")
	b.ReportMetric(float64(withClient-withPublic), "client-store-B")
	b.ReportMetric(float64(withIndex-withClient), "pod-index-B")
	runtime.KeepAlive(public)
}

// passThroughQueries are names that are not the plugin's, as a pod with
// ndots:5 in namespace team-42 asks them: a Service by its full name, a
// Service of another namespace and an external name through the search list
// (each expansion, then the name itself), with A and AAAA as a resolver
// asks both.
var passThroughQueries = func() []*dns.Msg {
	var out []*dns.Msg
	for _, name := range []string{
		"web.team-42.svc.cluster.local.",
		"db.other.team-42.svc.cluster.local.",
		"db.other.svc.cluster.local.",
		"api.github.com.team-42.svc.cluster.local.",
		"api.github.com.svc.cluster.local.",
		"api.github.com.cluster.local.",
		"api.github.com.",
		"storage.googleapis.com.team-42.svc.cluster.local.",
	} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			out = append(out, new(dns.Msg).SetQuestion(name, qtype))
		}
	}
	return out
}()

// passThroughChains are kube-system's layout (zone ".", fallthrough, the
// rest of the chain after the plugin) at 10,000 entries: without and with
// searchpath, and with searchpath, "exportto client" (1,000 namespaces with
// an overlay each) and per-client classes, the client a pod of team-42.
func passThroughChains(b *testing.B, next plugin.Handler) []struct {
	name string
	se   *ServiceEntry
} {
	st := newStore(false)
	st.ReplaceAll(benchEntries(10_000), nil)
	st.MarkSynced()
	entries, pods := exportToBench()
	client := newStore(false)
	client.ReplaceAll(entries, nil)
	client.MarkSynced()
	client.clients = clientsOf(b, pods)
	path := []string{"cluster.local."}
	return []struct {
		name string
		se   *ServiceEntry
	}{
		{"fallthrough", (&ServiceEntry{Zones: []string{"."}, TTL: 30, Fall: fall.Root, Next: next}).attach(st)},
		{"searchpath", (&ServiceEntry{Zones: []string{"."}, TTL: 30, Fall: fall.Root, SearchDomains: path, Next: next}).attach(st)},
		{"searchpath-exportto-client", (&ServiceEntry{Zones: []string{"."}, TTL: 30, Fall: fall.Root, SearchDomains: path,
			clients: clientsByPod, Next: next}).attach(client)},
	}
}

// BenchmarkPassThrough: ServeDNS for names that are not ours, which every
// query of a cluster pays when the plugin sits in kube-system's stanza; the
// next plugin does nothing. ns/op is per query of passThroughQueries.
func BenchmarkPassThrough(b *testing.B) {
	for _, c := range passThroughChains(b, test.NextHandler(dns.RcodeSuccess, nil)) {
		b.Run(c.name, func(b *testing.B) {
			w := &fromAddr{remote: &net.UDPAddr{IP: net.ParseIP("10.1.0.42").To4(), Port: 40212}}
			ctx := context.Background()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				m := passThroughQueries[i%len(passThroughQueries)]
				if rcode, _ := c.se.ServeDNS(ctx, w, m); rcode != dns.RcodeSuccess {
					b.Fatalf("%s: rcode %d, want the next plugin's", m.Question[0].Name, rcode)
				}
			}
		})
	}
}

// BenchmarkCollectorPerQuery: what the heap of n entries costs a query that
// is not ours. The next plugin packs a reply, as kubernetes or forward
// would; in the chain sub-benchmarks it also leaves chainGarbage bytes of
// garbage, about what CoreDNS's server and a chain with cache and
// prometheus leave per query. Each collection that garbage triggers marks
// what the store holds (gc-cpu-ns/op: the runtime's own account of its
// collector's CPU, runtime/metrics, per query, over the collections counted
// beside it; give -benchtime enough queries for several at 100,000), and
// the garbage is allocated across the room the pacer leaves between
// collections, as large as the live heap, which at 100,000 entries no
// longer fits in the cache (mutator-ns/op: the rest of the time per query).
// Run it with GOMAXPROCS=1, where the collector's CPU is the query's time
// as in a server that is saturated, and with GOGC=25, 100 and 400 to see
// one cost traded for the other; compare the sizes of one run.
func BenchmarkCollectorPerQuery(b *testing.B) {
	for _, garbage := range []int{0, chainGarbage} {
		next := packsWithGarbage(garbage)
		for _, n := range []int{0, 10_000, 100_000} {
			name := fmt.Sprint(n)
			if garbage > 0 {
				name = "chain/" + name
			}
			b.Run(name, func(b *testing.B) {
				st := newStore(false)
				st.ReplaceAll(benchEntries(n), nil)
				st.MarkSynced()
				se := (&ServiceEntry{Zones: []string{"."}, TTL: 30, Fall: fall.Root, SearchDomains: []string{"cluster.local."}, Next: next}).attach(st)
				w := &fromAddr{remote: &net.UDPAddr{IP: net.ParseIP("10.1.0.42").To4(), Port: 40212}}
				ctx := context.Background()
				runtime.GC()
				cpu0, cycles0 := collector()
				for i := 0; b.Loop(); i++ {
					if rcode, _ := se.ServeDNS(ctx, w, passThroughQueries[i%len(passThroughQueries)]); rcode != dns.RcodeNameError {
						b.Fatalf("rcode %d, want the next plugin's", rcode)
					}
				}
				cpu, cycles := collector()
				gcPerQuery := float64(cpu-cpu0) / float64(b.N)
				b.ReportMetric(gcPerQuery, "gc-cpu-ns/op")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)-gcPerQuery, "mutator-ns/op")
				b.ReportMetric(float64(cycles-cycles0), "collections")
				runtime.KeepAlive(st)
			})
		}
	}
}

// chainGarbage is the garbage a query leaves in a CoreDNS with hosts,
// cache, prometheus and loadbalance, measured with dnsperf (BENCHMARKS.md
// section 21): 1,977 bytes in 37 allocations.
const chainGarbage = 2048

// packsWithGarbage is a next plugin that answers NXDOMAIN, packing its reply,
// and leaves garbage bytes in 256-byte objects: each replaces the one kept
// before it, so that it cannot stay on the stack.
func packsWithGarbage(garbage int) plugin.Handler {
	kept := make([][]byte, garbage/256)
	return plugin.HandlerFunc(func(_ context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
		m := new(dns.Msg).SetRcode(r, dns.RcodeNameError)
		if _, err := m.Pack(); err != nil {
			return dns.RcodeServerFailure, err
		}
		for i := range kept {
			kept[i] = make([]byte, 256)
		}
		return dns.RcodeNameError, nil
	})
}

// collector returns the CPU the garbage collector has used, by the
// runtime's estimate, and the collections it has completed.
func collector() (time.Duration, uint64) {
	samples := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}, {Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(samples)
	return time.Duration(samples[0].Value.Float64() * float64(time.Second)), samples[1].Value.Uint64()
}

// BenchmarkServeUDP: queries served by CoreDNS's own server over loopback
// UDP, each on the fresh goroutine the server starts for every packet, so
// that the stack the chain needs is grown (and copied) on every query as in
// production: BenchmarkServeDNS and BenchmarkPassThrough loop on one
// goroutine, whose stack stays grown, and never show it. The chains are
// whoami alone and serviceentry (fallthrough, searchpath, 10,000 entries)
// before whoami; compare the sub-benchmarks of one run. 8 clients ask in
// turn, each waiting for its reply; cpu-ns/op is the process's CPU time
// (server and clients) per query.
func BenchmarkServeUDP(b *testing.B) {
	st := newStore(false)
	st.ReplaceAll(benchEntries(10_000), nil)
	st.MarkSynced()
	whoamiOnly := []plugin.Plugin{func(plugin.Handler) plugin.Handler { return whoami.Whoami{} }}
	withPlugin := []plugin.Plugin{
		func(next plugin.Handler) plugin.Handler {
			return (&ServiceEntry{Zones: []string{"."}, TTL: 30, Fall: fall.Root, SearchDomains: []string{"cluster.local."}, Next: next}).attach(st)
		},
		whoamiOnly[0],
	}
	hit := []*dns.Msg{new(dns.Msg).SetQuestion("svc-42.ns-42.internal.", dns.TypeA)}
	for _, c := range []struct {
		name    string
		chain   []plugin.Plugin
		queries []*dns.Msg
		answers int // in each reply
	}{
		{"whoami/not-ours", whoamiOnly, passThroughQueries, 0},
		{"serviceentry-whoami/not-ours", withPlugin, passThroughQueries, 0},
		{"serviceentry-whoami/hit-A", withPlugin, hit, 1},
	} {
		b.Run(c.name, func(b *testing.B) {
			addr := serveUDP(b, c.chain)
			packed := make([][]byte, len(c.queries))
			for i, m := range c.queries {
				var err error
				if packed[i], err = m.Pack(); err != nil {
					b.Fatal(err)
				}
				if r, err := dns.Exchange(m, addr); err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != c.answers {
					b.Fatalf("%s: got %v (%v), want NOERROR with %d answers", m.Question[0].Name, r, err, c.answers)
				}
			}
			cpu0 := processCPU(b)
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				conn, err := net.Dial("udp", addr)
				if err != nil {
					b.Error(err)
					return
				}
				defer conn.Close()
				buf := make([]byte, 512)
				for i := 0; pb.Next(); i++ {
					q := packed[i%len(packed)]
					for {
						if _, err := conn.Write(q); err != nil {
							b.Error(err)
							return
						}
						_ = conn.SetReadDeadline(time.Now().Add(time.Second))
						if _, err := conn.Read(buf); err == nil {
							break
						} else if !errors.Is(err, os.ErrDeadlineExceeded) {
							b.Error(err)
							return
						}
						// Lost on loopback: ask again.
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// serveUDP starts CoreDNS's server with the chain on a loopback port and
// returns its address; it stops with the benchmark.
func serveUDP(b *testing.B, chain []plugin.Plugin) string {
	b.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	s, err := dnsserver.NewServer("dns://"+addr, []*dnsserver.Config{{Zone: ".", Plugin: chain}})
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = s.ServePacket(pc) }()
	b.Cleanup(func() { _ = s.Stop() })
	return addr
}
