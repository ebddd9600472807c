// Command watchfloor watches ServiceEntries or pods and does nothing with
// them but count the changes: the scale benchmarks run it beside CoreDNS
// through the same updates, so that CoreDNS's CPU per update can be read
// against what any client of the same watch pays on the same machine.
//
// With -mode raw it reads the watch's stream undecoded, in the plugin's
// encoding (JSON for ServiceEntries, protobuf for pods): the HTTP/2 and TLS
// reads and the goroutine woken for each event, which no client avoids.
// With -mode informer it runs client-go's shared informer with the typed
// clientset (Istio's, or Kubernetes' in protobuf) and a handler that only
// counts, as a controller such as istiod does.
//
// It prints "synced" once its watch is open (and, for the informer, its
// first list read), then "changes N" after every 100th change it sees.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"os/signal"
	"sync/atomic"
	"syscall"

	"istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server (required)")
	resource := flag.String("resource", "serviceentries", "serviceentries or pods")
	namespace := flag.String("namespace", "", "namespace watched; every one if empty")
	mode := flag.String("mode", "raw", "raw: the watch's stream read undecoded; informer: client-go's typed informer")
	flag.Parse()
	if *kubeconfig == "" {
		log.Fatal("-kubeconfig is required")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("kubeconfig: %v", err)
	}
	cfg.QPS, cfg.Burst = -1, 0 // as the plugin's readers: no client-side rate limit
	var w watched
	switch *resource {
	case "serviceentries":
		w, err = serviceEntries(cfg, *namespace)
	case "pods":
		w, err = pods(cfg, *namespace)
	default:
		err = fmt.Errorf("-resource: %q is neither serviceentries nor pods", *resource)
	}
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var changes counter
	switch *mode {
	case "raw":
		err = watchRaw(ctx, w, &changes)
	case "informer":
		err = watchInformer(ctx, w, &changes)
	default:
		err = fmt.Errorf("-mode: %q is neither raw nor informer", *mode)
	}
	if err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}

// watched is one resource as each mode reads it.
type watched struct {
	client    rest.Interface
	resource  string
	namespace string
	// latest returns the resource's current resource version.
	latest func(ctx context.Context) (string, error)
	// accept is the stream's media type; events counts its changes.
	accept string
	events func(stream *bufio.Reader, changes *counter) error
	// informer is the typed informer of the resource, and the factory's
	// Start and Shutdown.
	informer func() (cache.SharedIndexInformer, func(stop <-chan struct{}), func())
}

func serviceEntries(cfg *rest.Config, namespace string) (watched, error) {
	client, err := versioned.NewForConfig(cfg)
	if err != nil {
		return watched{}, fmt.Errorf("client: %w", err)
	}
	return watched{
		client: client.NetworkingV1().RESTClient(), resource: "serviceentries", namespace: namespace,
		latest: func(ctx context.Context) (string, error) {
			list, err := client.NetworkingV1().ServiceEntries(namespace).List(ctx, metav1.ListOptions{Limit: 1})
			return list.GetResourceVersion(), err
		},
		accept: runtime.ContentTypeJSON,
		events: jsonModified,
		informer: func() (cache.SharedIndexInformer, func(<-chan struct{}), func()) {
			f := istioinformers.NewSharedInformerFactoryWithOptions(client, 0, istioinformers.WithNamespace(namespace))
			return f.Networking().V1().ServiceEntries().Informer(), f.Start, f.Shutdown
		},
	}, nil
}

func pods(cfg *rest.Config, namespace string) (watched, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return watched{}, fmt.Errorf("client: %w", err)
	}
	return watched{
		client: client.CoreV1().RESTClient(), resource: "pods", namespace: namespace,
		latest: func(ctx context.Context) (string, error) {
			list, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{Limit: 1})
			return list.GetResourceVersion(), err
		},
		accept: runtime.ContentTypeProtobuf + ";stream=watch",
		events: protobufFrames,
		informer: func() (cache.SharedIndexInformer, func(<-chan struct{}), func()) {
			f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace))
			return f.Core().V1().Pods().Informer(), f.Start, f.Shutdown
		},
	}, nil
}

// counter prints the count of changes seen every hundredth one.
type counter struct{ n atomic.Int64 }

func (c *counter) add() {
	if n := c.n.Add(1); n%100 == 0 {
		fmt.Printf("changes %d\n", n)
	}
}

// watchRaw opens a watch from the resource's current version (so that no
// existing object comes as an event) and counts its changes undecoded.
func watchRaw(ctx context.Context, w watched, changes *counter) error {
	version, err := w.latest(ctx)
	if err != nil {
		return fmt.Errorf("listing the resource version: %w", err)
	}
	body, err := w.client.Get().Namespace(w.namespace).Resource(w.resource).SetHeader("Accept", w.accept).
		Param("watch", "true").Param("resourceVersion", version).Stream(ctx)
	if err != nil {
		return fmt.Errorf("opening the watch: %w", err)
	}
	defer body.Close()
	fmt.Println("synced")
	return w.events(bufio.NewReaderSize(body, 64<<10), changes)
}

// jsonModified counts the MODIFIED events of a JSON watch stream, one per
// line, with the type written first.
func jsonModified(stream *bufio.Reader, changes *counter) error {
	modified := []byte(`{"type":"MODIFIED"`)
	for {
		line, err := stream.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			return fmt.Errorf("reading the watch: %w", err)
		}
		if bytes.HasPrefix(line, modified) {
			changes.add()
		}
	}
}

// protobufFrames counts the events of a protobuf watch stream, each a frame
// behind its 4-byte length. A watch without bookmarks, from the current
// version, sends only the changes made after it opened.
func protobufFrames(stream *bufio.Reader, changes *counter) error {
	var size [4]byte
	for {
		if _, err := io.ReadFull(stream, size[:]); err != nil {
			return fmt.Errorf("reading the watch: %w", err)
		}
		if _, err := stream.Discard(int(binary.BigEndian.Uint32(size[:]))); err != nil {
			return fmt.Errorf("reading the watch: %w", err)
		}
		changes.add()
	}
}

// watchInformer runs the typed informer and counts its updates.
func watchInformer(ctx context.Context, w watched, changes *counter) error {
	informer, start, shutdown := w.informer()
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, _ any) { changes.add() }}); err != nil {
		return fmt.Errorf("adding the handler: %w", err)
	}
	start(ctx.Done())
	defer shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return fmt.Errorf("the informer did not sync: %w", ctx.Err())
	}
	fmt.Println("synced")
	<-ctx.Done()
	return nil
}
