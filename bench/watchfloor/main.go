// Command watchfloor watches the ServiceEntries of one namespace and does
// nothing with them but count the changes: BenchmarkScale runs it beside
// CoreDNS through the same updates, so that CoreDNS's CPU per update can be
// read against what any client of the same watch pays on the same machine.
//
// With -mode raw it reads the watch's stream undecoded: the HTTP/2 and TLS
// reads and the goroutine woken for each event, which no client avoids.
// With -mode informer it runs client-go's shared informer with Istio's
// typed clientset and a handler that only counts, as a controller such as
// istiod does.
//
// It prints "synced" once its watch is open (and, for the informer, its
// first list read), then "changes N" after every 100th change it sees.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"os/signal"
	"sync/atomic"
	"syscall"

	"istio.io/client-go/pkg/clientset/versioned"
	"istio.io/client-go/pkg/informers/externalversions"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server (required)")
	namespace := flag.String("namespace", "", "namespace whose ServiceEntries are watched (required)")
	mode := flag.String("mode", "raw", "raw: the watch's stream read undecoded; informer: client-go's typed informer")
	flag.Parse()
	if *kubeconfig == "" || *namespace == "" {
		log.Fatal("-kubeconfig and -namespace are required")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("kubeconfig: %v", err)
	}
	cfg.QPS, cfg.Burst = -1, 0 // as the plugin's reader: no client-side rate limit
	client, err := versioned.NewForConfig(cfg)
	if err != nil {
		log.Fatalf("client: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch *mode {
	case "raw":
		err = watchRaw(ctx, client, *namespace)
	case "informer":
		err = watchInformer(ctx, client, *namespace)
	default:
		err = fmt.Errorf("-mode: %q is neither raw nor informer", *mode)
	}
	if err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}

// counter prints the count of changes seen every hundredth one.
type counter struct{ n atomic.Int64 }

func (c *counter) add() {
	if n := c.n.Add(1); n%100 == 0 {
		fmt.Printf("changes %d\n", n)
	}
}

// watchRaw opens a watch from the namespace's current resource version (so
// that no existing entry comes as an event) and counts its MODIFIED events,
// one per line of the API server's JSON stream.
func watchRaw(ctx context.Context, client versioned.Interface, namespace string) error {
	list, err := client.NetworkingV1().ServiceEntries(namespace).List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return fmt.Errorf("listing the resource version: %w", err)
	}
	body, err := client.NetworkingV1().RESTClient().Get().Namespace(namespace).Resource("serviceentries").
		Param("watch", "true").Param("resourceVersion", list.ResourceVersion).Stream(ctx)
	if err != nil {
		return fmt.Errorf("opening the watch: %w", err)
	}
	defer body.Close()
	fmt.Println("synced")
	var changes counter
	lines := bufio.NewReaderSize(body, 64<<10)
	modified := []byte(`{"type":"MODIFIED"`) // the API server writes the type first
	for {
		line, err := lines.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			return fmt.Errorf("reading the watch: %w", err)
		}
		if bytes.HasPrefix(line, modified) {
			changes.add()
		}
	}
}

// watchInformer runs a shared informer on the namespace and counts updates.
func watchInformer(ctx context.Context, client versioned.Interface, namespace string) error {
	factory := externalversions.NewSharedInformerFactoryWithOptions(client, 0, externalversions.WithNamespace(namespace))
	informer := factory.Networking().V1().ServiceEntries().Informer()
	var changes counter
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, _ any) { changes.add() }}); err != nil {
		return fmt.Errorf("adding the handler: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return fmt.Errorf("the informer did not sync: %w", ctx.Err())
	}
	fmt.Println("synced")
	<-ctx.Done()
	factory.Shutdown()
	return nil
}
