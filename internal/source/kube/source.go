package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/podindex"
	"github.com/coredns-serviceentry/serviceentry/internal/source"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// discoveryBackoff spaces the attempts to find the ServiceEntry API: the API
// server down, or no Istio CRD yet (then at most every 30 s, as promised).
var discoveryBackoff = wait.Backoff{Duration: time.Second, Factor: 2, Cap: 30 * time.Second, Steps: math.MaxInt32}

// Config is what the Kubernetes source reads, and how.
type Config struct {
	Kubeconfig string // empty: the in-cluster service account
	Context    string
	Namespaces []string // empty: all
	Labels     string   // a label selector of ServiceEntries
	Convert    entry.Options
}

// Source reads ServiceEntries, and the WorkloadEntries headless entries
// select, with one client-go reflector per kind and namespace read (all, or
// those configured). It finds which API versions the cluster serves, then
// applies every add, update and delete to the sink as it arrives. The sink is
// the only cache the table needs: each event goes from the reflector's
// goroutine straight into it.
type Source struct {
	// lister lists and watches ServiceEntries of one namespace (all when
	// empty) through one version; workloadLister, WorkloadEntries.
	lister         func(namespace, version string) (listWatchFuncs, error)
	workloadLister func(namespace, version string) (listWatchFuncs, error)
	resources      resourceLister
	namespaces     []string // empty: all
	labels         string
	opts           entry.Options
	sink           source.Sink
	backoff        wait.Backoff // between discovery attempts
	// pods places clients in their namespaces with "exportto client"; nil
	// otherwise.
	pods *podSource

	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned
	lists  *listCalls    // the WorkloadEntry lists in progress, which stop waits for
}

// resourceLister lists the resources the API server serves in one group
// version. It must honour ctx, so that stop never waits for a request.
type resourceLister func(ctx context.Context, groupVersion string) (*metav1.APIResourceList, error)

// New returns a source reading what cfg says into sink and, when clients is
// not nil, the pods of the namespaces read into clients. Nothing runs until
// Start.
func New(cfg Config, sink source.Sink, clients *podindex.Index) (*Source, error) {
	restCfg, err := RESTConfig(cfg.Kubeconfig, cfg.Context)
	if err != nil {
		return nil, err
	}
	restCfg.UserAgent = "coredns-serviceentry"
	disco, err := discovery.NewDiscoveryClientForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("creating the discovery client: %w", err)
	}
	k := &Source{lister: slimLister(restCfg, false), workloadLister: slimLister(restCfg, true), resources: discoveryLister(disco.RESTClient()),
		namespaces: cfg.Namespaces, labels: cfg.Labels, opts: cfg.Convert, sink: sink, backoff: discoveryBackoff}
	if clients != nil {
		pods, err := kubernetes.NewForConfig(podConfig(cfg.Kubeconfig, restCfg))
		if err != nil {
			return nil, fmt.Errorf("creating Kubernetes client: %w", err)
		}
		k.pods = newPodSource(pods, cfg.Namespaces, cfg.Convert.DualStack, clients, sink)
		k.pods.workloads.awaitEntries()
	}
	return k, nil
}

// podConfig is how pods are read: the clients are the pods of the cluster the
// server runs in, so inside a pod they are read with the in-cluster account
// even when the entries come from another cluster's kubeconfig (a
// primary-remote mesh's config cluster); outside a pod, with the entries'
// config. Pods are read as protobuf, which decodes several times faster than
// JSON: a list holds every pod of the cluster.
func podConfig(kubeconfig string, entries *rest.Config) *rest.Config {
	c := entries
	if kubeconfig != "" {
		if in, err := rest.InClusterConfig(); err == nil {
			in.UserAgent = entries.UserAgent
			c = in
		}
	}
	c = rest.CopyConfig(c)
	c.ContentType = runtime.ContentTypeProtobuf
	c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	return c
}

// discoveryLister asks the API server's discovery endpoint with the caller's
// context (the discovery client's own methods take none).
func discoveryLister(rc rest.Interface) resourceLister {
	return func(ctx context.Context, groupVersion string) (*metav1.APIResourceList, error) {
		list := &metav1.APIResourceList{}
		raw, err := rc.Get().AbsPath("/apis", groupVersion).Do(ctx).Raw()
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(raw, list); err != nil {
			return nil, fmt.Errorf("decoding the discovery of %s: %w", groupVersion, err)
		}
		return list, nil
	}
}

// RESTConfig loads a kubeconfig (and context) when given, else the in-cluster
// service account.
func RESTConfig(kubeconfig, context string) (*rest.Config, error) {
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig given and not running in a cluster: %w", err)
		}
		return c, nil
	}
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}
	overrides := &clientcmd.ConfigOverrides{CurrentContext: context}
	c, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %s: %w", kubeconfig, err)
	}
	return c, nil
}

// entriesChanged tells the pod source, if any, which entries are stored under
// the keys of changes (nil: none any more): it reads the workloads of the
// namespaces where some entry selects them.
func (k *Source) entriesChanged(changes map[entry.Key]*entry.Entry) {
	if k.pods != nil {
		k.pods.entriesChanged(changes)
	}
}

// entriesRead tells the pod source, if any, that the first read of entries
// is in (or that there are none to read).
func (k *Source) entriesRead() {
	if k.pods != nil {
		k.pods.workloads.readEntries()
	}
}

// Start begins reading in the background.
func (k *Source) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	k.done = make(chan struct{})
	k.lists = &listCalls{}
	go k.run(ctx)
	if k.pods != nil {
		k.pods.start()
	}
	return nil
}

// Stop ends every goroutine of the source before it returns.
func (k *Source) Stop() {
	if k.cancel == nil {
		return
	}
	k.cancel()
	<-k.done
	k.lists.closeAndWait()
	k.cancel = nil
	if k.pods != nil {
		k.pods.stop()
	}
}

func (k *Source) run(ctx context.Context) {
	defer close(k.done)
	served, err := k.discover(ctx)
	if err != nil {
		return // cancelled
	}
	version := served.entries
	log.Infof("reading ServiceEntries through %s/%s", entry.Group, version)
	if served.workloads == "" {
		log.Warningf("the API server serves no WorkloadEntry resource (%s v1, v1beta1 or v1alpha3): headless ServiceEntries "+
			"answer without WorkloadEntries (install Istio's WorkloadEntry CRD and restart to read them)", entry.Group)
	} else {
		log.Infof("reading WorkloadEntries through %s/%s", entry.Group, served.workloads)
	}
	// An empty table may be served (no CRD until now): it keeps answering
	// until the first full read is complete.
	k.sink.BeginFullRead()

	namespaces := k.namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	var running sync.WaitGroup
	defer running.Wait()
	var synced []chan struct{}
	for _, ns := range namespaces {
		// A namespace that cannot be read makes the read incomplete: the
		// others are not published as if they were all there.
		r, rs, err := k.reader(ns, version)
		if err != nil {
			log.Errorf("%v; ServiceEntries are not served", err)
			return
		}
		running.Go(func() { r.RunWithContext(ctx) })
		synced = append(synced, rs.synced)
	}
	// The first table waits for the WorkloadEntries' first read too: a
	// headless entry published before it would answer with part of its
	// endpoints, as if the others had gone. But WorkloadEntries must never
	// hold up the ServiceEntries: when they cannot be read at all (not
	// served, or refused: RBAC without workloadentries), the plugin is ready
	// without them rather than never, and says why once (see
	// workloadStore.readResult); a reader refused keeps retrying, and what
	// it reads later arrives as changes.
	if served.workloads != "" {
		for _, ns := range namespaces {
			r, ws, err := k.workloadReader(ns, served.workloads)
			if err != nil {
				// Only a bad client configuration, which the
				// ServiceEntry readers, made with the same, would
				// have met first.
				log.Errorf("%v; WorkloadEntries are not read", err)
				break
			}
			running.Go(func() { r.RunWithContext(ctx) })
			synced = append(synced, ws.settled)
		}
	}
	for _, s := range synced {
		select {
		case <-s:
		case <-ctx.Done():
			return
		}
	}
	k.entriesRead()
	k.sink.MarkSynced()
	<-ctx.Done()
}

// reader reads one namespace (or all) through version into a readerStore,
// with the reflector's own context (a request hanging at the API server must
// not hold up stop).
func (k *Source) reader(namespace, version string) (*cache.Reflector, *readerStore, error) {
	lw, err := k.lister(namespace, version)
	if err != nil {
		return nil, nil, err
	}
	rs := newReaderStore(k, namespace)
	r := cache.NewReflectorWithOptions(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = k.labels
			obj, err := lw.list(ctx, o)
			k.readError(err)
			return obj, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = k.labels
			w, err := lw.watch(ctx, o)
			k.readError(err)
			return w, err
		},
	}, &entry.ServiceEntry{}, rs, cache.ReflectorOptions{Name: "serviceentry " + namespace, TypeDescription: "ServiceEntry"})
	return r, rs, nil
}

// listWatchFuncs list and watch ServiceEntries, giving *slimServiceEntry
// objects.
type listWatchFuncs struct {
	list  func(context.Context, metav1.ListOptions) (runtime.Object, error)
	watch func(context.Context, metav1.ListOptions) (watch.Interface, error)
}

// slimLister reads ServiceEntries (WorkloadEntries with workloads) with a
// REST client of our own scheme, so that they decode into entry.ServiceEntry
// (entry.WorkloadEntry), not Istio's generated types.
func slimLister(cfg *rest.Config, workloads bool) func(namespace, version string) (listWatchFuncs, error) {
	kind, resource := "ServiceEntry", "serviceentries"
	newList := func() runtime.Object { return &entry.ServiceEntryList{} }
	if workloads {
		kind, resource = "WorkloadEntry", "workloadentries"
		newList = func() runtime.Object { return &entry.WorkloadEntryList{} }
	}
	return func(namespace, version string) (listWatchFuncs, error) {
		c := rest.CopyConfig(cfg)
		c.GroupVersion = &schema.GroupVersion{Group: entry.Group, Version: version}
		c.APIPath = "/apis"
		c.ContentType = runtime.ContentTypeJSON
		c.AcceptContentTypes = runtime.ContentTypeJSON
		c.NegotiatedSerializer = slimNegotiator{NegotiatedSerializer: slimCodecs.WithoutConversion(), workloads: workloads}
		negotiator := runtime.NewClientNegotiator(c.NegotiatedSerializer, *c.GroupVersion)
		lists, err := rest.RESTClientFor(c)
		if err != nil {
			return listWatchFuncs{}, fmt.Errorf("creating the %s client for %s: %w", kind, version, err)
		}
		// Watches are opened with Stream (see watchStream), which the
		// client's rate limiter throttles; client-go's Watch is never
		// throttled, and neither are they, through a client without one.
		unthrottled := rest.CopyConfig(c)
		unthrottled.QPS, unthrottled.RateLimiter = -1, nil
		watches, err := rest.RESTClientFor(unthrottled)
		if err != nil {
			return listWatchFuncs{}, fmt.Errorf("creating the %s watch client for %s: %w", kind, version, err)
		}
		request := func(rc *rest.RESTClient, o *metav1.ListOptions) *rest.Request {
			var timeout time.Duration
			if o.TimeoutSeconds != nil {
				timeout = time.Duration(*o.TimeoutSeconds) * time.Second
			}
			return rc.Get().Namespace(namespace).Resource(resource).VersionedParams(o, slimParams).Timeout(timeout)
		}
		return listWatchFuncs{
			list: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				out := newList()
				if err := request(lists, &o).Do(ctx).Into(out); err != nil {
					return nil, err
				}
				return out, nil
			},
			watch: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				o.Watch = true
				return watchStream(ctx, request(watches, &o), negotiator, workloads)
			},
		}, nil
	}
}

// servedVersions are the versions the source reads each kind through; ""
// for a kind not served.
type servedVersions struct{ entries, workloads string }

// discover finds the newest ServiceEntry and WorkloadEntry versions the API
// server serves, retrying while the server is unreachable or serves no
// ServiceEntries. A cluster without Istio is a valid state, not an outage:
// the plugin then serves an empty table (and is ready) until the CRD appears.
// WorkloadEntries not served are no reason to wait: they are left unread.
func (k *Source) discover(ctx context.Context) (servedVersions, error) {
	var version servedVersions
	var lastErr string
	err := wait.ExponentialBackoffWithContext(ctx, k.backoff, func(ctx context.Context) (bool, error) {
		v, err := k.servedVersion(ctx)
		switch {
		case err == nil:
			version = v
			return true, nil
		case ctx.Err() != nil:
			return false, ctx.Err()
		case errors.Is(err, errNoServiceEntryAPI):
			if lastErr != err.Error() {
				log.Infof("%v; serving no ServiceEntries until it is (checking every %s at most)", err, k.backoff.Cap)
				k.entriesRead()
				k.sink.MarkSynced()
			}
		case lastErr != err.Error():
			log.Errorf("%v; retrying", err)
		}
		lastErr = err.Error()
		return false, nil
	})
	return version, err
}

var errNoServiceEntryAPI = errors.New("the API server serves no ServiceEntry resource (networking.istio.io v1, v1beta1 or v1alpha3): Istio's CRD is not installed")

// servedVersion finds the newest version serving each kind. WorkloadEntries
// share the group and, in Istio's CRDs, the versions: both are found in the
// same discovery answer, and older versions are asked only for what the
// newer ones lack.
func (k *Source) servedVersion(ctx context.Context) (servedVersions, error) {
	var found servedVersions
	serves := func(list *metav1.APIResourceList, resource string) bool {
		return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == resource })
	}
	for _, v := range entry.ServedVersions {
		if found.entries != "" && found.workloads != "" {
			break
		}
		list, err := k.resources(ctx, entry.Group+"/"+v)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return servedVersions{}, fmt.Errorf("discovering %s/%s: %w", entry.Group, v, err)
		}
		if found.entries == "" && serves(list, "serviceentries") {
			found.entries = v
		}
		if found.workloads == "" && serves(list, "workloadentries") {
			found.workloads = v
		}
	}
	if found.entries == "" {
		return servedVersions{}, errNoServiceEntryAPI
	}
	return found, nil
}

// readError makes a refused list or watch (RBAC above all) visible in
// CoreDNS's log with what the plugin needs. Other failures are the
// reflector's to retry and client-go's to log (a bare reflector keeps its
// own error handler): one more line per attempt would only add noise.
func (k *Source) readError(err error) {
	if apierrors.IsForbidden(err) {
		log.Errorf("reading ServiceEntries is forbidden: %v (the plugin needs get, list and watch on serviceentries.%s)", err, entry.Group)
	}
}
