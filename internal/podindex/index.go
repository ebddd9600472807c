package podindex

import (
	"crypto/sha256"
	"encoding/binary"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

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
// Readers see a set of immutable shards, each behind an atomic pointer, so a
// lookup takes no lock and allocates nothing. Writers hold mu, keep every live
// claim to an IP (a reused IP can be claimed by an old pod and a new one until
// the old one's deletion arrives), and after each event replace only the
// shards whose winners changed.
//
// The index holds every pod of the cluster, so what it keeps per pod is small
// and of fixed size: a pod is known by a hash of its key, not the key's
// string, and that hash is kept once, in slots; everything else refers to
// the pod by its 4-byte slot number. Its namespace and marks are one Client
// shared by all the pods of a namespace with the same marks, referred to by
// number; addresses are kept as 4 or 16 bytes, IPv4 and IPv6 apart, rather
// than as netip.Addr with its zone.
type Index struct {
	shards [clientShards]atomic.Pointer[shard]
	ready  atomic.Bool
	synced chan struct{} // closed with ready

	mu    sync.Mutex
	slots map[podKey]slot // the slot of each pod that claims an address
	pods  []pod           // what each pod claims now, by slot
	free  []slot          // slots of pods gone, to reuse
	// ipv6 holds the IPv6 address of each pod that has one: apart, so that
	// the pods of an IPv4 cluster carry no room for one.
	ipv6    map[slot][16]byte
	v4      claimants[uint32]
	v6      claimants[[16]byte]
	clients clientTable // the Client of every pod, once
}

// slot is a pod's place in Index.pods.
type slot uint32

// shard is what readers see of the addresses shardOf gives it: each one's
// winner.
type shard struct {
	v4 map[uint32]*Client
	v6 map[[16]byte]*Client
}

// Claim is a pod's claim to its IPs, with what decides between claimants.
type Claim struct {
	Namespace string
	// Created is the pod's creation time in Unix seconds, the granularity the
	// API server gives it.
	Created int64
	// IPs holds at most one address per family, as the API server validates
	// a pod's IPs; a further address of a family is ignored.
	IPs   []netip.Addr
	Marks reach.Marks // what Istio marked the pod with
}

// Client is what the query path learns of the pod holding an address.
type Client struct {
	Namespace string
	Marks     reach.Marks
}

// podKey is a pod's namespace/name key hashed: 16 bytes in place of the
// key's string. SHA-256 makes a collision, which would merge two pods'
// claims, as unlikely by design (a name chosen to collide with another pod's)
// as by accident.
type podKey [16]byte

func keyOf(key string) podKey {
	sum := sha256.Sum256([]byte(key))
	return podKey(sum[:16])
}

// shared is a Client and the number of pods holding it. Shards point to its
// Client, so a reader keeps it alive after the index has let it go.
type shared struct {
	Client
	pods int
}

// clientTable numbers the distinct Clients of the pods, so that a pod refers
// to its own in 4 bytes; a number is reused once its last pod is gone.
type clientTable struct {
	numbers map[Client]uint32
	byNum   []*shared // nil where free
	free    []uint32
}

// hold returns the number of client for one more pod.
func (t *clientTable) hold(client Client) uint32 {
	n, ok := t.numbers[client]
	if !ok {
		// A copy of the namespace, so that the index holds no part of a
		// decoded pod.
		client.Namespace = strings.Clone(client.Namespace)
		n = place(&t.byNum, &t.free, &shared{Client: client})
		t.numbers[client] = n
	}
	t.byNum[n].pods++
	return n
}

// place puts v in items at a number from free, the last one freed, or at
// the end when none is, and returns its number.
func place[T any, N ~uint32](items *[]T, free *[]N, v T) N {
	if last := len(*free) - 1; last >= 0 {
		n := (*free)[last]
		*free = (*free)[:last]
		(*items)[n] = v
		return n
	}
	*items = append(*items, v)
	return N(len(*items) - 1)
}

// release lets go of client n for one pod, and forgets it with its last.
func (t *clientTable) release(n uint32) {
	s := t.byNum[n]
	if s.pods--; s.pods == 0 {
		delete(t.numbers, s.Client)
		t.byNum[n] = nil
		t.free = append(t.free, n)
	}
}

// pod is what the index keeps of a pod that claims an address, 16 bytes: it
// claims an IPv6 address when it has one in Index.ipv6.
type pod struct {
	// created is the pod's creation time in Unix seconds (up to 2106; an
	// earlier time than 1970 counts as 1970).
	created uint32
	// tie is the start of the pod's key hash, which decides between pods
	// created in the same second.
	tie    uint32
	v4     uint32 // 0: no IPv4 address
	client uint32 // in Index.clients
}

// addresses returns the addresses of claim that the index keeps: the first
// of each family, and false when there is none. An unspecified address (0.0.0.0
// or ::) is no pod's, and is left out.
func addresses(claim *Claim) (v4 uint32, v6 [16]byte, hasV4, hasV6 bool) {
	for _, ip := range claim.IPs {
		switch {
		case ip.IsUnspecified():
		case ip.Is4() && !hasV4:
			v4, hasV4 = v4Of(ip), true
		case ip.Is6() && !hasV6:
			v6, hasV6 = ip.As16(), true
		}
	}
	return v4, v6, hasV4, hasV6
}

func v4Of(ip netip.Addr) uint32 {
	a := ip.As4()
	return binary.BigEndian.Uint32(a[:])
}

func addr4(v4 uint32) netip.Addr {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], v4)
	return netip.AddrFrom4(a)
}

// createdOf is a creation time in Unix seconds as pod.created keeps it.
func createdOf(unix int64) uint32 {
	return uint32(min(max(unix, 0), math.MaxUint32))
}

// wins reports whether pod p, in slot i, wins an IP over pod q, in slot j:
// the newest pod is the one the IP was given to last. Creation times have a
// granularity of a second, so on a tie the greater key hash wins: an
// arbitrary order, but one that is independent of event order and the same in
// every server. Only when the 4 bytes of hash kept tie too (one pair of
// same-second claimants in 2^32) do the slots decide: arbitrarily, and
// perhaps not alike in every server.
func wins(p pod, i slot, q pod, j slot) bool {
	if p.created != q.created {
		return p.created > q.created
	}
	if p.tie != q.tie {
		return p.tie > q.tie
	}
	return i > j
}

// claimants tracks the pods claiming each address of one family. An address
// is nearly always claimed by one pod, kept in one; only a reused address
// whose old pod's deletion has not arrived yet has more, kept in many. No
// address is in both.
type claimants[A comparable] struct {
	one  map[A]slot
	many map[A][]slot
}

func newClaimants[A comparable]() claimants[A] {
	return claimants[A]{one: make(map[A]slot), many: make(map[A][]slot)}
}

func (c *claimants[A]) add(a A, s slot) {
	if ss, ok := c.many[a]; ok {
		c.many[a] = append(ss, s)
	} else if other, ok := c.one[a]; ok {
		delete(c.one, a)
		c.many[a] = []slot{other, s}
	} else {
		c.one[a] = s
	}
}

// remove takes back the claim to a of the pod in slot s, which it made.
func (c *claimants[A]) remove(a A, s slot) {
	ss, ok := c.many[a]
	if !ok {
		delete(c.one, a) // s was its one claimant
		return
	}
	ss = slices.DeleteFunc(ss, func(o slot) bool { return o == s })
	if len(ss) == 1 {
		delete(c.many, a)
		c.one[a] = ss[0]
	} else {
		c.many[a] = ss
	}
}

// republish sets a's winner among c's claimants in m, a copy of a shard's map
// of a's family, or takes a out of m when no pod claims it.
func republish[A comparable](m map[A]*Client, a A, c *claimants[A], pods []pod, clients *clientTable) {
	if s, ok := c.one[a]; ok {
		m[a] = &clients.byNum[pods[s].client].Client
		return
	}
	ss := c.many[a]
	if len(ss) == 0 {
		delete(m, a)
		return
	}
	best := ss[0]
	for _, s := range ss[1:] {
		if wins(pods[s], s, pods[best], best) {
			best = s
		}
	}
	m[a] = &clients.byNum[pods[best].client].Client
}

func New() *Index {
	c := &Index{slots: make(map[podKey]slot), ipv6: make(map[slot][16]byte), v4: newClaimants[uint32](), v6: newClaimants[[16]byte](),
		clients: clientTable{numbers: make(map[Client]uint32)}, synced: make(chan struct{})}
	empty := &shard{v4: map[uint32]*Client{}, v6: map[[16]byte]*Client{}}
	for i := range c.shards {
		c.shards[i].Store(empty)
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
	s := c.shards[shardOf(ip)].Load()
	var client *Client
	if ip.Is4() {
		client = s.v4[v4Of(ip)]
	} else if ip.Is6() {
		client = s.v6[ip.As16()]
	}
	if client == nil {
		return Client{}
	}
	return *client
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

// Set replaces what the pod with key (namespace/name) claims by claim (nil:
// nothing, as for a deleted pod), then republishes the winners of the IPs it
// claimed before or claims now.
func (c *Index) Set(key string, claim *Claim) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.publish(c.setLocked(keyOf(key), claim, nil))
}

// Replace makes the pods of namespace ("" for every namespace) exactly those
// of claims, by key, and republishes the winners of every IP that changed
// hands at once: a full list costs one copy of each shard, not one per pod.
func (c *Index) Replace(namespace string, claims map[string]*Claim) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fresh := make(map[podKey]*Claim, len(claims))
	for key, claim := range claims {
		fresh[keyOf(key)] = claim
	}
	var touched []netip.Addr
	for k, s := range c.slots {
		if _, kept := fresh[k]; !kept && (namespace == "" || c.clients.byNum[c.pods[s].client].Namespace == namespace) {
			touched = c.setLocked(k, nil, touched)
		}
	}
	for k, claim := range fresh {
		touched = c.setLocked(k, claim, touched)
	}
	c.publish(touched)
}

// setLocked replaces the claim of the pod k and appends the IPs whose winner
// may have changed to touched.
func (c *Index) setLocked(k podKey, claim *Claim, touched []netip.Addr) []netip.Addr {
	s, had := c.slots[k]
	if had && c.sameClaim(s, claim) {
		return touched
	}
	if had {
		old := c.pods[s]
		delete(c.slots, k)
		c.pods[s] = pod{}
		c.free = append(c.free, s)
		c.clients.release(old.client)
		if old.v4 != 0 {
			c.v4.remove(old.v4, s)
			touched = append(touched, addr4(old.v4))
		}
		if v6, ok := c.ipv6[s]; ok {
			delete(c.ipv6, s)
			c.v6.remove(v6, s)
			touched = append(touched, netip.AddrFrom16(v6))
		}
	}
	if claim == nil {
		return touched
	}
	v4, v6, hasV4, hasV6 := addresses(claim)
	if !hasV4 && !hasV6 {
		return touched
	}
	p := pod{created: createdOf(claim.Created), tie: binary.BigEndian.Uint32(k[:4]), v4: v4,
		client: c.clients.hold(Client{Namespace: claim.Namespace, Marks: claim.Marks})}
	s = place(&c.pods, &c.free, p)
	c.slots[k] = s
	if hasV4 {
		c.v4.add(v4, s)
		touched = append(touched, addr4(v4))
	}
	if hasV6 {
		c.ipv6[s] = v6
		c.v6.add(v6, s)
		touched = append(touched, netip.AddrFrom16(v6))
	}
	return touched
}

// sameClaim says whether claim keeps what the index holds of the pod in slot
// s: most pod events are the kubelet's status updates, which change none of
// it, and they then copy no shard.
func (c *Index) sameClaim(s slot, claim *Claim) bool {
	p := c.pods[s]
	client := c.clients.byNum[p.client]
	if claim == nil || createdOf(claim.Created) != p.created || claim.Namespace != client.Namespace || claim.Marks != client.Marks {
		return false
	}
	v4, v6, hasV4, hasV6 := addresses(claim)
	old6, hadV6 := c.ipv6[s]
	return hasV4 == (p.v4 != 0) && v4 == p.v4 && hasV6 == hadV6 && v6 == old6
}

// publish copies the shards holding ips, only the map of each touched family,
// with each IP's winner. It runs under mu, so no other writer can replace a
// shard between the load and the store.
func (c *Index) publish(ips []netip.Addr) {
	var next [clientShards]*shard
	var copied4, copied6 [clientShards]bool // next's map of the family is its own
	for _, ip := range ips {
		s := shardOf(ip)
		sh := next[s]
		if sh == nil {
			cur := *c.shards[s].Load()
			sh = &cur
			next[s] = sh
		}
		if ip.Is4() {
			if !copied4[s] {
				sh.v4, copied4[s] = maps.Clone(sh.v4), true
			}
			republish(sh.v4, v4Of(ip), &c.v4, c.pods, &c.clients)
		} else {
			if !copied6[s] {
				sh.v6, copied6[s] = maps.Clone(sh.v6), true
			}
			republish(sh.v6, ip.As16(), &c.v6, c.pods, &c.clients)
		}
	}
	for s, sh := range next {
		if sh != nil {
			c.shards[s].Store(sh)
		}
	}
}

// Classes counts the pods of the index by class: what they route.
func (c *Index) Classes() map[reach.Class]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[reach.Class]int, 3)
	for _, s := range c.slots {
		out[c.clients.byNum[c.pods[s].client].Marks.Class()]++
	}
	return out
}
