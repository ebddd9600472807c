package podindex

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
)

// epoch is the creation time of the test pods, in Unix seconds.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Unix()

// filledIndex is a synced index of n pods, spread over namespaces, at
// 10.x.y.z and at fd00::x:y:z.
func filledIndex(n int) (*Index, []netip.Addr) {
	idx := New()
	ips := make([]netip.Addr, 0, 2*n)
	for i := range n {
		v4 := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		v6 := netip.AddrFrom16([16]byte{0: 0xfd, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
		ns := fmt.Sprintf("ns%d", i%50)
		name := fmt.Sprintf("pod%d", i)
		idx.Set(ns+"/"+name, &Claim{Namespace: ns, IPs: []netip.Addr{v4, v6}})
		ips = append(ips, v4, v6)
	}
	idx.MarkSynced()
	return idx, ips
}

// TestClientIndexLookupAllocs: the lookup is on the query path.
func TestClientIndexLookupAllocs(t *testing.T) {
	idx, _ := filledIndex(1000)
	unsynced := New()
	for _, tc := range []struct {
		name string
		idx  *Index
		ip   netip.Addr
		want string
	}{
		{"IPv4 hit", idx, netip.MustParseAddr("10.0.0.7"), "ns7"},
		{"IPv4-mapped hit", idx, netip.MustParseAddr("::ffff:10.0.0.7"), "ns7"},
		{"IPv6 hit", idx, netip.MustParseAddr("fd00::7"), "ns7"},
		{"miss", idx, netip.MustParseAddr("192.0.2.1"), ""},
		{"zero address", idx, netip.Addr{}, ""},
		{"not synced", unsynced, netip.MustParseAddr("10.0.0.7"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.idx.Lookup(tc.ip).Namespace; got != tc.want {
				t.Fatalf("%s -> %q, want %q", tc.ip, got, tc.want)
			}
			if n := testing.AllocsPerRun(1000, func() { _ = tc.idx.Lookup(tc.ip) }); n != 0 {
				t.Fatalf("%v allocations per lookup, want 0", n)
			}
		})
	}
}

// TestClientIndexCopiesOnlyTouchedShards: an event replaces the shards of the
// IPs it touched and leaves every other shard, and any map a reader holds,
// as it was.
func TestClientIndexCopiesOnlyTouchedShards(t *testing.T) {
	idx, _ := filledIndex(1000)
	var before [clientShards]*shard
	for i := range idx.shards {
		before[i] = idx.shards[i].Load()
	}
	moved := netip.MustParseAddr("10.0.0.7")
	fresh := netip.MustParseAddr("10.200.0.1")
	idx.Set("ns7/pod7", &Claim{Namespace: "ns7", IPs: []netip.Addr{fresh}})

	touched := map[int]bool{shardOf(moved): true, shardOf(fresh): true,
		shardOf(netip.MustParseAddr("fd00::7")): true}
	for i := range idx.shards {
		if changed := idx.shards[i].Load() != before[i]; changed != touched[i] {
			t.Errorf("shard %d: replaced %v, touched %v", i, changed, touched[i])
		}
	}
	if got := before[shardOf(moved)].v4[v4Of(moved)]; got.Namespace != "ns7" {
		t.Errorf("a reader's old shard changed under it: %q", got.Namespace)
	}
	if got := idx.Lookup(moved).Namespace; got != "" {
		t.Errorf("old IP: %q, want none", got)
	}
	if got := idx.Lookup(fresh).Namespace; got != "ns7" {
		t.Errorf("new IP: %q, want ns7", got)
	}
}

// TestClientIndexUnchangedClaimPublishesNothing: most pod events are the
// kubelet's status updates (readiness, restarts), which change nothing the
// index keeps; they must not copy a shard. A change of what it keeps does.
func TestClientIndexUnchangedClaimPublishesNothing(t *testing.T) {
	ip4, ip6 := netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("fd00::7")
	claim := func(change func(*Claim)) *Claim {
		c := &Claim{Namespace: "ns7", Created: epoch, IPs: []netip.Addr{ip4, ip6}}
		if change != nil {
			change(c)
		}
		return c
	}
	for _, tc := range []struct {
		name      string
		next      *Claim
		republish bool
	}{
		{"same claim", claim(nil), false},
		{"same addresses in the other order", claim(func(c *Claim) { c.IPs = []netip.Addr{ip6, ip4} }), false},
		{"namespace", claim(func(c *Claim) { c.Namespace = "other" }), true},
		{"marks", claim(func(c *Claim) { c.Marks = 1 }), true},
		{"creation time", claim(func(c *Claim) { c.Created++ }), true},
		{"IPv4 address", claim(func(c *Claim) { c.IPs[0] = netip.MustParseAddr("10.0.0.8") }), true},
		{"IPv6 address gone", claim(func(c *Claim) { c.IPs = c.IPs[:1] }), true},
		{"deleted", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idx := New()
			idx.Set("ns7/pod7", claim(nil))
			idx.MarkSynced()
			before4, before6 := idx.shards[shardOf(ip4)].Load(), idx.shards[shardOf(ip6)].Load()
			idx.Set("ns7/pod7", tc.next)
			republished := idx.shards[shardOf(ip4)].Load() != before4 || idx.shards[shardOf(ip6)].Load() != before6
			if republished != tc.republish {
				t.Errorf("shards replaced: %v, want %v", republished, tc.republish)
			}
			want := Client{}
			if tc.next != nil && slices.Contains(tc.next.IPs, ip4) {
				want = Client{Namespace: tc.next.Namespace, Marks: tc.next.Marks}
			}
			if got := idx.Lookup(ip4); got != want {
				t.Errorf("%v -> %+v, want %+v", ip4, got, want)
			}
		})
	}
}

// TestClientIndexTies: pods created in the same second claim one IP; the
// same pod wins whatever the order of their events, and a newer pod beats
// them all.
func TestClientIndexTies(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.1")
	keys := []string{"ns1/a", "ns2/a", "ns3/b", "ns4/c"} // a namespace names its pod
	claimOf := func(key string, created int64) *Claim {
		ns, _, _ := strings.Cut(key, "/")
		return &Claim{Namespace: ns, Created: created, IPs: []netip.Addr{ip}}
	}
	// winner sets keys in order and returns the namespace holding ip, and
	// what it holds once the winner is deleted.
	winner := func(order []string) (string, string) {
		idx := New()
		idx.MarkSynced()
		for _, key := range order {
			idx.Set(key, claimOf(key, epoch))
		}
		first := idx.Lookup(ip).Namespace
		for _, key := range order {
			if strings.HasPrefix(key, first+"/") {
				idx.Set(key, nil)
				break
			}
		}
		return first, idx.Lookup(ip).Namespace
	}
	var want [2]string
	for i, order := range permutations(keys) {
		first, next := winner(order)
		if i == 0 {
			want = [2]string{first, next}
			continue
		}
		if got := [2]string{first, next}; got != want {
			t.Errorf("order %q: %q, then %q once it is deleted; order %q gave %q", order, got[0], got[1], keys, want)
		}
	}

	idx := New()
	idx.MarkSynced()
	idx.Set("ns9/newest", claimOf("ns9/newest", epoch+1))
	for _, key := range keys {
		idx.Set(key, claimOf(key, epoch))
	}
	if got := idx.Lookup(ip).Namespace; got != "ns9" {
		t.Errorf("the newest pod's IP -> %q, want ns9", got)
	}
}

func permutations(s []string) [][]string {
	if len(s) <= 1 {
		return [][]string{slices.Clone(s)}
	}
	var out [][]string
	for i := range s {
		rest := slices.Concat(s[:i], s[i+1:])
		for _, p := range permutations(rest) {
			out = append(out, append([]string{s[i]}, p...))
		}
	}
	return out
}

// TestClientIndexShardSpread: pod IPs of one small CIDR, as a cluster gives
// them, reach every shard, so no shard grows to hold most of the index.
func TestClientIndexShardSpread(t *testing.T) {
	counts := make([]int, clientShards)
	const n = 4096
	for i := range n {
		counts[shardOf(netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}))]++
	}
	for s, c := range counts {
		if c == 0 || c > 3*n/clientShards {
			t.Errorf("shard %d holds %d of %d addresses", s, c, n)
		}
	}
}

// TestClientIndexConcurrentReaders runs lookups while pods come and go: under
// the race detector, and checking what the readers read. Every IP keeps a
// claimant throughout (its filled pod), so each lookup must return one of the
// namespaces ever set for that IP, never none or another IP's; once the
// writes are done, the index answers as one built from the last claims.
func TestClientIndexConcurrentReaders(t *testing.T) {
	idx, ips := filledIndex(256)
	type change struct {
		key   string
		claim *Claim
	}
	// The namespaces each IP may give: its filled pod's, and those of the
	// claims the churn makes to it.
	allowed := make(map[netip.Addr][]string, len(ips))
	for i, ip := range ips {
		allowed[ip] = []string{fmt.Sprintf("ns%d", i/2%50)}
	}
	var changes []change
	for i := range 2000 {
		ns, name := fmt.Sprintf("ns%d", i%7), fmt.Sprintf("churn%d", i%100)
		ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
		if i%3 == 0 {
			changes = append(changes, change{ns + "/" + name, nil})
			continue
		}
		changes = append(changes, change{ns + "/" + name, &Claim{Namespace: ns, Created: epoch + int64(i), IPs: []netip.Addr{ip}}})
		if !slices.Contains(allowed[ip], ns) {
			allowed[ip] = append(allowed[ip], ns)
		}
	}

	// Half the readers read every IP, half only those the churn claims.
	var churned []netip.Addr
	for _, ip := range ips {
		if len(allowed[ip]) > 1 {
			churned = append(churned, ip)
		}
	}
	var stop atomic.Bool
	var reads atomic.Int64
	var mu sync.Mutex
	var bad []string
	var readers, started sync.WaitGroup
	for r := range 4 {
		read := ips
		if r%2 == 1 {
			read = churned
		}
		started.Add(1)
		readers.Go(func() {
			for i := r; !stop.Load(); i++ {
				if i == r+1 {
					started.Done()
				}
				ip := read[i%len(read)]
				got := idx.Lookup(ip).Namespace
				reads.Add(1)
				if !slices.Contains(allowed[ip], got) {
					mu.Lock()
					if len(bad) < 10 {
						bad = append(bad, fmt.Sprintf("%s -> %q, want one of %q", ip, got, allowed[ip]))
					}
					mu.Unlock()
				}
			}
		})
	}
	started.Wait() // every reader is reading
	last := make(map[string]*Claim)
	for range 20 { // the same changes again leave the same claims
		for _, c := range changes {
			idx.Set(c.key, c.claim)
			if c.claim == nil {
				delete(last, c.key)
			} else {
				last[c.key] = c.claim
			}
		}
	}
	stop.Store(true)
	readers.Wait()
	if reads.Load() == 0 {
		t.Fatal("no lookup ran")
	}
	for _, b := range bad {
		t.Error(b)
	}

	want, _ := filledIndex(256)
	for key, c := range last {
		want.Set(key, c)
	}
	for _, ip := range ips {
		if got, w := idx.Lookup(ip).Namespace, want.Lookup(ip).Namespace; got != w {
			t.Errorf("after the churn %s -> %q, but %q in an index built from the last claims", ip, got, w)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	idx, ips := filledIndex(10000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_ = idx.Lookup(ips[i%len(ips)])
		i++
	}
}

// BenchmarkSet is one pod event in an index of 10,000 pods: a pod moving
// between two addresses, so that each event republishes the shards of both,
// and a status update (the kubelet's readiness), which changes nothing the
// index keeps.
func BenchmarkSet(b *testing.B) {
	churn := func(ip string) *Claim {
		return &Claim{Namespace: "churn", Created: epoch, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
	for _, bc := range []struct {
		name   string
		claims [2]*Claim
	}{
		{"address moves", [2]*Claim{churn("10.200.0.1"), churn("10.200.0.2")}},
		{"status update", [2]*Claim{churn("10.200.0.1"), churn("10.200.0.1")}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			idx, _ := filledIndex(10000)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				idx.Set("churn/p", bc.claims[i%2])
				i++
			}
		})
	}
}

// BenchmarkIndexMemory reports the live heap of an index of 150,000 IPv4
// pods over 1,000 namespaces, the scale of issue "answers that reach", read
// by one Replace as a first list is: "B/pod" is the index alone, the pods'
// claims let go. Run with -benchtime 1x.
func BenchmarkIndexMemory(b *testing.B) {
	const pods, namespaces = 150000, 1000
	var total float64
	n := 0
	for b.Loop() {
		base := sourcetest.LiveHeap()
		claims := make(map[string]*Claim, pods)
		for i := range pods {
			ns := fmt.Sprintf("team-%d", i%namespaces)
			claims[fmt.Sprintf("%s/web-%d", ns, i)] = &Claim{Namespace: ns, Created: epoch + int64(i),
				IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})}}
		}
		idx := New()
		idx.Replace("", claims)
		claims = nil
		total += float64(sourcetest.LiveHeap()) - float64(base)
		runtime.KeepAlive(idx)
		n++
	}
	b.ReportMetric(total/float64(n)/pods, "B/pod")
}

// TestClientIndexSlots: a pod gone leaves its slot to the next one, so that
// churn does not grow the index, and the pods still in it keep their IPs; an
// unspecified address is no pod's.
func TestClientIndexSlots(t *testing.T) {
	idx := New()
	idx.MarkSynced()
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	for i := 1; i <= 3; i++ {
		idx.Set(fmt.Sprintf("ns%d/p", i), &Claim{Namespace: fmt.Sprintf("ns%d", i), IPs: []netip.Addr{ip(i)}})
	}
	idx.Set("ns2/p", nil)
	idx.Set("ns4/p", &Claim{Namespace: "ns4", IPs: []netip.Addr{netip.IPv4Unspecified(), ip(4)}})
	if len(idx.pods) != 3 {
		t.Errorf("%d slots for 3 pods, one of them gone and one new", len(idx.pods))
	}
	for addr, want := range map[netip.Addr]string{ip(1): "ns1", ip(2): "", ip(3): "ns3", ip(4): "ns4", netip.IPv4Unspecified(): ""} {
		if got := idx.Lookup(addr).Namespace; got != want {
			t.Errorf("%v -> %q, want %q", addr, got, want)
		}
	}
}
