package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/sourcetest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/streaming"
	"k8s.io/apimachinery/pkg/watch"
	restclientwatch "k8s.io/client-go/rest/watch"
)

// watchNegotiator is the negotiator of the source's client of one kind, as
// slimLister builds it.
func watchNegotiator(workloads bool) runtime.ClientNegotiator {
	return runtime.NewClientNegotiator(slimNegotiator{NegotiatedSerializer: slimCodecs.WithoutConversion(), workloads: workloads},
		schema.GroupVersion{Group: entry.Group, Version: "v1"})
}

// decodedEvent is one result of a watch decoder.
type decodedEvent struct {
	typ watch.EventType
	obj runtime.Object
	err string
}

// errText is err as the stream watcher reports it: io.EOF and
// io.ErrUnexpectedEOF apart, any other by its text.
func errText(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected EOF"
	}
	return err.Error()
}

// decodeStream decodes stream with the source's decoder (ours) and with
// client-go's, each up to its first error.
func decodeStream(t testing.TB, stream string, workloads bool) (ours, clientGo []decodedEvent) {
	t.Helper()
	neg := watchNegotiator(workloads)
	d, err := newEventDecoder(io.NopCloser(strings.NewReader(stream)), neg, workloads)
	if err != nil {
		t.Fatal(err)
	}
	object, envelope, framer, err := neg.StreamDecoder(runtime.ContentTypeJSON, nil)
	if err != nil {
		t.Fatal(err)
	}
	reference := restclientwatch.NewDecoder(streaming.NewDecoder(framer.NewFrameReader(io.NopCloser(strings.NewReader(stream))), envelope), object)
	all := func(d watch.Decoder) []decodedEvent {
		var out []decodedEvent
		for {
			typ, obj, err := d.Decode()
			out = append(out, decodedEvent{typ, obj, errText(err)})
			if err != nil {
				return out
			}
		}
	}
	return all(d), all(reference)
}

func watchEvent(typ, object string) string {
	return fmt.Sprintf(`{"type":%q,"object":%s}`, typ, object)
}

// TestEventDecoderMatchesClientGo: the source's watch decoder gives what
// client-go's gives (the same events and objects, and errors where it has
// one) on the streams the API server writes, on an indented one, and on
// events it leaves to client-go's decoders (an ERROR event, another kind, an
// unserved version, a value the slim type does not fit).
func TestEventDecoderMatchesClientGo(t *testing.T) {
	status := `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (2)","reason":"Expired","code":410}`
	bookmark := `{"kind":"ServiceEntry","apiVersion":"networking.istio.io/v1","metadata":{"resourceVersion":"9",` +
		`"annotations":{"k8s.io/initial-events-end":"true"}}}`
	indented := "{\n  \"type\": \"ADDED\",\n  \"object\": " + strings.ReplaceAll(watchedObject(3), `,"`, ",\n    \"") + "\n}\n"
	for _, c := range []struct {
		name      string
		stream    string
		workloads bool
		events    int // before the stream's end or error
	}{
		{name: "one event per line", stream: watchEvent("ADDED", watchedObject(1)) + "\n" + watchEvent("MODIFIED", watchedObject(2)) + "\n" +
			watchEvent("DELETED", watchedObject(1)) + "\n" + watchEvent("BOOKMARK", bookmark) + "\n", events: 4},
		{name: "blank lines and no final newline", stream: "\n" + watchEvent("ADDED", watchedObject(1)) + "\n\n  \n" + watchEvent("ADDED", watchedObject(2)), events: 2},
		{name: "indented", stream: indented + indented, events: 2},
		{name: "ERROR with a Status larger than client-go's first buffer", stream: watchEvent("ERROR",
			strings.Replace(status, "too old", strings.Repeat("very ", 300)+"old", 1)) + "\n", events: 1},
		{name: "ERROR with a Status", stream: watchEvent("ADDED", watchedObject(1)) + "\n" + watchEvent("ERROR", status) + "\n", events: 2},
		{name: "cut inside an event", stream: watchEvent("ADDED", watchedObject(1)) + "\n" + watchEvent("ADDED", watchedObject(2))[:200], events: 1},
		{name: "another kind", stream: watchEvent("ADDED", strings.Replace(watchedObject(1), `"kind":"ServiceEntry"`, `"kind":"Pod"`, 1)) + "\n"},
		{name: "an unserved version", stream: watchEvent("ADDED", strings.Replace(watchedObject(1), "networking.istio.io/v1", "networking.istio.io/v9", 1)) + "\n"},
		{name: "an unknown event type", stream: watchEvent("CHANGED", watchedObject(1)) + "\n"},
		{name: "a spec the slim type does not fit", stream: watchEvent("ADDED", strings.Replace(watchedObject(1), `"ports":[`, `"ports":7,"x":[`, 1)) + "\n"},
		{name: "not an object", stream: "[1,2]\n"},
		{name: "WorkloadEntries", stream: watchEvent("ADDED", apiWorkloadEntry("ns", "a", "10.0.0.1")) + "\n" + watchEvent("ERROR", status) + "\n", workloads: true, events: 2},
		{name: "a ServiceEntry on the WorkloadEntry client", stream: watchEvent("ADDED", watchedObject(1)) + "\n", workloads: true, events: 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			ours, clientGo := decodeStream(t, c.stream, c.workloads)
			if !reflect.DeepEqual(ours, clientGo) {
				t.Fatalf("ours:\n%s\nclient-go's:\n%s", describe(ours), describe(clientGo))
			}
			if got := len(ours) - 1; got != c.events {
				t.Errorf("%d events before %q, want %d", got, ours[len(ours)-1].err, c.events)
			}
		})
	}
}

func describe(events []decodedEvent) string {
	var b strings.Builder
	for _, e := range events {
		fmt.Fprintf(&b, "  %s %T %+v %s\n", e.typ, e.obj, e.obj, e.err)
	}
	return b.String()
}

// TestEventDecoderOnePass: the source's own kinds do not go through
// client-go's decoders (their failing would fail the event), and an ERROR
// event does.
func TestEventDecoderOnePass(t *testing.T) {
	d, err := newEventDecoder(io.NopCloser(strings.NewReader(watchEvent("ADDED", watchedObject(1))+"\n"+watchEvent("ERROR", `{"kind":"Status","apiVersion":"v1","code":410}`)+"\n")), watchNegotiator(false), false)
	if err != nil {
		t.Fatal(err)
	}
	d.envelope, d.object = failing{}, failing{}
	if typ, obj, err := d.Decode(); err != nil || typ != watch.Added || obj.(*entry.ServiceEntry).Name != "svc-1" {
		t.Errorf("the ADDED event: %s %v %v", typ, obj, err)
	}
	if _, _, err := d.Decode(); err == nil || !strings.Contains(err.Error(), "left to the serializer") {
		t.Errorf("the ERROR event did not go to client-go's decoders: %v", err)
	}
}

// TestEventDecoderLimit: an event larger than maxEventBytes is an error, read
// no further.
func TestEventDecoderLimit(t *testing.T) {
	huge := io.MultiReader(strings.NewReader(`{"type":"ADDED","object":{"metadata":{"name":"`), neverEnding('a'))
	d, err := newEventDecoder(io.NopCloser(huge), watchNegotiator(false), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.Decode(); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("got %v, want the size limit", err)
	}
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

// FuzzEventDecoderMatchesClientGo: on events grown from the repository's
// fixtures (each a ServiceEntry in an ADDED event, alone on its line, twice),
// the source's decoder and client-go's agree. Values that are not one valid
// JSON value are left out, as are values with a key twice in one object:
// the API server writes neither, and for the second encoding/json merges a
// repeated object where client-go keeps the last one.
func FuzzEventDecoderMatchesClientGo(f *testing.F) {
	for _, raw := range sourcetest.AllFixtures(f) {
		var compact bytes.Buffer
		if err := json.Compact(&compact, raw); err == nil {
			f.Add([]byte(watchEvent("ADDED", compact.String())))
		}
	}
	f.Add([]byte(watchEvent("ERROR", `{"kind":"Status","apiVersion":"v1","code":410}`)))
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) || sourcetest.HasDuplicateKeys(raw) {
			return
		}
		stream := string(raw) + "\n" + string(raw) + "\n"
		if ours, clientGo := decodeStream(t, stream, false); !reflect.DeepEqual(ours, clientGo) {
			t.Fatalf("ours:\n%s\nclient-go's:\n%s", describe(ours), describe(clientGo))
		}
	})
}

// TestWatchesNotThrottled: the source's watches do not wait for the client's
// rate limiter, as client-go's Watch never does; its lists still do.
func TestWatchesNotThrottled(t *testing.T) {
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
	}))
	defer server.Close()
	cfg, err := RESTConfig(sourcetest.Kubeconfig(t, server.URL), "")
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 0.001, 1 // one request, then one every 1,000 s
	lw, err := slimLister(cfg, false)("", "v1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := range 3 {
		w, err := lw.watch(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
		w.Stop()
	}
	for range 2 {
		_, err = lw.list(ctx, metav1.ListOptions{})
	}
	if err == nil || !strings.Contains(err.Error(), "rate limiter") {
		t.Fatalf("the second list did not wait for the rate limiter (%v): the test's premise is gone", err)
	}
}
