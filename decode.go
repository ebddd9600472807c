package serviceentry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	networking "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	kjson "sigs.k8s.io/json"
)

// slimServiceEntry holds what convert reads of a ServiceEntry and nothing
// else. Istio's generated types decode their spec and status through
// golang/protobuf's legacy jsonpb, which re-parses the bytes into maps at every
// message level; this struct decodes in one pass of the standard JSON decoder,
// skipping every field it does not name. The spec and status follow jsonpb's
// rules for the fields they keep (exact-case keys, proto names, quoted
// numbers, enum names), so that both decoders give convert the same input;
// the differential tests hold them to it.
type slimServiceEntry struct {
	metav1.TypeMeta `json:",inline"`
	slimMeta        `json:"metadata"`
	Spec            slimSpec   `json:"spec"`
	Status          slimStatus `json:"status"`
}

// slimMeta is the object's metadata without what nobody here reads.
// Embedding ObjectMeta keeps client-go's accessors (namespace, name,
// resourceVersion for the reflector); the fields declared here shadow
// ObjectMeta's in JSON, so managedFields, often the bulk of an object, is
// skipped by the decoder, not copied.
type slimMeta struct {
	metav1.ObjectMeta `json:",inline"`
	ManagedFields     ignoredJSON `json:"managedFields"`
	// Annotations are kept only when they hold the end-of-initial-events
	// mark: client-go's reflector reads it from the bookmark that ends a
	// WatchList's initial events, and its sync never completes without it.
	// Other annotations (kubectl's last-applied-configuration, a copy of
	// the whole object) are not read.
	Annotations bookmarkAnnotations `json:"annotations"`
}

func (m *slimMeta) GetAnnotations() map[string]string { return m.Annotations }

func (m *slimMeta) SetAnnotations(a map[string]string) { m.Annotations = a }

// ignoredJSON is a field whose value is skipped: the decoder still checks it
// is well-formed JSON, but allocates nothing for it.
type ignoredJSON struct{}

func (*ignoredJSON) UnmarshalJSON([]byte) error { return nil }

type bookmarkAnnotations map[string]string

func (a *bookmarkAnnotations) UnmarshalJSON(b []byte) error {
	if !bytes.Contains(b, []byte(metav1.InitialEventsAnnotationKey)) {
		*a = nil
		return nil
	}
	var all map[string]string
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	*a = bookmarkAnnotations{metav1.InitialEventsAnnotationKey: all[metav1.InitialEventsAnnotationKey]}
	return nil
}

// slimSpec is what convert reads of spec.
type slimSpec struct {
	Hosts      []string
	Addresses  []string
	Ports      []slimPort
	Resolution slimResolution
	ExportTo   []string
}

// slimSpecJSON is slimSpec as jsonpb reads it: keys match exactly, as
// jsonpb looks them up in a map (the object's metadata is matched without
// regard to case by encoding/json, so spec cannot be decoded by the same
// call), and exportTo is also read under its proto name export_to, the JSON
// name winning when both are present.
type slimSpecJSON struct {
	Hosts         []string        `json:"hosts"`
	Addresses     []string        `json:"addresses"`
	Ports         []slimPort      `json:"ports"`
	Resolution    slimResolution  `json:"resolution"`
	ExportTo      presentStrings  `json:"exportTo"`
	ExportToProto json.RawMessage `json:"export_to"`
}

func (s *slimSpec) UnmarshalJSON(b []byte) error {
	var in slimSpecJSON
	if err := kjson.UnmarshalCaseSensitivePreserveInts(b, &in); err != nil {
		return err
	}
	*s = slimSpec{Hosts: in.Hosts, Addresses: in.Addresses, Ports: in.Ports, Resolution: in.Resolution, ExportTo: in.ExportTo.values}
	if !in.ExportTo.present && in.ExportToProto != nil {
		// Read only when exportTo is absent: jsonpb never parses a
		// value that the JSON name overrides.
		if err := json.Unmarshal(in.ExportToProto, &s.ExportTo); err != nil {
			return err
		}
	}
	return nil
}

// presentStrings tells a field that is absent from one given (even as null).
type presentStrings struct {
	present bool
	values  []string
}

func (p *presentStrings) UnmarshalJSON(b []byte) error {
	p.present = true
	return json.Unmarshal(b, &p.values)
}

type slimPort struct {
	Number   portNumber `json:"number"`
	Protocol string     `json:"protocol"`
	Name     string     `json:"name"`
}

// portNumber reads a uint32 as jsonpb does: a number or a quoted number.
type portNumber uint32

func (n *portNumber) UnmarshalJSON(b []byte) error {
	var v uint32
	if err := json.Unmarshal(trimQuotes(b), &v); err != nil {
		return err
	}
	*n = portNumber(v)
	return nil
}

// slimResolution is spec.resolution: an enum name, or its number as jsonpb
// also accepts. A name this build of Istio's API does not know (a newer
// CRD's) is kept, not failed, so that one object cannot fail a whole list;
// the conversion to Istio's type rejects it as jsonpb would.
type slimResolution struct {
	value   networking.ServiceEntry_Resolution
	unknown *string // the name, when it is not one of value's
}

func (r *slimResolution) UnmarshalJSON(b []byte) error {
	if len(b) >= 2 && b[0] == '"' && b[len(b)-1] == '"' {
		// jsonpb strips the quotes without unescaping; so does this.
		name := string(b[1 : len(b)-1])
		v, ok := networking.ServiceEntry_Resolution_value[name]
		*r = slimResolution{value: networking.ServiceEntry_Resolution(v)}
		if !ok {
			r.unknown = &name
		}
		return nil
	}
	var v int32
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*r = slimResolution{value: networking.ServiceEntry_Resolution(v)}
	return nil
}

// trimQuotes strips one pair of surrounding quotes, as jsonpb does before
// reading a number.
func trimQuotes(b []byte) []byte {
	if len(b) >= 2 && b[0] == '"' && b[len(b)-1] == '"' {
		return b[1 : len(b)-1]
	}
	return b
}

// slimStatus is what convert reads of status: the auto-allocated addresses.
type slimStatus struct {
	Addresses []slimStatusAddress
}

type slimStatusJSON struct {
	Addresses []slimStatusAddress `json:"addresses"`
}

type slimStatusAddress struct {
	Value string `json:"value"`
	Host  string `json:"host"`
}

func (s *slimStatus) UnmarshalJSON(b []byte) error {
	var in slimStatusJSON
	if err := kjson.UnmarshalCaseSensitivePreserveInts(b, &in); err != nil {
		return err
	}
	s.Addresses = in.Addresses
	return nil
}

// errUnknownResolution is what jsonpb reports of an enum name it does not
// know; the typed decoder fails the whole object on it.
type errUnknownResolution string

func (e errUnknownResolution) Error() string {
	return fmt.Sprintf("unknown value %q for enum istio.networking.v1alpha3.ServiceEntry.Resolution", string(e))
}

// istio fills Istio's structs from the slim object, so that convert stays the
// one conversion path whichever decoder read the object.
func (se *slimServiceEntry) istio() (*networking.ServiceEntry, *networking.ServiceEntryStatus, error) {
	if name := se.Spec.Resolution.unknown; name != nil {
		return nil, nil, errUnknownResolution(*name)
	}
	spec := &networking.ServiceEntry{
		Hosts:      se.Spec.Hosts,
		Addresses:  se.Spec.Addresses,
		Resolution: se.Spec.Resolution.value,
		ExportTo:   se.Spec.ExportTo,
	}
	if n := len(se.Spec.Ports); n > 0 {
		ports := make([]networking.ServicePort, n)
		spec.Ports = make([]*networking.ServicePort, n)
		for i, p := range se.Spec.Ports {
			ports[i].Number, ports[i].Protocol, ports[i].Name = uint32(p.Number), p.Protocol, p.Name
			spec.Ports[i] = &ports[i]
		}
	}
	status := &networking.ServiceEntryStatus{}
	if n := len(se.Status.Addresses); n > 0 {
		addrs := make([]networking.ServiceEntryAddress, n)
		status.Addresses = make([]*networking.ServiceEntryAddress, n)
		for i, a := range se.Status.Addresses {
			addrs[i].Value, addrs[i].Host = a.Value, a.Host
			status.Addresses[i] = &addrs[i]
		}
	}
	return spec, status, nil
}

// entry converts the slim object as convert converts Istio's; err is what
// jsonpb would have refused the object for.
func (se *slimServiceEntry) entry(opts convertOptions) (*entry, []skip, error) {
	spec, status, err := se.istio()
	if err != nil {
		return nil, nil, err
	}
	e, skips := convert(&se.ObjectMeta, spec, status, opts)
	return e, skips, nil
}

// slimServiceEntryList is a list response of any served version.
type slimServiceEntryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	Items           []slimServiceEntry `json:"items"`
}

func (se *slimServiceEntry) DeepCopyObject() runtime.Object {
	out := *se
	out.ObjectMeta = *se.ObjectMeta.DeepCopy()
	out.Annotations = maps.Clone(se.Annotations)
	out.Spec.Hosts = slices.Clone(se.Spec.Hosts)
	out.Spec.Addresses = slices.Clone(se.Spec.Addresses)
	out.Spec.Ports = slices.Clone(se.Spec.Ports)
	out.Spec.ExportTo = slices.Clone(se.Spec.ExportTo)
	out.Status.Addresses = slices.Clone(se.Status.Addresses)
	return &out
}

func (l *slimServiceEntryList) DeepCopyObject() runtime.Object {
	out := &slimServiceEntryList{TypeMeta: l.TypeMeta, ListMeta: *l.ListMeta.DeepCopy()}
	if l.Items != nil {
		out.Items = make([]slimServiceEntry, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].DeepCopyObject().(*slimServiceEntry)
		}
	}
	return out
}

// slimNegotiator is slimCodecs for the source's REST client, with the JSON
// serializer replaced by slimJSON.
type slimNegotiator struct{ runtime.NegotiatedSerializer }

func (n slimNegotiator) SupportedMediaTypes() []runtime.SerializerInfo {
	infos := slices.Clone(n.NegotiatedSerializer.SupportedMediaTypes())
	for i, info := range infos {
		if info.MediaType != runtime.ContentTypeJSON {
			continue
		}
		infos[i].Serializer = slimJSON{info.Serializer}
		if info.StreamSerializer != nil {
			stream := *info.StreamSerializer
			stream.Serializer = slimJSON{stream.Serializer}
			infos[i].StreamSerializer = &stream
		}
	}
	return infos
}

// slimJSON decodes what a list or a watch brings (watch events, the
// ServiceEntries in them, lists of them) with one call of the same JSON
// decoder as apimachinery's serializer, which first reads the whole
// document once more to find its kind: a watch event's object is otherwise
// read four times, its envelope four more. Any other document (a Status in
// an error event or response, an unexpected kind) goes to the serializer.
type slimJSON struct{ runtime.Serializer }

func (s slimJSON) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	switch into := into.(type) {
	case nil:
		se := &slimServiceEntry{}
		if kjson.UnmarshalCaseSensitivePreserveInts(data, se) == nil && se.Kind == "ServiceEntry" && isServiceEntryVersion(se.APIVersion) {
			gvk := se.GroupVersionKind()
			return se, &gvk, nil
		}
	case *metav1.WatchEvent:
		var ev metav1.WatchEvent
		if kjson.UnmarshalCaseSensitivePreserveInts(data, &ev) == nil {
			*into = ev
			// As the serializer names it: the first of the scheme's
			// registrations, the core group's.
			return into, &schema.GroupVersionKind{Version: "v1", Kind: "WatchEvent"}, nil
		}
	case *slimServiceEntryList:
		var l slimServiceEntryList
		if kjson.UnmarshalCaseSensitivePreserveInts(data, &l) == nil && l.Kind == "ServiceEntryList" && isServiceEntryVersion(l.APIVersion) {
			*into = l
			gvk := l.GroupVersionKind()
			return into, &gvk, nil
		}
	}
	return s.Serializer.Decode(data, defaults, into)
}

// slimScheme knows the slim types under every served version, with the
// meta types list and watch requests need; slimCodecs decodes with it.
var (
	slimScheme = runtime.NewScheme()
	slimCodecs = serializer.NewCodecFactory(slimScheme)
	// slimParams encodes list options into query parameters.
	slimParams = runtime.NewParameterCodec(slimScheme)
)

func init() {
	metav1.AddToGroupVersion(slimScheme, schema.GroupVersion{Version: "v1"})
	for _, v := range servedVersions {
		gv := schema.GroupVersion{Group: istioGroup, Version: v}
		slimScheme.AddKnownTypeWithName(gv.WithKind("ServiceEntry"), &slimServiceEntry{})
		slimScheme.AddKnownTypeWithName(gv.WithKind("ServiceEntryList"), &slimServiceEntryList{})
		metav1.AddToGroupVersion(slimScheme, gv)
	}
}
