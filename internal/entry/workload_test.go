package entry

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestLabelsSelects(t *testing.T) {
	labels := MakeLabels(map[string]string{"app": "db", "xapp": "web", "tier": "db2", "empty": "", "bad\x00": "x", "v": "a\x00w=b"})
	for _, tc := range []struct {
		selector map[string]string
		want     bool
	}{
		{nil, true},
		{map[string]string{}, true},
		{map[string]string{"app": "db"}, true},
		{map[string]string{"app": "db", "tier": "db2"}, true},
		{map[string]string{"app": "web"}, false}, // the value of xapp, not app
		{map[string]string{"pp": "db"}, false},   // a key's suffix
		{map[string]string{"tier": "db"}, false}, // a value's prefix
		{map[string]string{"empty": ""}, true},
		{map[string]string{"empty": "x"}, false},
		{map[string]string{"missing": ""}, false},
		{map[string]string{"w": "b"}, false}, // a label's part never poses as a label of its own
	} {
		if got := labels.Selects(SelectorOf(tc.selector)); got != tc.want {
			t.Errorf("Selects(%q) = %v, want %v", tc.selector, got, tc.want)
		}
	}
	if MakeLabels(map[string]string{"a": "1", "b": "2"}) != MakeLabels(map[string]string{"b": "2", "a": "1"}) {
		t.Error("equal label sets are not interned as one")
	}
}

func TestConvertPod(t *testing.T) {
	ready := []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	now := metav1.Now()
	for _, tc := range []struct {
		name      string
		pod       corev1.Pod
		dualStack bool
		want      []string
	}{
		{"ready", corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.1", Conditions: ready}}, false, []string{"10.0.0.1"}},
		{"not ready", corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.1",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}}}, false, nil},
		{"no Ready condition", corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.1"}}, false, nil},
		{"succeeded", corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.1", Phase: corev1.PodSucceeded, Conditions: ready}}, false, nil},
		{"being deleted", corev1.Pod{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &now},
			Status: corev1.PodStatus{PodIP: "10.0.0.1", Conditions: ready}}, false, nil},
		{"no IP yet", corev1.Pod{Status: corev1.PodStatus{Conditions: ready}}, false, nil},
		{"dual-stack, first family only", corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.1",
			PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}, Conditions: ready}}, false, []string{"10.0.0.1"}},
		{"dual-stack with dualstack", corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.1",
			PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}, Conditions: ready}}, true, []string{"10.0.0.1", "fd00::1"}},
		{"host network", corev1.Pod{Spec: corev1.PodSpec{HostNetwork: true}, Status: corev1.PodStatus{PodIP: "192.168.0.1", Conditions: ready}},
			false, []string{"192.168.0.1"}},
	} {
		tc.pod.Namespace, tc.pod.Name = "ns", "p"
		w := ConvertPod(&tc.pod, tc.dualStack)
		var got []string
		for ip := range w.Addrs() {
			got = append(got, ip.String())
		}
		if !slices.Equal(got, tc.want) || w.Key != PodKey("ns/p") || w.Namespace() != "ns" {
			t.Errorf("%s: %v %v, want %v at ns/p", tc.name, w.Key, got, tc.want)
		}
	}
}

func TestConvertWorkloadEntry(t *testing.T) {
	meta := &metav1.ObjectMeta{Name: "w"}
	for _, tc := range []struct {
		address string
		healthy bool
		want    []netip.Addr
		skipped bool
	}{
		{"192.0.2.1", true, []netip.Addr{netip.MustParseAddr("192.0.2.1")}, false},
		{"::ffff:192.0.2.1", true, []netip.Addr{netip.MustParseAddr("192.0.2.1")}, false},
		{"192.0.2.1", false, nil, false},
		{"vm.example.com", true, nil, false},
		{"unix:///var/run/app.sock", true, nil, false},
		{"", true, nil, false},
		{"fe80::1%eth0", true, nil, true},
		{"not a name!", true, nil, true},
	} {
		w, skips := ConvertWorkloadEntry(meta, tc.address, nil, tc.healthy)
		if !slices.Equal(slices.Collect(w.Addrs()), tc.want) || (len(skips) > 0) != tc.skipped || w.Key != WorkloadEntryKey("default/w") {
			t.Errorf("%q healthy=%v: %v %v skips %v, want %v skipped=%v", tc.address, tc.healthy, w.Key, slices.Collect(w.Addrs()), skips, tc.want, tc.skipped)
		}
	}
}

func TestLabelsPairs(t *testing.T) {
	var got []string
	for p := range MakeLabels(map[string]string{"b": "2", "a": "1", "empty": ""}).Pairs() {
		got = append(got, p)
	}
	if want := []string{"a=1", "b=2", "empty="}; !slices.Equal(got, want) {
		t.Errorf("Pairs() = %q, want %q", got, want)
	}
	for range MakeLabels(nil).Pairs() {
		t.Error("no labels yield a pair")
	}
	if got := SelectorPair(SelectorOf(map[string]string{"version": "v1", "app": "db"})); got != "app=db" {
		t.Errorf("SelectorPair = %q, want app=db", got)
	}
}

// TestWorkloadEntryDeepCopy: a copy shares nothing a change could reach
// through the original, as a reflector's objects must not.
func TestWorkloadEntryDeepCopy(t *testing.T) {
	var w WorkloadEntry
	w.Name, w.Namespace = "w", "ns"
	w.Annotations = workloadAnnotations{healthChecksAnnotation: "true"}
	w.Spec = workloadSpec{Address: "10.0.0.1", Labels: map[string]string{"app": "db"}}
	w.Status.Conditions = []workloadCondition{{Type: "Healthy", Status: "True"}}
	l := &WorkloadEntryList{Items: []WorkloadEntry{w}}
	c := l.DeepCopyObject().(*WorkloadEntryList)
	if !reflect.DeepEqual(c, l) {
		t.Fatalf("copy %+v, want %+v", c, l)
	}
	c.Items[0].Annotations[healthChecksAnnotation] = "false"
	c.Items[0].Spec.Labels["app"] = "web"
	c.Items[0].Status.Conditions[0].Status = "False"
	if got := l.Items[0]; got.Annotations[healthChecksAnnotation] != "true" || got.Spec.Labels["app"] != "db" || got.Status.Conditions[0].Status != "True" {
		t.Fatalf("changing the copy changed the original: %+v", got)
	}
}

// TestWorkloadAddrs: the packed addresses come back as set, in order,
// unmapped and without duplicates, whatever their families.
func TestWorkloadAddrs(t *testing.T) {
	for _, tc := range []struct{ set, want []string }{
		{nil, nil},
		{[]string{"10.0.0.1"}, []string{"10.0.0.1"}},
		{[]string{"fd00::1"}, []string{"fd00::1"}},
		{[]string{"10.0.0.1", "fd00::1"}, []string{"10.0.0.1", "fd00::1"}},
		{[]string{"fd00::1", "10.0.0.1"}, []string{"fd00::1", "10.0.0.1"}},
		{[]string{"::ffff:10.0.0.1"}, []string{"10.0.0.1"}},
		{[]string{"fd00::1", "::ffff:10.0.0.1", "10.0.0.1", "fd00::1"}, []string{"fd00::1", "10.0.0.1"}},
		{[]string{"10.0.0.1", "10.0.0.2"}, []string{"10.0.0.1", "10.0.0.2"}},
	} {
		var addrs []netip.Addr
		for _, s := range tc.set {
			addrs = append(addrs, netip.MustParseAddr(s))
		}
		w := NewWorkload(PodKey("ns/p"), Labels{}, addrs...)
		var got []string
		for ip := range w.Addrs() {
			got = append(got, ip.String())
		}
		if !slices.Equal(got, tc.want) || w.NumAddrs() != len(tc.want) {
			t.Errorf("%v: %v (%d), want %v", tc.set, got, w.NumAddrs(), tc.want)
		}
		if other := NewWorkload(PodKey("ns/q"), Labels{}, addrs...); !w.SameAddrs(other) {
			t.Errorf("%v: not the same addresses as itself", tc.set)
		}
	}
}
