package serviceentry

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// clientShardBits sets how many shards the index has. A pod event copies one
// shard, so more shards make writes cheaper at the cost of a larger index
// header; a power of two lets the hash pick a shard with a shift.
const clientShardBits = 6

const clientShards = 1 << clientShardBits

// clientIndex maps pod IPs to namespaces for the query path.
//
// Readers see a set of immutable maps, one per shard, each behind an atomic
// pointer, so a lookup takes no lock and allocates nothing. Writers hold mu,
// keep every live claim to an IP (a reused IP can be claimed by an old pod
// and a new one until the old one's deletion arrives), and after each event
// replace only the shards whose winners changed.
type clientIndex struct {
	shards [clientShards]atomic.Pointer[map[netip.Addr]string]
	ready  atomic.Bool

	mu     sync.Mutex
	pods   map[string]*podClaim       // by namespace/name: what each pod claims now
	claims map[netip.Addr][]*podClaim // by IP: every live claimant, nearly always one
}

// podClaim is a pod's claim to its IPs, with what decides between claimants.
type podClaim struct {
	namespace, name string
	created         time.Time
	ips             []netip.Addr
}

// newer reports whether c wins an IP over d: the newest pod is the one the IP
// was given to last. Creation times have a granularity of a second, so the
// name (then the namespace) breaks ties, to make the outcome independent of
// event order.
func (c *podClaim) newer(d *podClaim) bool {
	if !c.created.Equal(d.created) {
		return c.created.After(d.created)
	}
	if c.name != d.name {
		return c.name > d.name
	}
	return c.namespace > d.namespace
}

func newClientIndex() *clientIndex {
	c := &clientIndex{pods: make(map[string]*podClaim), claims: make(map[netip.Addr][]*podClaim)}
	empty := map[netip.Addr]string{}
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

// namespaceOf returns the namespace of the pod that holds ip, or "" when no
// known pod does (host-network pods, nodes, NodeLocal DNSCache, unknown, or
// before the pod informer has synced). It is on the query path, so it takes no
// lock and allocates nothing. ip may be an IPv4-mapped IPv6 address, as a
// dual-stack socket reports an IPv4 client.
func (c *clientIndex) namespaceOf(ip netip.Addr) string {
	if !c.ready.Load() {
		// Until the first list is complete a reused IP may still name the
		// pod it belonged to before: answering for no namespace is safer.
		return ""
	}
	ip = ip.Unmap()
	return (*c.shards[shardOf(ip)].Load())[ip]
}

func (c *clientIndex) markSynced() { c.ready.Store(true) }

// set replaces what the pod with key claims by claim (nil: nothing, as for a
// deleted pod), then republishes the winners of the IPs it claimed before or
// claims now.
func (c *clientIndex) set(key string, claim *podClaim) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var touched []netip.Addr
	if old := c.pods[key]; old != nil {
		for _, ip := range old.ips {
			rest := slices.DeleteFunc(c.claims[ip], func(d *podClaim) bool { return d == old })
			if len(rest) == 0 {
				delete(c.claims, ip)
			} else {
				c.claims[ip] = rest
			}
		}
		touched = append(touched, old.ips...)
		delete(c.pods, key)
	}
	if claim != nil && len(claim.ips) > 0 {
		c.pods[key] = claim
		for _, ip := range claim.ips {
			c.claims[ip] = append(c.claims[ip], claim)
		}
		touched = append(touched, claim.ips...)
	}
	c.publish(touched)
}

// publish copies the shards holding ips with each IP's winner. It runs under
// mu, so no other writer can replace a shard between the load and the store.
func (c *clientIndex) publish(ips []netip.Addr) {
	var next [clientShards]map[netip.Addr]string
	for _, ip := range ips {
		s := shardOf(ip)
		m := next[s]
		if m == nil {
			m = maps.Clone(*c.shards[s].Load())
			next[s] = m
		}
		if ns, ok := c.winner(ip); ok {
			m[ip] = ns
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

func (c *clientIndex) winner(ip netip.Addr) (string, bool) {
	var best *podClaim
	for _, claim := range c.claims[ip] {
		if best == nil || claim.newer(best) {
			best = claim
		}
	}
	if best == nil {
		return "", false
	}
	return best.namespace, true
}

// claimOf is what pod claims. The claim shares the pod's IPs: neither the
// cache nor the index changes them.
func claimOf(pod *clientPod) *podClaim {
	if len(pod.ips) == 0 {
		return nil
	}
	return &podClaim{namespace: pod.Namespace, name: pod.Name, created: pod.CreationTimestamp.Time, ips: pod.ips}
}

func podKey(pod *clientPod) string { return pod.Namespace + "/" + pod.Name }

// clientPod is what the pod informers keep of a pod. Their cache holds every
// pod of the cluster, and a corev1.Pod is large even when all but a few of its
// fields are empty, so the cache holds this instead.
type clientPod struct {
	// ObjectMeta holds the name, namespace and creation time, and the
	// resource version, which the informer compares to tell a change from a
	// resync (it hands resyncs only to handlers that asked for them);
	// nothing else. The informer's key function needs a metav1.Object,
	// which embedding ObjectMeta provides.
	metav1.ObjectMeta

	// ips are the addresses the pod claims, unmapped and each once: none for
	// a host-network pod (its IP is the node's, shared by every host-network
	// pod and the node itself) or a pod that has ended (its IP may already be
	// another pod's).
	ips []netip.Addr
}

var (
	_ runtime.Object = (*clientPod)(nil)
	_ metav1.Object  = (*clientPod)(nil)
)

// GetObjectKind is runtime.Object's: a clientPod is never encoded, so it
// carries no kind.
func (*clientPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject is runtime.Object's (client-go's cache mutation detector
// copies what the cache holds).
func (p *clientPod) DeepCopyObject() runtime.Object {
	c := &clientPod{ips: slices.Clone(p.ips)}
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return c
}

// podSource runs a Pod informer feeding the index.
type podSource struct {
	idx       *clientIndex
	informers []cache.SharedIndexInformer
	lists     *listCalls

	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned
}

// listCalls tracks the list requests in progress. client-go's reflector
// makes each list in a goroutine of its own and, when stopped, returns
// without waiting for it; stop waits for them here instead, so that no
// request outlives the source (they honour the cancelled context, so the wait
// is short).
type listCalls struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// begin reports whether a list may start; if so, end must follow. None may
// start once closing has begun, so every Add happens before the Wait.
func (l *listCalls) begin() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.wg.Add(1)
	return true
}

func (l *listCalls) end() { l.wg.Done() }

func (l *listCalls) closeAndWait() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.wg.Wait()
}

// newPodSource reads the pods of namespaces (empty: all). Nothing runs until
// start.
func newPodSource(client kubernetes.Interface, namespaces []string, idx *clientIndex) *podSource {
	p := &podSource{idx: idx, lists: &listCalls{}}
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	seen := make(map[string]bool, len(namespaces))
	for _, ns := range namespaces {
		// Two informers on one namespace would both deliver a pod's deletion,
		// and the second would find nothing to delete: harmless, but each
		// pod's memory would be held twice.
		if seen[ns] {
			continue
		}
		seen[ns] = true
		p.informers = append(p.informers, podInformer(client, ns, p.lists))
	}
	return p
}

// podInformer lists and watches with the informer's own context, so that a
// request hanging at the API server does not hold up stop.
func podInformer(client kubernetes.Interface, namespace string, lists *listCalls) cache.SharedIndexInformer {
	pods := client.CoreV1().Pods(namespace)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			if !lists.begin() {
				return nil, fmt.Errorf("listing pods in %q: %w", namespace, context.Canceled)
			}
			defer lists.end()
			return pods.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return pods.Watch(ctx, o)
		},
	}
	inf := cache.NewSharedIndexInformerWithOptions(lw, &corev1.Pod{}, cache.SharedIndexInformerOptions{})
	// Neither fails before the informer runs.
	_ = inf.SetTransform(stripPod)
	_ = inf.SetWatchErrorHandler(podWatchError)
	return inf
}

// stripPod is the informers' transform: it turns a decoded pod into the
// clientPod the cache keeps. The reflector has checked the decoded object's
// type (a *corev1.Pod) before; the cache, the event handlers and the
// tombstones of deleted pods see only clientPods. The informer may hand an
// object to it twice; a clientPod is returned as it is.
func stripPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	c := &clientPod{ObjectMeta: metav1.ObjectMeta{
		Name:              pod.Name,
		Namespace:         pod.Namespace,
		ResourceVersion:   pod.ResourceVersion,
		CreationTimestamp: pod.CreationTimestamp,
	}}
	if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return c, nil
	}
	add := func(s string) {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return // empty before the pod is scheduled; never malformed from an API server
		}
		ip = ip.Unmap()
		if !slices.Contains(c.ips, ip) {
			c.ips = append(c.ips, ip)
		}
	}
	add(pod.Status.PodIP)
	for _, p := range pod.Status.PodIPs {
		add(p.IP)
	}
	return c, nil
}

// podWatchError makes list and watch failures (RBAC above all) visible in
// CoreDNS's log instead of only client-go's.
func podWatchError(_ *cache.Reflector, err error) {
	if apierrors.IsForbidden(err) {
		log.Errorf("reading pods is forbidden: %v (exportto client needs list and watch on pods)", err)
		return
	}
	log.Warningf("watching pods: %v", err)
}

// start runs the informers in the background until stop. A source runs once:
// client-go's informers do not run again after they have been stopped.
func (p *podSource) start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.done = make(chan struct{})
	go p.run(ctx)
}

// stop returns once every goroutine start began has ended.
func (p *podSource) stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	<-p.done
	p.lists.closeAndWait()
	p.cancel = nil
}

func (p *podSource) run(ctx context.Context) {
	defer close(p.done)
	var running sync.WaitGroup
	defer running.Wait()
	handlers := cache.ResourceEventHandlerFuncs{
		AddFunc:    p.apply,
		UpdateFunc: func(_, obj any) { p.apply(obj) },
		DeleteFunc: p.remove,
	}
	var handled []cache.InformerSynced
	for _, inf := range p.informers {
		reg, err := inf.AddEventHandler(handlers)
		if err != nil {
			log.Errorf("adding the pod event handler: %v", err)
			continue
		}
		running.Go(func() { inf.RunWithContext(ctx) })
		// The registration has synced once our handler has been given the
		// whole initial list, which is when the index is complete.
		handled = append(handled, reg.HasSynced)
	}
	if cache.WaitForCacheSync(ctx.Done(), handled...) {
		p.idx.markSynced()
	}
	<-ctx.Done()
}

// apply sets the pod's claim from its latest state. An update needs nothing
// of the old object: the index remembers what the pod claimed before.
func (p *podSource) apply(obj any) {
	if pod, ok := obj.(*clientPod); ok {
		p.idx.set(podKey(pod), claimOf(pod))
	}
}

// remove drops a deleted pod's claim. A tombstone's key is the cache's key of
// the pod, whatever the final state it carries.
func (p *podSource) remove(obj any) {
	switch o := obj.(type) {
	case *clientPod:
		p.idx.set(podKey(o), nil)
	case cache.DeletedFinalStateUnknown:
		p.idx.set(o.Key, nil)
	}
}
