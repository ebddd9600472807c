package kube

import (
	"context"
	"fmt"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/podindex"
	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/coredns-serviceentry/serviceentry/internal/source"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// podClaim is a pod as the pod reader hands it on: its key, its claim and
// its workload, converted in the reflector's transform so that nothing holds
// a decoded pod past its event. One watch serves both uses: the client index
// (who asks) and the workloads headless entries select (who answers).
type podClaim struct {
	keyed
	version  string          // the pod's resource version
	claim    *podindex.Claim // nil: the pod claims no address
	workload *entry.Workload // never nil: every pod is a workload, with no address while not ready
	problems []entry.Skip    // odd Istio marks, reported once per change
}

// DeepCopyObject makes podClaim a runtime.Object. The claim is immutable
// once converted, so sharing it is a deep copy.
func (p *podClaim) DeepCopyObject() runtime.Object {
	out := *p
	return &out
}

// toClaim is the pod reflectors' transform: what the index and the store
// need of a pod. A pod that has ended, or runs on the host network (its
// address is the node's, shared by every host-network pod and the node
// itself), claims no address; it is still a workload (entry.ConvertPod
// decides its addresses, every podIPs with dualStack). An object already
// converted passes through unchanged.
func toClaim(obj any, dualStack bool) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	w := entry.ConvertPod(pod, dualStack)
	// The key is the workload's, not a copy: one string per pod.
	p := &podClaim{keyed: keyed{w.Key.Name}, version: pod.ResourceVersion, workload: w}
	if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return p, nil
	}
	claim := &podindex.Claim{Namespace: pod.Namespace, Created: pod.CreationTimestamp.Unix()}
	add := func(s string) {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return // empty before the pod is scheduled
		}
		if ip = ip.Unmap(); !slices.Contains(claim.IPs, ip) {
			claim.IPs = append(claim.IPs, ip)
		}
	}
	add(pod.Status.PodIP)
	for _, ip := range pod.Status.PodIPs {
		add(ip.IP)
	}
	if len(claim.IPs) == 0 {
		return p, nil
	}
	var problems []reach.Problem
	claim.Marks, problems = reach.MarksOf(pod)
	for _, pr := range problems {
		p.problems = append(p.problems, entry.Skip{Reason: pr.Reason, Item: pr.Item})
	}
	p.claim = claim
	return p, nil
}

// podStore is the store of one namespace's pod reflector: it takes each
// change straight to the index, and each pod's workload to workloads, which
// hands on those the sink needs. It keeps only the problems of the pods that
// have some, so that each is reported when it first appears.
type podStore struct {
	namespace string // "" for all
	dualStack bool   // a pod's workload has every podIPs, not only podIP
	idx       *podindex.Index
	workloads *podWorkloads
	sink      source.Sink
	problems  map[string][]entry.Skip
	synced    chan struct{} // closed by the first Replace: the namespace is read whole
}

func newPodStore(namespace string, dualStack bool, idx *podindex.Index, workloads *podWorkloads, sink source.Sink) *podStore {
	return &podStore{namespace: namespace, dualStack: dualStack, idx: idx, workloads: workloads, sink: sink,
		problems: make(map[string][]entry.Skip), synced: make(chan struct{})}
}

func (s *podStore) Transformer() cache.TransformFunc {
	return func(obj any) (any, error) { return toClaim(obj, s.dualStack) }
}

func (s *podStore) Add(obj any) error { return s.Update(obj) }

func (s *podStore) Update(obj any) error {
	p, err := s.claimOf(obj)
	if err != nil {
		return err
	}
	s.note(p)
	s.idx.Set(p.key, p.claim)
	s.workloads.changed(p.key, p.workload, p.version)
	return nil
}

func (s *podStore) Delete(obj any) error {
	p, err := s.claimOf(obj)
	if err != nil {
		return err
	}
	delete(s.problems, p.key)
	s.idx.Set(p.key, nil)
	s.workloads.changed(p.key, nil, p.version)
	return nil
}

// Replace is a full list of the namespace, the first one or a relist: the
// index and the workloads of the namespace become what it holds.
func (s *podStore) Replace(list []any, version string) error {
	claims := make(map[string]*podindex.Claim, len(list))
	listed := make([]*podClaim, 0, len(list))
	for _, obj := range list {
		p, err := s.claimOf(obj)
		if err != nil {
			return err
		}
		s.note(p)
		if p.claim != nil {
			claims[p.key] = p.claim
		}
		listed = append(listed, p)
	}
	s.idx.Replace(s.namespace, claims)
	s.workloads.replaced(s.namespace, listed, version)
	select {
	case <-s.synced:
	default:
		close(s.synced)
	}
	return nil
}

func (s *podStore) Resync() error { return nil }

// note reports p's problems when they are new for its pod.
func (s *podStore) note(p *podClaim) {
	prev, had := s.problems[p.key]
	if len(p.problems) == 0 {
		delete(s.problems, p.key)
		return
	}
	if !had || !slices.Equal(prev, p.problems) {
		s.sink.Skipped("Pod "+p.key, p.problems)
	}
	s.problems[p.key] = p.problems
}

func (s *podStore) claimOf(obj any) (*podClaim, error) {
	out, err := toClaim(obj, s.dualStack)
	if err != nil {
		return nil, err
	}
	p, ok := out.(*podClaim)
	if !ok {
		return nil, fmt.Errorf("unexpected object %T from the pod reader", out)
	}
	return p, nil
}

// podReflector reads the pods of one namespace (or all) into s, listing and
// watching with the reflector's own context, so that a request hanging at the
// API server does not hold up stop.
func podReflector(client kubernetes.Interface, s *podStore, lists *listCalls) *cache.Reflector {
	pods := client.CoreV1().Pods(s.namespace)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			if !lists.begin() {
				return nil, fmt.Errorf("listing pods in %q: %w", s.namespace, context.Canceled)
			}
			defer lists.end()
			list, err := pods.List(ctx, o)
			podReadError(err)
			return list, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := pods.Watch(ctx, o)
			podReadError(err)
			return w, err
		},
	}
	return cache.NewReflectorWithOptions(lw, &corev1.Pod{}, s, cache.ReflectorOptions{Name: "serviceentry pods " + s.namespace, TypeDescription: "Pod"})
}

// podReadError makes a refused list or watch (RBAC above all) visible in
// CoreDNS's log with what the plugin needs; the reflector retries and
// client-go logs the rest.
func podReadError(err error) {
	if apierrors.IsForbidden(err) {
		log.Errorf("reading pods is forbidden: %v (the plugin needs list and watch on pods to tell what each client routes)", err)
	}
}

// podSource reads the pods of some namespaces (or all) into the index with one
// reflector per namespace, the same way the ServiceEntries are read: the
// index is the only cache, and a pod's event goes from the reflector straight
// into it.
type podSource struct {
	idx       *podindex.Index
	stores    []*podStore
	workloads *podWorkloads
	client    kubernetes.Interface
	lists     *listCalls

	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned
}

// newPodSource reads the pods of namespaces (empty: all) into idx and the
// workloads of those in namespaces where an entry selects (entriesChanged)
// into sink (every podIPs with dualStack), reporting odd Istio marks to
// sink. Nothing runs until start.
func newPodSource(client kubernetes.Interface, namespaces []string, dualStack bool, idx *podindex.Index, sink source.Sink) *podSource {
	p := &podSource{idx: idx, client: client, lists: &listCalls{}}
	p.workloads = newPodWorkloads(sink, func(ctx context.Context, ns string) (map[entry.Key]*entry.Workload, string, error) {
		return listWorkloads(ctx, client, ns, dualStack)
	})
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	for _, ns := range namespaces {
		// Two reflectors on one namespace would replace each other's pods.
		if !slices.ContainsFunc(p.stores, func(s *podStore) bool { return s.namespace == ns }) {
			p.stores = append(p.stores, newPodStore(ns, dualStack, idx, p.workloads, sink))
		}
	}
	return p
}

// listWorkloads lists the pods of ns as workloads (a namespace's fill), with
// the list's resource version; the most recent one, so that no event the
// watch delivered before the fill began is newer.
func listWorkloads(ctx context.Context, client kubernetes.Interface, ns string, dualStack bool) (map[entry.Key]*entry.Workload, string, error) {
	list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	podReadError(err)
	if err != nil {
		return nil, "", err
	}
	pods := make(map[entry.Key]*entry.Workload, len(list.Items))
	for i := range list.Items {
		w := entry.ConvertPod(&list.Items[i], dualStack)
		pods[w.Key] = w
	}
	return pods, list.ResourceVersion, nil
}

// entriesChanged tells the source which entries are stored under the keys of
// changes (nil: none any more), so that it reads the workloads of the
// namespaces where some entry selects.
func (p *podSource) entriesChanged(changes map[entry.Key]*entry.Entry) {
	p.workloads.entriesChanged(changes)
}

// start runs the reflectors in the background until stop.
func (p *podSource) start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.done = make(chan struct{})
	p.workloads.start()
	go p.run(ctx)
}

// stop returns once every goroutine start began has ended, lists in
// progress included.
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
	running.Go(func() { p.workloads.run(ctx) })
	for _, s := range p.stores {
		r := podReflector(p.client, s, p.lists)
		running.Go(func() { r.RunWithContext(ctx) })
	}
	for _, s := range p.stores {
		select {
		case <-s.synced:
		case <-ctx.Done():
			return
		}
	}
	// Synced means every client is placed and every selecting entry has
	// its pods.
	select {
	case <-p.workloads.settled:
	case <-ctx.Done():
		return
	}
	p.idx.MarkSynced()
	// The first lists leave behind the garbage of every pod decoded at
	// once, many times the index: returned to the OS now, the resident
	// size follows the index rather than the startup peak (as the store
	// does for the first read of entries).
	debug.FreeOSMemory()
	<-ctx.Done()
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
