package serviceentry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	networking "istio.io/api/networking/v1alpha3"
	clientv1 "istio.io/client-go/pkg/apis/networking/v1"
	clientv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	clientv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
	"istio.io/client-go/pkg/clientset/versioned"
	informers "istio.io/client-go/pkg/informers/externalversions"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const istioGroup = "networking.istio.io"

// servedVersions are the ServiceEntry API versions we can read, newest first:
// v1 from Istio 1.22, v1beta1 and v1alpha3 before. All share one schema.
var servedVersions = []string{"v1", "v1beta1", "v1alpha3"}

// discoveryRetry bounds how long we wait between attempts to find the
// ServiceEntry API (API server down, or no Istio CRD yet).
var discoveryRetry = struct{ first, max time.Duration }{time.Second, 30 * time.Second}

// kubeSource reads ServiceEntries through shared informers. It finds which API
// version the cluster serves, then applies every add, update and delete to the
// store as it arrives.
type kubeSource struct {
	client     versioned.Interface
	namespaces []string // empty: all
	labels     string
	opts       convertOptions
	store      *store

	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned
	synced chan struct{} // closed after the first full read
}

func newKubeSource(cfg *config, st *store) (*kubeSource, error) {
	restCfg, err := restConfig(cfg.kubeconfig, cfg.kubecontext)
	if err != nil {
		return nil, err
	}
	restCfg.UserAgent = "coredns-serviceentry"
	client, err := versioned.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("creating Istio client: %w", err)
	}
	return &kubeSource{client: client, namespaces: cfg.namespaces, labels: cfg.labels, opts: cfg.convert, store: st}, nil
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

func (k *kubeSource) start(timeout time.Duration) error {
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	k.done = make(chan struct{})
	k.synced = make(chan struct{})
	go k.run(ctx)
	select {
	case <-k.synced:
	case <-time.After(timeout):
		log.Warningf("ServiceEntries not read within startup_timeout %s; answering SERVFAIL and not ready until they are", timeout)
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
}

func (k *kubeSource) run(ctx context.Context) {
	defer close(k.done)
	version, err := k.discover(ctx)
	if err != nil {
		return // cancelled
	}
	log.Infof("reading ServiceEntries through %s/%s", istioGroup, version)

	namespaces := k.namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	var factories []informers.SharedInformerFactory
	var syncs []cache.InformerSynced
	for _, ns := range namespaces {
		f := informers.NewSharedInformerFactoryWithOptions(k.client, 0,
			informers.WithNamespace(ns),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = k.labels }),
			informers.WithTransform(k.toCached))
		inf := informerFor(f, version)
		if err := inf.SetWatchErrorHandler(k.watchError); err != nil {
			log.Errorf("setting the watch error handler: %v", err)
		}
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    k.apply,
			UpdateFunc: func(_, obj any) { k.apply(obj) },
			DeleteFunc: k.remove,
		}); err != nil {
			log.Errorf("adding the event handler: %v", err)
		}
		factories = append(factories, f)
		syncs = append(syncs, inf.HasSynced)
	}
	for _, f := range factories {
		f.Start(ctx.Done())
	}
	if cache.WaitForCacheSync(ctx.Done(), syncs...) {
		k.store.markSynced()
		close(k.synced)
	}
	<-ctx.Done()
	for _, f := range factories {
		f.Shutdown()
	}
}

// discover finds the newest ServiceEntry version the API server serves,
// retrying (with a clear log line) while the server is unreachable or has no
// Istio CRD.
func (k *kubeSource) discover(ctx context.Context) (string, error) {
	wait := discoveryRetry.first
	var lastErr string
	for {
		version, err := k.servedVersion()
		if err == nil {
			return version, nil
		}
		if msg := err.Error(); msg != lastErr {
			log.Errorf("%v; retrying", err)
			lastErr = msg
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, discoveryRetry.max)
	}
}

var errNoServiceEntryAPI = errors.New("the API server serves no ServiceEntry resource (networking.istio.io v1, v1beta1 or v1alpha3): is Istio's CRD installed?")

func (k *kubeSource) servedVersion() (string, error) {
	for _, v := range servedVersions {
		list, err := k.client.Discovery().ServerResourcesForGroupVersion(istioGroup + "/" + v)
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

func informerFor(f informers.SharedInformerFactory, version string) cache.SharedIndexInformer {
	switch version {
	case "v1beta1":
		return f.Networking().V1beta1().ServiceEntries().Informer()
	case "v1alpha3":
		return f.Networking().V1alpha3().ServiceEntries().Informer()
	default:
		return f.Networking().V1().ServiceEntries().Informer()
	}
}

// watchError makes list and watch failures (RBAC above all) visible in
// CoreDNS's log instead of only client-go's.
func (k *kubeSource) watchError(_ *cache.Reflector, err error) {
	if apierrors.IsForbidden(err) {
		log.Errorf("reading ServiceEntries is forbidden: %v (the plugin needs get, list and watch on serviceentries.%s)", err, istioGroup)
		return
	}
	log.Warningf("watching ServiceEntries: %v", err)
}

func (k *kubeSource) apply(obj any) {
	c, ok := obj.(*cachedEntry)
	if !ok {
		return
	}
	reportSkips(c.key(), c.skips)
	k.store.upsert(c.key(), c.entry)
}

func (k *kubeSource) remove(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	if c, ok := obj.(*cachedEntry); ok {
		k.store.upsert(c.key(), nil)
	}
}

// serviceEntryParts opens a ServiceEntry of any served version.
func serviceEntryParts(obj any) (*metav1.ObjectMeta, *networking.ServiceEntry, *networking.ServiceEntryStatus, bool) {
	switch se := obj.(type) {
	case *clientv1.ServiceEntry:
		return &se.ObjectMeta, &se.Spec, &se.Status, true
	case *clientv1beta1.ServiceEntry:
		return &se.ObjectMeta, &se.Spec, &se.Status, true
	case *clientv1alpha3.ServiceEntry:
		return &se.ObjectMeta, &se.Spec, &se.Status, true
	}
	return nil, nil, nil, false
}
