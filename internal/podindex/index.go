package podindex

import (
	"encoding/binary"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/reach"
)

// clientShardBits sets how many shards the index has. A pod event copies one
// shard, so more shards make writes cheaper at the cost of a larger index
// header; a power of two lets the hash pick a shard with a shift.
const clientShardBits = 6

const clientShards = 1 << clientShardBits

// Index maps pod IPs to the pods' namespaces and Istio marks for the query
// path.
//
// Readers see a set of immutable maps, one per shard, each behind an atomic
// pointer, so a lookup takes no lock and allocates nothing. Writers hold mu,
// keep every live claim to an IP (a reused IP can be claimed by an old pod
// and a new one until the old one's deletion arrives), and after each event
// replace only the shards whose winners changed.
type Index struct {
	shards [clientShards]atomic.Pointer[map[netip.Addr]Client]
	ready  atomic.Bool
	synced chan struct{} // closed with ready

	mu     sync.Mutex
	pods   map[string]*Claim       // by namespace/name: what each pod claims now
	claims map[netip.Addr][]*Claim // by IP: every live claimant, nearly always one
}

// Claim is a pod's claim to its IPs, with what decides between claimants.
type Claim struct {
	Namespace, Name string
	Created         time.Time
	IPs             []netip.Addr
	Marks           reach.Marks // what Istio marked the pod with
}

// Client is what the query path learns of the pod holding an address.
type Client struct {
	Namespace string
	Marks     reach.Marks
}

// newer reports whether c wins an IP over d: the newest pod is the one the IP
// was given to last. Creation times have a granularity of a second, so the
// name (then the namespace) breaks ties, to make the outcome independent of
// event order.
func (c *Claim) newer(d *Claim) bool {
	if !c.Created.Equal(d.Created) {
		return c.Created.After(d.Created)
	}
	if c.Name != d.Name {
		return c.Name > d.Name
	}
	return c.Namespace > d.Namespace
}

func New() *Index {
	c := &Index{pods: make(map[string]*Claim), claims: make(map[netip.Addr][]*Claim), synced: make(chan struct{})}
	empty := map[netip.Addr]Client{}
	for i := range c.shards {
		c.shards[i].Store(&empty)
	}
	return c
}

// shardOf spreads addresses over the shards. Pod IPs of one cluster share
// their high bits (the pod CIDR), so the hash mixes every byte of the address
// with a multiplicative hash and takes the top bits, which depend on every
// input bit.
func shardOf(ip netip.Addr) int {
	b := ip.As16()
	h := binary.LittleEndian.Uint64(b[:8])*0x9e3779b97f4a7c15 ^ binary.LittleEndian.Uint64(b[8:])
	h *= 0xbf58476d1ce4e5b9
	return int(h >> (64 - clientShardBits))
}

// Lookup returns the pod that holds ip: its namespace and marks, or the zero
// Client (no namespace, no mark: a client outside the mesh) when no known pod
// does or before the first list is complete. It takes no lock and allocates
// nothing. ip may be an IPv4-mapped IPv6 address, as a dual-stack socket
// reports an IPv4 client.
func (c *Index) Lookup(ip netip.Addr) Client {
	if !c.ready.Load() {
		// Until the first list is complete a reused IP may still name the
		// pod it belonged to before: a client of nothing is safer.
		return Client{}
	}
	ip = ip.Unmap()
	return (*c.shards[shardOf(ip)].Load())[ip]
}

// Synced reports whether the first full list of pods is in.
func (c *Index) Synced() bool { return c.ready.Load() }

// MarkSynced says the first full list of pods is in.
func (c *Index) MarkSynced() {
	if !c.ready.Swap(true) {
		close(c.synced)
	}
}

// WaitSynced returns a channel closed once the first full list of pods is in.
func (c *Index) WaitSynced() <-chan struct{} { return c.synced }

// Set replaces what the pod with key claims by claim (nil: nothing, as for a
// deleted pod), then republishes the winners of the IPs it claimed before or
// claims now.
func (c *Index) Set(key string, claim *Claim) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.publish(c.setLocked(key, claim, nil))
}

// Replace makes the pods of namespace ("" for every namespace) exactly those
// of claims, by key, and republishes the winners of every IP that changed
// hands at once: a full list costs one copy of each shard, not one per pod.
func (c *Index) Replace(namespace string, claims map[string]*Claim) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var touched []netip.Addr
	for key, old := range c.pods {
		if _, kept := claims[key]; !kept && (namespace == "" || old.Namespace == namespace) {
			touched = c.setLocked(key, nil, touched)
		}
	}
	for key, claim := range claims {
		touched = c.setLocked(key, claim, touched)
	}
	c.publish(touched)
}

// setLocked replaces the claim of key and appends the IPs whose winner may
// have changed to touched.
func (c *Index) setLocked(key string, claim *Claim, touched []netip.Addr) []netip.Addr {
	if old := c.pods[key]; old != nil {
		for _, ip := range old.IPs {
			rest := slices.DeleteFunc(c.claims[ip], func(d *Claim) bool { return d == old })
			if len(rest) == 0 {
				delete(c.claims, ip)
			} else {
				c.claims[ip] = rest
			}
		}
		touched = append(touched, old.IPs...)
		delete(c.pods, key)
	}
	if claim != nil && len(claim.IPs) > 0 {
		c.pods[key] = claim
		for _, ip := range claim.IPs {
			c.claims[ip] = append(c.claims[ip], claim)
		}
		touched = append(touched, claim.IPs...)
	}
	return touched
}

// publish copies the shards holding ips with each IP's winner. It runs under
// mu, so no other writer can replace a shard between the load and the store.
func (c *Index) publish(ips []netip.Addr) {
	var next [clientShards]map[netip.Addr]Client
	for _, ip := range ips {
		s := shardOf(ip)
		m := next[s]
		if m == nil {
			m = maps.Clone(*c.shards[s].Load())
			next[s] = m
		}
		if client, ok := c.winner(ip); ok {
			m[ip] = client
		} else {
			delete(m, ip)
		}
	}
	for s, m := range next {
		if m != nil {
			c.shards[s].Store(&m)
		}
	}
}

func (c *Index) winner(ip netip.Addr) (Client, bool) {
	var best *Claim
	for _, claim := range c.claims[ip] {
		if best == nil || claim.newer(best) {
			best = claim
		}
	}
	if best == nil {
		return Client{}, false
	}
	return Client{Namespace: best.Namespace, Marks: best.Marks}, true
}

// Classes counts the pods of the index by class: what they route.
func (c *Index) Classes() map[reach.Class]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[reach.Class]int, 3)
	for _, claim := range c.pods {
		out[claim.Marks.Class()]++
	}
	return out
}
