package entry

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestNormalizeHost(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	name253 := strings.Repeat(label63+".", 3) + strings.Repeat("b", 61) // 253 bytes
	for _, c := range []struct{ name, in, want, reason string }{
		{"plain", "a.example.com", "a.example.com", ""},
		{"upper case", "API.Example.COM", "api.example.com", ""},
		{"trailing dot", "a.example.com.", "a.example.com", ""},
		{"single label", "db", "db", ""},
		{"wildcard", "*.Example.com", "*.example.com", ""},
		{"punycode", "xn--bcher-kva.example", "xn--bcher-kva.example", ""},
		{"63-byte label", label63 + ".com", label63 + ".com", ""},
		{"253-byte name", name253, name253, ""},
		{"empty", "", "", ReasonInvalidHost},
		{"dot only", ".", "", ReasonInvalidHost},
		{"star alone", "*", "", ReasonInvalidHost},
		{"partial wildcard", "*foo.example.com", "", ReasonPartialWildcard},
		{"partial wildcard with hyphen", "*-foo.example.com", "", ReasonPartialWildcard},
		{"inner star", "a.*.example.com", "", ReasonInvalidHost},
		{"64-byte label", label63 + "a.com", "", ReasonInvalidHost},
		{"254-byte name", name253 + "b", "", ReasonInvalidHost},
		{"empty label", "a..com", "", ReasonInvalidHost},
		{"leading hyphen", "-a.com", "", ReasonInvalidHost},
		{"trailing hyphen", "a-.com", "", ReasonInvalidHost},
		{"underscore", "_srv.a.com", "", ReasonInvalidHost},
		{"non-ASCII", "bücher.example", "", ReasonInvalidHost},
		{"space", "a b.com", "", ReasonInvalidHost},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, reason := normalizeHost(c.in)
			if got != c.want || reason != c.reason {
				t.Errorf("normalizeHost(%q) = %q, %q; want %q, %q", c.in, got, reason, c.want, c.reason)
			}
		})
	}
}

func TestParseAddresses(t *testing.T) {
	for _, c := range []struct {
		name    string
		in      []string
		want    string // served addresses, comma-separated
		reasons string // skip reasons, comma-separated
	}{
		{"v4 and v6", []string{"192.0.2.1", "2001:db8::1"}, "192.0.2.1,2001:db8::1", ""},
		{"host prefixes", []string{"192.0.2.1/32", "2001:db8::1/128"}, "192.0.2.1,2001:db8::1", ""},
		{"wider CIDRs", []string{"10.0.0.0/8", "192.0.2.0/31", "2001:db8::/127", "0.0.0.0/0"}, "", "cidr_not_host,cidr_not_host,cidr_not_host,cidr_not_host"},
		{"duplicates", []string{"192.0.2.1", "192.0.2.1/32", "192.0.2.1"}, "192.0.2.1", ""},
		{"IPv4-mapped IPv6 stays IPv6", []string{"::ffff:192.0.2.1"}, "::ffff:192.0.2.1", ""},
		{"zoned IPv6", []string{"fe80::1%eth0"}, "", "invalid_address"},
		{"spaces", []string{" 192.0.2.1", "192.0.2.1 "}, "", "invalid_address,invalid_address"},
		{"garbage", []string{"foo", "", "300.1.1.1"}, "", "invalid_address,invalid_address,invalid_address"},
		{"bad one among good", []string{"192.0.2.1", "bad", "192.0.2.2"}, "192.0.2.1,192.0.2.2", "invalid_address"},
	} {
		t.Run(c.name, func(t *testing.T) {
			addrs, skips := parseAddresses(c.in)
			var got, reasons []string
			for _, a := range addrs {
				got = append(got, a.String())
			}
			for _, s := range skips {
				reasons = append(reasons, s.Reason)
			}
			if strings.Join(got, ",") != c.want || strings.Join(reasons, ",") != c.reasons {
				t.Errorf("got %v %v, want %s / %s", got, reasons, c.want, c.reasons)
			}
		})
	}
}

// TestConvertSkipsOnlyTheBadItem: a bad host or address leaves the rest of the
// entry served.
func TestConvertSkipsOnlyTheBadItem(t *testing.T) {
	// As the manifests source reads a document: YAML to JSON, then the slim
	// struct (the source's own tests read whole streams).
	var se ServiceEntry
	if err := yaml.Unmarshal([]byte(`
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mixed, namespace: ns}
spec:
  hosts: [good.internal, "bad_host.internal", "*bad.internal", Good.Internal]
  addresses: [192.0.2.1, not-an-ip, 10.0.0.0/8]
`), &se); err != nil {
		t.Fatal(err)
	}
	e, _, err := se.Entry(Options{})
	if err != nil || e == nil {
		t.Fatalf("%v, entry %v", err, e)
	}
	if len(e.Hosts) != 1 || e.Hosts[0].Name != "good.internal" || len(e.Hosts[0].Addrs()) != 1 {
		t.Fatalf("got %+v, want good.internal with one address", e.Hosts)
	}
}

// TestWorkloadSelector: the selector's labels are kept (empty when it has
// none: every workload of the namespace); a label Istio refuses leaves the
// selector out with a skip; with a selector, spec.endpoints are not the
// entry's endpoints, as in Istio's ServiceEntry controller.
func TestWorkloadSelector(t *testing.T) {
	for _, c := range []struct {
		name, spec string
		want       map[string]string
		endpoints  int
		reasons    string
	}{
		{"labels", `{hosts: [a.internal], resolution: NONE, workloadSelector: {labels: {app: db}}}`, map[string]string{"app": "db"}, 0, ""},
		{"no labels", `{hosts: [a.internal], resolution: NONE, workloadSelector: {}}`, map[string]string{}, 0, ""},
		{"none", `{hosts: [a.internal], resolution: NONE}`, nil, 0, ""},
		{"wildcard value", `{hosts: [a.internal], resolution: NONE, workloadSelector: {labels: {app: "db*", b: c}}}`, nil, 0, "invalid_selector"},
		{"empty key", `{hosts: [a.internal], resolution: NONE, workloadSelector: {labels: {"": db}}}`, nil, 0, "invalid_selector"},
		{"key holding =", `{hosts: [a.internal], resolution: NONE, workloadSelector: {labels: {"app=db": x}}}`, nil, 0, "invalid_selector"},
		{"NUL in a value", `{hosts: [a.internal], resolution: NONE, workloadSelector: {labels: {app: "db\0"}}}`, nil, 0, "invalid_selector"},
		{"with endpoints", `{hosts: [a.internal], resolution: DNS, endpoints: [{address: 192.0.2.1}], workloadSelector: {labels: {app: db}}}`,
			map[string]string{"app": "db"}, 0, ""},
		{"endpoints only", `{hosts: [a.internal], resolution: DNS, endpoints: [{address: 192.0.2.1}]}`, nil, 1, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			var se ServiceEntry
			doc := "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s, namespace: ns}\nspec: " + c.spec
			if err := yaml.Unmarshal([]byte(doc), &se); err != nil {
				t.Fatal(err)
			}
			e, skips, err := se.Entry(Options{})
			if err != nil || e == nil {
				t.Fatalf("%v, entry %v", err, e)
			}
			var reasons []string
			for _, s := range skips {
				reasons = append(reasons, s.Reason)
			}
			if (e.Selector() == nil) != (c.want == nil) || e.Selector() != nil && *e.Selector() != *SelectorOf(c.want) || len(e.Endpoints()) != c.endpoints ||
				strings.Join(reasons, ",") != c.reasons {
				t.Errorf("selector %v, %d endpoints, skips %v; want %v, %d, %q", e.Selector(), len(e.Endpoints()), reasons, c.want, c.endpoints, c.reasons)
			}
		})
	}
}

// TestHostAddrs: a host's packed addresses come back as set, in order, an
// IPv4 address and its IPv4-mapped form apart; hosts with the same addresses
// have the same AddrsKey.
func TestHostAddrs(t *testing.T) {
	v4 := netip.MustParseAddr("192.0.2.1")
	for _, addrs := range [][]netip.Addr{
		nil,
		{v4},
		{netip.MustParseAddr("2001:db8::1")},
		{v4, netip.AddrFrom16(v4.As16())},
		{netip.MustParseAddr("2001:db8::2"), v4, netip.MustParseAddr("198.51.100.7")},
	} {
		h := NewHost("a.internal", addrs...)
		if got := h.Addrs(); !slices.Equal(got, addrs) {
			t.Errorf("%v: Addrs %v", addrs, got)
		}
		if h.HasAddrs() != (len(addrs) > 0) {
			t.Errorf("%v: HasAddrs %v", addrs, h.HasAddrs())
		}
		if other := NewHost("b.internal", addrs...); other.AddrsKey() != h.AddrsKey() {
			t.Errorf("%v: two hosts with these addresses have different keys", addrs)
		}
	}
	if NewHost("a", v4).AddrsKey() == NewHost("a", netip.AddrFrom16(v4.As16())).AddrsKey() {
		t.Error("an IPv4 address and its IPv4-mapped form have one key")
	}
}
