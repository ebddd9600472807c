package serviceentry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	clientv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	clientv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
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

// istioGroup is the API group of ServiceEntries, as Istio's client names it.
var istioGroup = clientv1.SchemeGroupVersion.Group

// servedVersions are the ServiceEntry API versions we can read, newest first:
// v1 from Istio 1.22, v1beta1 and v1alpha3 before. All share one schema.
var servedVersions = []string{clientv1.SchemeGroupVersion.Version, clientv1beta1.SchemeGroupVersion.Version, clientv1alpha3.SchemeGroupVersion.Version}

// discoveryBackoff spaces the attempts to find the ServiceEntry API: the API
// server down, or no Istio CRD yet (then at most every 30 s, as promised).
var discoveryBackoff = wait.Backoff{Duration: time.Second, Factor: 2, Cap: 30 * time.Second, Steps: math.MaxInt32}

// kubeSource reads ServiceEntries with one client-go reflector per namespace
// read (all, or those configured). It finds which API version the cluster
// serves, then applies every add, update and delete to the store as it
// arrives. A reflector rather than an informer: the store is the only cache
// the table needs, and each event goes from the reflector's goroutine
// straight into it, without an informer's queue, cache and handler
// goroutines.
type kubeSource struct {
	// lister lists and watches ServiceEntries of one namespace (all when
	// empty) through one version.
	lister     func(namespace, version string) (listWatchFuncs, error)
	resources  resourceLister
	namespaces []string // empty: all
	labels     string
	opts       convertOptions
	store      entrySink
	skips      *skipTally   // the store's
	backoff    wait.Backoff // between discovery attempts
	// pods places clients in their namespaces with "exportto client"; nil
	// otherwise.
	pods *podSource

	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned
}

// entrySink is what the source needs of the store.
type entrySink interface {
	upsert(key string, e *entry)
	upsertAll(changes map[string]*entry)
	beginFullRead()
	markSynced()
	table() *table
}

// resourceLister lists the resources the API server serves in one group
// version. It must honour ctx, so that stop never waits for a request.
type resourceLister func(ctx context.Context, groupVersion string) (*metav1.APIResourceList, error)

func newKubeSource(cfg *config, st *store) (*kubeSource, error) {
	restCfg, err := restConfig(cfg.kubeconfig, cfg.kubecontext)
	if err != nil {
		return nil, err
	}
	restCfg.UserAgent = "coredns-serviceentry"
	disco, err := discovery.NewDiscoveryClientForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("creating the discovery client: %w", err)
	}
	k := &kubeSource{lister: slimLister(restCfg), resources: discoveryLister(disco.RESTClient()),
		namespaces: cfg.namespaces, labels: cfg.labels, opts: cfg.convert, store: st, skips: &st.skipped, backoff: discoveryBackoff}
	if cfg.convert.exportTo == exportClient {
		pods, err := kubernetes.NewForConfig(restCfg)
		if err != nil {
			return nil, fmt.Errorf("creating Kubernetes client: %w", err)
		}
		st.clients = newClientIndex()
		k.pods = newPodSource(pods, cfg.namespaces, st.clients)
	}
	return k, nil
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

// restConfig loads a kubeconfig (and context) when given, else the in-cluster
// service account.
func restConfig(kubeconfig, context string) (*rest.Config, error) {
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

func (k *kubeSource) start() error {
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	k.done = make(chan struct{})
	go k.run(ctx)
	if k.pods != nil {
		k.pods.start()
	}
	return nil
}

func (k *kubeSource) stop() {
	if k.cancel == nil {
		return
	}
	k.cancel()
	<-k.done
	k.cancel = nil
	if k.pods != nil {
		k.pods.stop()
	}
}

func (k *kubeSource) run(ctx context.Context) {
	defer close(k.done)
	version, err := k.discover(ctx)
	if err != nil {
		return // cancelled
	}
	log.Infof("reading ServiceEntries through %s/%s", istioGroup, version)
	if k.store.table() != nil {
		// An empty table is served (no CRD until now): keep serving it
		// until the first full read is complete.
		k.store.beginFullRead()
	}

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
	for _, s := range synced {
		select {
		case <-s:
		case <-ctx.Done():
			return
		}
	}
	k.store.markSynced()
	<-ctx.Done()
}

// reader reads one namespace (or all) through version into a readerStore,
// with the reflector's own context (a request hanging at the API server must
// not hold up stop).
func (k *kubeSource) reader(namespace, version string) (*cache.Reflector, *readerStore, error) {
	lw, err := k.lister(namespace, version)
	if err != nil {
		return nil, nil, err
	}
	rs := newReaderStore(k)
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
	}, &slimServiceEntry{}, rs, cache.ReflectorOptions{Name: "serviceentry " + namespace, TypeDescription: "ServiceEntry"})
	return r, rs, nil
}

// listWatchFuncs list and watch ServiceEntries, giving *slimServiceEntry
// objects.
type listWatchFuncs struct {
	list  func(context.Context, metav1.ListOptions) (runtime.Object, error)
	watch func(context.Context, metav1.ListOptions) (watch.Interface, error)
}

// slimLister reads ServiceEntries with a REST client of our own scheme, so
// that they decode into slimServiceEntry, not Istio's generated types.
func slimLister(cfg *rest.Config) func(namespace, version string) (listWatchFuncs, error) {
	return func(namespace, version string) (listWatchFuncs, error) {
		c := rest.CopyConfig(cfg)
		c.GroupVersion = &schema.GroupVersion{Group: istioGroup, Version: version}
		c.APIPath = "/apis"
		c.ContentType = runtime.ContentTypeJSON
		c.AcceptContentTypes = runtime.ContentTypeJSON
		c.NegotiatedSerializer = slimNegotiator{slimCodecs.WithoutConversion()}
		rc, err := rest.RESTClientFor(c)
		if err != nil {
			return listWatchFuncs{}, fmt.Errorf("creating the ServiceEntry client for %s: %w", version, err)
		}
		request := func(o *metav1.ListOptions) *rest.Request {
			var timeout time.Duration
			if o.TimeoutSeconds != nil {
				timeout = time.Duration(*o.TimeoutSeconds) * time.Second
			}
			return rc.Get().Namespace(namespace).Resource("serviceentries").VersionedParams(o, slimParams).Timeout(timeout)
		}
		return listWatchFuncs{
			list: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				out := &slimServiceEntryList{}
				if err := request(&o).Do(ctx).Into(out); err != nil {
					return nil, err
				}
				return out, nil
			},
			watch: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				o.Watch = true
				return request(&o).Watch(ctx)
			},
		}, nil
	}
}

// discover finds the newest ServiceEntry version the API server serves,
// retrying while the server is unreachable or has no Istio CRD. A cluster
// without Istio is a valid state, not an outage: the plugin then serves an
// empty table (and is ready) until the CRD appears.
func (k *kubeSource) discover(ctx context.Context) (string, error) {
	var version, lastErr string
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
				k.store.markSynced()
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

func (k *kubeSource) servedVersion(ctx context.Context) (string, error) {
	for _, v := range servedVersions {
		list, err := k.resources(ctx, istioGroup+"/"+v)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("discovering %s/%s: %w", istioGroup, v, err)
		}
		if slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == "serviceentries" }) {
			return v, nil
		}
	}
	return "", errNoServiceEntryAPI
}

// readError makes a refused list or watch (RBAC above all) visible in
// CoreDNS's log with what the plugin needs. Other failures are the
// reflector's to retry and client-go's to log (a bare reflector keeps its
// own error handler): one more line per attempt would only add noise.
func (k *kubeSource) readError(err error) {
	if apierrors.IsForbidden(err) {
		log.Errorf("reading ServiceEntries is forbidden: %v (the plugin needs get, list and watch on serviceentries.%s)", err, istioGroup)
	}
}

// reasonInvalidObject: a ServiceEntry from the API server that Istio's own
// decoder would refuse whole (a resolution this build does not know), a value
// of the "reason" label of coredns_serviceentry_skipped_items_total.
const reasonInvalidObject = "invalid_object"
