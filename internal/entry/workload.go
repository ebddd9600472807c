package entry

import (
	"encoding/json"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kjson "sigs.k8s.io/json"
)

// Workload is what a headless entry's workload selector picks from: one
// WorkloadEntry or one Pod, with what DNS needs of it and nothing else. A
// workload that DNS never answers with (a host-name or Unix-socket address,
// a pod not ready) still exists, with no addresses, so that a change of it is
// a change, not an appearance.
type Workload struct {
	Key    Key // KindWorkloadEntry or KindPod, namespace/name
	Labels Labels
	// addrs are the addresses a headless entry that selects the workload
	// answers with (Addrs), packed: every selected pod is one, and a slice
	// of netip.Addr costs 48 bytes for one IPv4 address.
	addrs packedAddrs
}

// NewWorkload returns the workload of key with labels and addrs.
func NewWorkload(key Key, labels Labels, addrs ...netip.Addr) *Workload {
	w := &Workload{Key: key, Labels: labels}
	w.SetAddrs(addrs)
	return w
}

// SetAddrs sets w's addresses, in order, unmapped, without duplicates.
func (w *Workload) SetAddrs(addrs []netip.Addr) {
	var unique []netip.Addr
	for _, ip := range addrs {
		if ip = ip.Unmap(); !slices.Contains(unique, ip) {
			unique = append(unique, ip)
		}
	}
	w.addrs = packAddrs(unique)
}

// Addrs yields the addresses a headless entry that selects the workload
// answers with: none unless it is healthy and every address it has is an
// IP, as Istio's name table takes an endpoint (BuildNameTable,
// pkg/dns/server/name_table.go).
func (w *Workload) Addrs() iter.Seq[netip.Addr] { return w.addrs.all() }

// NumAddrs is the number of addresses Addrs yields.
func (w *Workload) NumAddrs() int { return w.addrs.len() }

// SameAddrs reports whether w and o have the same addresses in the same
// order.
func (w *Workload) SameAddrs(o *Workload) bool { return w.addrs == o.addrs }

// Namespace is the namespace of w, from its key.
func (w *Workload) Namespace() string {
	ns, _, _ := strings.Cut(w.Key.Name, "/")
	return ns
}

// Labels is a set of labels held as one interned string, "\x00k=v\x00" per
// label, sorted by key: the pods of one ReplicaSet share one copy, and a
// set no workload holds any more is collected (package unique). Keys and
// values of valid labels hold neither "=" nor NUL, so a label is found by
// its delimited form alone.
type Labels struct{ set unique.Handle[string] }

// MakeLabels interns m. A label whose key or value holds a NUL (never
// valid; a WorkloadEntry's spec.labels is not checked by the API server)
// is left out, so that it cannot pose as two labels.
func MakeLabels(m map[string]string) Labels {
	return Labels{unique.Make(encodeLabels(m))}
}

// encodeLabels is m in Labels' form, leaving out a label holding a NUL.
func encodeLabels(m map[string]string) string {
	var b strings.Builder
	b.WriteByte(0)
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := m[k]
		if strings.IndexByte(k, 0) >= 0 || strings.IndexByte(v, 0) >= 0 {
			continue
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(v)
		b.WriteByte(0)
	}
	return b.String()
}

// Has reports whether the set holds label k with value v.
func (l Labels) Has(k, v string) bool {
	s := l.set.Value()
	for i := 0; i+len(k)+len(v)+2 <= len(s); {
		j := strings.Index(s[i:], k)
		if j < 0 {
			return false
		}
		at := i + j
		if s[at-1] == 0 && strings.HasPrefix(s[at+len(k):], "=") && strings.HasPrefix(s[at+len(k)+1:], v) &&
			at+len(k)+1+len(v) < len(s) && s[at+len(k)+1+len(v)] == 0 {
			return true
		}
		i = at + 1
	}
	return false
}

// Pairs yields each label as "k=v", without allocating: the keys by which
// the store indexes the workloads a selector may pick.
func (l Labels) Pairs() iter.Seq[string] { return pairsOf(l.set.Value()) }

func pairsOf(set string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for s := set; len(s) > 1; {
			pair, _, _ := strings.Cut(s[1:], "\x00")
			if !yield(pair) {
				return
			}
			s = s[1+len(pair):]
		}
	}
}

// Selector is a workload selector's labels, in Labels' form but not
// interned: selectors are nearly all distinct, and interning one costs
// several times its bytes.
type Selector struct{ labels string }

// SelectorOf is the selector of labels.
func SelectorOf(labels map[string]string) *Selector {
	return &Selector{encodeLabels(labels)}
}

// Pairs yields each label of s as "k=v", as Labels.Pairs.
func (s *Selector) Pairs() iter.Seq[string] { return pairsOf(s.labels) }

// SelectorPair is the label of a non-empty selector that the store indexes
// it by, "k=v" of its least key; "" for an empty selector.
func SelectorPair(selector *Selector) string {
	for pair := range selector.Pairs() {
		return pair // sorted by key: the first is the least
	}
	return ""
}

// Selects reports whether a workload selector's labels all hold in l, as
// Istio's labels.Instance.SubsetOf does: an empty selector selects every
// workload. A selector's keys hold no "=" (parseSelector), so a pair splits
// at its first.
func (l Labels) Selects(selector *Selector) bool {
	for pair := range selector.Pairs() {
		k, v, _ := strings.Cut(pair, "=")
		if !l.Has(k, v) {
			return false
		}
	}
	return true
}

// WorkloadEntryKey and PodKey are the keys of the workloads namespace/name.
func WorkloadEntryKey(namespacedName string) Key {
	return Key{Kind: KindWorkloadEntry, Name: namespacedName}
}

func PodKey(namespacedName string) Key { return Key{Kind: KindPod, Name: namespacedName} }

// healthChecksAnnotation turns health checking of a WorkloadEntry on; its
// "Healthy" condition then decides (status.WorkloadEntryHealthCheckAnnotation,
// pilot/pkg/model/status/workloadentry.go).
const healthChecksAnnotation = "proxy.istio.io/health-checks-enabled"

// WorkloadEntry holds what ConvertWorkloadEntry reads of a WorkloadEntry,
// decoded in one pass as ServiceEntry is (see there).
type WorkloadEntry struct {
	metav1.TypeMeta `json:",inline"`
	workloadMeta    `json:"metadata"`
	Spec            workloadSpec   `json:"spec"`
	Status          workloadStatus `json:"status"`
}

// workloadMeta is slimMeta that also keeps the health-check annotation.
type workloadMeta struct {
	metav1.ObjectMeta `json:",inline"`
	ManagedFields     ignoredJSON         `json:"managedFields"`
	Annotations       workloadAnnotations `json:"annotations"`
}

func (m *workloadMeta) GetAnnotations() map[string]string { return m.Annotations }

func (m *workloadMeta) SetAnnotations(a map[string]string) { m.Annotations = a }

// workloadAnnotations keeps of metadata.annotations the end-of-initial-events
// mark (see slimMeta) and the health-check annotation, nothing else.
type workloadAnnotations map[string]string

func (a *workloadAnnotations) UnmarshalJSON(b []byte) error {
	var all map[string]string
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	*a = nil
	for _, k := range []string{metav1.InitialEventsAnnotationKey, healthChecksAnnotation} {
		if v, ok := all[k]; ok {
			if *a == nil {
				*a = make(workloadAnnotations, 1)
			}
			(*a)[k] = v
		}
	}
	return nil
}

// workloadSpec is what the conversion reads of a WorkloadEntry's spec;
// jsonpb's names are the JSON names here.
type workloadSpec struct {
	Address string            `json:"address"`
	Labels  map[string]string `json:"labels"`
}

func (s *workloadSpec) UnmarshalJSON(b []byte) error {
	type plain workloadSpec // without this method
	return kjson.UnmarshalCaseSensitivePreserveInts(b, (*plain)(s))
}

// workloadStatus is the status conditions, of which only the first
// "Healthy" one counts.
type workloadStatus struct {
	Conditions []workloadCondition `json:"conditions"`
}

type workloadCondition struct {
	Type   string `json:"type"`
	Status string `json:"status"`
}

func (s *workloadStatus) UnmarshalJSON(b []byte) error {
	type plain workloadStatus
	return kjson.UnmarshalCaseSensitivePreserveInts(b, (*plain)(s))
}

// Workload converts the decoded WorkloadEntry.
func (w *WorkloadEntry) Workload() (*Workload, []Skip) {
	healthy := true
	if v, err := strconv.ParseBool(w.Annotations[healthChecksAnnotation]); err == nil && v {
		healthy = false
		if i := slices.IndexFunc(w.Status.Conditions, func(c workloadCondition) bool { return c.Type == "Healthy" }); i >= 0 {
			healthy = w.Status.Conditions[i].Status == "True"
		}
	}
	return ConvertWorkloadEntry(&w.ObjectMeta, w.Spec.Address, w.Spec.Labels, healthy)
}

// ConvertWorkloadEntry makes the workload of a WorkloadEntry, as the
// ServiceEntry controller makes its endpoint
// (convertWorkloadEntryToWorkloadInstance and isHealthy,
// pilot/pkg/serviceregistry/serviceentry/conversion.go): its address is an
// IP, a host name, a Unix socket or none, which a DNS entry's Envoy or a
// network gateway may use but a headless answer never holds (BuildNameTable keeps only endpoints whose
// addresses are all IPs); with health checks on, it counts only while
// healthy. An address that is none of these is skipped with a log line and
// a count.
func ConvertWorkloadEntry(meta *metav1.ObjectMeta, address string, labels map[string]string, healthy bool) (*Workload, []Skip) {
	namespace := meta.Namespace
	if namespace == "" {
		namespace = metav1.NamespaceDefault
	}
	key := WorkloadEntryKey(types.NamespacedName{Namespace: namespace, Name: meta.Name}.String())
	w := &Workload{Key: key, Labels: MakeLabels(labels)}
	ip, err := netip.ParseAddr(address)
	switch {
	case err == nil && ip.Zone() == "":
		if healthy {
			w.SetAddrs([]netip.Addr{ip})
		}
	case address == "", strings.HasPrefix(address, "unix://"), hostNameOK(address):
		// No address is an ambient workload reached through its
		// network's gateway.
	default:
		return w, []Skip{{Reason: ReasonInvalidAddress, Item: address}}
	}
	return w, nil
}

// hostNameOK tells a host name a DNS entry's Envoy could resolve.
func hostNameOK(s string) bool {
	name, reason := normalizeHost(s)
	return reason == "" && !strings.HasPrefix(name, "*")
}

// ConvertPod makes the workload of a pod, as Istio's Kubernetes controller
// makes the endpoint a ServiceEntry's selector picks (PodCache.onEvent and
// notifyWorkloadHandlers, pilot/pkg/serviceregistry/kube/controller/pod.go):
// a pod counts while it is not terminal, has an IP, is not being deleted and
// is Ready; its addresses are status.podIP, and every status.podIPs with
// dualStack (ISTIO_DUAL_STACK). A pod on the host network counts too: its
// address is the node's, which is where it listens.
func ConvertPod(pod *corev1.Pod, dualStack bool) *Workload {
	key := PodKey(pod.Namespace + "/" + pod.Name)
	w := &Workload{Key: key, Labels: MakeLabels(pod.Labels)}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || pod.DeletionTimestamp != nil ||
		!podReady(pod) {
		return w
	}
	var addrs []netip.Addr
	add := func(s string) {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Zone() == "" {
			addrs = append(addrs, ip)
		}
	}
	add(pod.Status.PodIP)
	if dualStack {
		for _, ip := range pod.Status.PodIPs {
			add(ip.IP)
		}
	}
	w.SetAddrs(addrs)
	return w
}

// podReady is the pod's Ready condition, the first of that type, true.
func podReady(pod *corev1.Pod) bool {
	i := slices.IndexFunc(pod.Status.Conditions, func(c corev1.PodCondition) bool { return c.Type == corev1.PodReady })
	return i >= 0 && pod.Status.Conditions[i].Status == corev1.ConditionTrue
}

// WorkloadEntryList is a list response of any served version; the
// WorkloadEntry reader's REST client decodes it in one pass, as
// ServiceEntryList.
type WorkloadEntryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	Items           []WorkloadEntry `json:"items"`
}

// DeepCopyObject makes WorkloadEntry a runtime.Object, which a reflector
// and a scheme need.
func (w *WorkloadEntry) DeepCopyObject() runtime.Object {
	out := *w
	out.ObjectMeta = *w.ObjectMeta.DeepCopy()
	out.Annotations = maps.Clone(w.Annotations)
	out.Spec.Labels = maps.Clone(w.Spec.Labels)
	out.Status.Conditions = slices.Clone(w.Status.Conditions)
	return &out
}

func (l *WorkloadEntryList) DeepCopyObject() runtime.Object {
	out := &WorkloadEntryList{TypeMeta: l.TypeMeta, ListMeta: *l.ListMeta.DeepCopy()}
	if l.Items != nil {
		out.Items = make([]WorkloadEntry, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].DeepCopyObject().(*WorkloadEntry)
		}
	}
	return out
}
