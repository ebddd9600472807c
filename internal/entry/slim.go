package entry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	networking "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "sigs.k8s.io/json"
)

// ServiceEntry holds what convert reads of a ServiceEntry and nothing
// else. Istio's generated types decode their spec and status through
// golang/protobuf's legacy jsonpb, which re-parses the bytes into maps at every
// message level; this struct decodes in one pass of the standard JSON decoder,
// skipping every field it does not name. The spec and status follow jsonpb's
// rules for the fields they keep (exact-case keys, proto names, quoted
// numbers, enum names), so that both decoders give convert the same input;
// the differential tests hold them to it.
type ServiceEntry struct {
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
	Endpoints  []slimEndpoint
	// Selector is spec.workloadSelector's labels: nil without a selector,
	// non-nil (empty: every workload of the namespace) with one.
	Selector map[string]string
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
	Endpoints     []slimEndpoint  `json:"endpoints"`
	Selector      presentSelector `json:"workloadSelector"`
	SelectorProto json.RawMessage `json:"workload_selector"`
}

// slimSelector is spec.workloadSelector.
type slimSelector struct {
	Labels map[string]string `json:"labels"`
}

// presentSelector tells workloadSelector absent from one given (even as
// null, which is no selector but still hides workload_selector from jsonpb).
type presentSelector struct {
	present bool
	value   *slimSelector
}

func (p *presentSelector) UnmarshalJSON(b []byte) error {
	p.present = true
	return kjson.UnmarshalCaseSensitivePreserveInts(b, &p.value)
}

// slimEndpoint is what convert reads of one of spec.endpoints (a
// WorkloadEntry): where Envoy connects for a STATIC or DNS entry.
type slimEndpoint struct {
	Address string `json:"address"`
}

func (s *slimSpec) UnmarshalJSON(b []byte) error {
	var in slimSpecJSON
	if err := kjson.UnmarshalCaseSensitivePreserveInts(b, &in); err != nil {
		return err
	}
	*s = slimSpec{Hosts: in.Hosts, Addresses: in.Addresses, Ports: in.Ports, Resolution: in.Resolution, ExportTo: in.ExportTo.values,
		Endpoints: in.Endpoints}
	if !in.ExportTo.present && in.ExportToProto != nil {
		// Read only when exportTo is absent: jsonpb never parses a
		// value that the JSON name overrides.
		if err := json.Unmarshal(in.ExportToProto, &s.ExportTo); err != nil {
			return err
		}
	}
	selector := in.Selector.value
	if !in.Selector.present && in.SelectorProto != nil {
		// As for exportTo: the proto name counts when the JSON name is
		// absent. Decoded into a variable of this branch, which escapes
		// to the heap: one declared outside it would be allocated for
		// every object.
		var proto *slimSelector
		if err := kjson.UnmarshalCaseSensitivePreserveInts(in.SelectorProto, &proto); err != nil {
			return err
		}
		selector = proto
	}
	if selector != nil {
		s.Selector = selector.Labels
		if s.Selector == nil {
			s.Selector = map[string]string{}
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
		// Not passed on as it is: a syntax error of what is inside the
		// quotes would read as one of the whole document, which the
		// decoder has checked already (a watch event would be taken for
		// one cut short).
		return fmt.Errorf("port number %s: %v", b, err)
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

// Entry converts the slim object; err is what jsonpb would have refused the
// object for (an enum name this build of Istio's API does not know).
func (se *ServiceEntry) Entry(opts Options) (*Entry, []Skip, error) {
	if name := se.Spec.Resolution.unknown; name != nil {
		return nil, nil, errUnknownResolution(*name)
	}
	e, skips := convert(&se.ObjectMeta, &se.Spec, &se.Status, opts)
	return e, skips, nil
}

// Convert converts a ServiceEntry in Istio's generated types, as Istio's own
// client decodes it. The sources decode into the slim struct instead; this is
// the reference the tests hold the slim decoder to: both feed one conversion.
func Convert(meta *metav1.ObjectMeta, spec *networking.ServiceEntry, status *networking.ServiceEntryStatus, opts Options) (*Entry, []Skip) {
	slim := slimSpec{Hosts: spec.GetHosts(), Addresses: spec.GetAddresses(), Resolution: slimResolution{value: spec.GetResolution()},
		ExportTo: spec.GetExportTo()}
	for _, p := range spec.GetPorts() {
		slim.Ports = append(slim.Ports, slimPort{Number: portNumber(p.GetNumber()), Protocol: p.GetProtocol(), Name: p.GetName()})
	}
	for _, ep := range spec.GetEndpoints() {
		slim.Endpoints = append(slim.Endpoints, slimEndpoint{Address: ep.GetAddress()})
	}
	if ws := spec.GetWorkloadSelector(); ws != nil {
		slim.Selector = maps.Clone(ws.GetLabels())
		if slim.Selector == nil {
			slim.Selector = map[string]string{}
		}
	}
	var st slimStatus
	for _, a := range status.GetAddresses() {
		st.Addresses = append(st.Addresses, slimStatusAddress{Value: a.GetValue(), Host: a.GetHost()})
	}
	return convert(meta, &slim, &st, opts)
}

// ServiceEntryList is a list response of any served version.
type ServiceEntryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	Items           []ServiceEntry `json:"items"`
}

func (se *ServiceEntry) DeepCopyObject() runtime.Object {
	out := *se
	out.ObjectMeta = *se.ObjectMeta.DeepCopy()
	out.Annotations = maps.Clone(se.Annotations)
	out.Spec.Hosts = slices.Clone(se.Spec.Hosts)
	out.Spec.Addresses = slices.Clone(se.Spec.Addresses)
	out.Spec.Ports = slices.Clone(se.Spec.Ports)
	out.Spec.ExportTo = slices.Clone(se.Spec.ExportTo)
	out.Spec.Endpoints = slices.Clone(se.Spec.Endpoints)
	out.Spec.Selector = maps.Clone(se.Spec.Selector)
	out.Status.Addresses = slices.Clone(se.Status.Addresses)
	return &out
}

func (l *ServiceEntryList) DeepCopyObject() runtime.Object {
	out := &ServiceEntryList{TypeMeta: l.TypeMeta, ListMeta: *l.ListMeta.DeepCopy()}
	if l.Items != nil {
		out.Items = make([]ServiceEntry, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].DeepCopyObject().(*ServiceEntry)
		}
	}
	return out
}
