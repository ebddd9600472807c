package kube

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/streaming"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	restclientwatch "k8s.io/client-go/rest/watch"
	"k8s.io/klog/v2"
	kjson "sigs.k8s.io/json"
)

// eventDecoder reads the events of a ServiceEntry or WorkloadEntry watch,
// each with one call of the JSON decoder: the event and its object together.
// client-go's watch decoder finds an event's end with a JSON decoder, then
// decodes the event, copying its object aside, then decodes that copy: each
// byte of an object is read six times, on the one goroutine every event of
// a WatchList's initial read passes through (BENCHMARKS.md has the figures).
//
// The API server writes one event per line (its JSON encoder ends every
// value with a newline, and a JSON value holds no raw newline), so a line is
// an event. A line that ends inside a value (an indented stream) is joined
// with the next. An event this decoder does not expect (an ERROR event's
// Status, an object of another kind) goes to client-go's own decoders, so
// that it comes out as it would through client-go.
type eventDecoder struct {
	lines     *bufio.Reader
	body      io.Closer
	frame     []byte
	workloads bool
	// framer, envelope and object are client-go's for the source's
	// client, as its watch would use them.
	framer           runtime.Framer
	envelope, object runtime.Decoder
}

// maxEventBytes is the largest event read, as client-go's streaming decoder
// limits it: more is an error, not memory without bound.
const maxEventBytes = 16 << 20

// watchStream starts a watch with request and decodes its events with
// eventDecoder, for the client neg negotiates. What differs from client-go's
// Request.Watch: a connection that fails before the response is an error,
// not an empty watch; either way the reflector starts the watch again.
func watchStream(ctx context.Context, request *rest.Request, neg runtime.ClientNegotiator, workloads bool) (watch.Interface, error) {
	body, err := request.Stream(ctx)
	if err != nil {
		return nil, err
	}
	d, err := newEventDecoder(body, neg, workloads)
	if err != nil {
		body.Close()
		return nil, err
	}
	return watch.NewStreamWatcherWithLogger(klog.FromContext(ctx), d,
		apierrors.NewClientErrorReporter(http.StatusInternalServerError, "GET", "ClientWatchDecoding")), nil
}

// newEventDecoder reads body's events for the client neg negotiates.
func newEventDecoder(body io.ReadCloser, neg runtime.ClientNegotiator, workloads bool) (*eventDecoder, error) {
	object, envelope, framer, err := neg.StreamDecoder(runtime.ContentTypeJSON, nil)
	if err != nil {
		return nil, fmt.Errorf("the JSON stream decoder: %w", err)
	}
	return &eventDecoder{lines: bufio.NewReaderSize(body, 16<<10), body: body, workloads: workloads,
		framer: framer, envelope: envelope, object: object}, nil
}

// Decode returns the next event, io.EOF at the end of the stream, and
// io.ErrUnexpectedEOF when it ends inside one, as client-go's decoder does.
func (d *eventDecoder) Decode() (watch.EventType, runtime.Object, error) {
	d.frame = d.frame[:0]
	for {
		line, err := d.lines.ReadSlice('\n')
		d.frame = append(d.frame, line...)
		switch {
		case len(d.frame) > maxEventBytes:
			return "", nil, fmt.Errorf("a watch event of more than %d bytes", maxEventBytes)
		case err == bufio.ErrBufferFull:
			continue
		case err != nil && err != io.EOF:
			return "", nil, err
		}
		if len(bytes.TrimSpace(d.frame)) == 0 {
			if err == io.EOF {
				return "", nil, io.EOF
			}
			d.frame = d.frame[:0]
			continue
		}
		typ, obj, decodeErr := d.decode(d.frame)
		if syntax, at := kjson.SyntaxErrorOffset(decodeErr); syntax && at >= int64(len(d.frame)) {
			if err == io.EOF {
				return "", nil, io.ErrUnexpectedEOF
			}
			continue // the value goes on on the next line
		}
		return typ, obj, decodeErr
	}
}

// decode decodes one event, in one pass when it is one of the client's own
// kind, through client-go's decoders otherwise.
func (d *eventDecoder) decode(frame []byte) (watch.EventType, runtime.Object, error) {
	var typ watch.EventType
	var obj runtime.Object
	var err error
	if d.workloads {
		typ, obj, err = decodeEvent[entry.WorkloadEntry](frame, "WorkloadEntry")
	} else {
		typ, obj, err = decodeEvent[entry.ServiceEntry](frame, "ServiceEntry")
	}
	if obj != nil || err != nil {
		return typ, obj, err
	}
	frames := d.framer.NewFrameReader(io.NopCloser(bytes.NewReader(frame)))
	return restclientwatch.NewDecoder(streaming.NewDecoder(frames, d.envelope), d.object).Decode()
}

// slimEvent is a watch event decoded with its object.
type slimEvent[T any] struct {
	Type   watch.EventType `json:"type"`
	Object T               `json:"object"`
}

// decodeEvent decodes frame as an event of an object of kind, of a served
// version. It returns no object, and no error but a syntax error, for
// anything else: another event type, another kind, or a value that does not
// fit the slim type (an ERROR event's Status).
func decodeEvent[T any, P interface {
	*T
	runtime.Object
}](frame []byte, kind string) (watch.EventType, runtime.Object, error) {
	var ev slimEvent[T]
	if err := kjson.UnmarshalCaseSensitivePreserveInts(frame, &ev); err != nil {
		if syntax, _ := kjson.SyntaxErrorOffset(err); syntax {
			return "", nil, err
		}
		return "", nil, nil
	}
	switch ev.Type {
	case watch.Added, watch.Modified, watch.Deleted, watch.Bookmark:
	default:
		return "", nil, nil
	}
	obj := P(&ev.Object)
	meta, ok := obj.GetObjectKind().(*metav1.TypeMeta)
	if !ok || meta.Kind != kind || !entry.IsServiceEntryVersion(meta.APIVersion) {
		return "", nil, nil
	}
	// client-go's decoder clears the kind of what it decodes for a typed
	// client; so does this one, so that the object is the same.
	*meta = metav1.TypeMeta{}
	return ev.Type, obj, nil
}

func (d *eventDecoder) Close() { d.body.Close() }
