package entry

import (
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unique"

	networking "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
)

// autoAllocateLabel lets a ServiceEntry opt out of auto-allocated addresses
// (istiod's ipallocate controller honours it; so do we).
const autoAllocateLabel = "networking.istio.io/enable-autoallocate-ip"

// Entry is what the table needs of one ServiceEntry: validated, lower-cased
// hosts with the addresses each should answer with. Both sources (the
// Kubernetes reader and manifest files) convert to it once per change, so the
// table builder and the query path never see Istio's types.
type Entry struct {
	Key Key // the identity used by the store: its name is namespace/name
	// Created is metadata.creationTimestamp in Unix seconds, the API
	// server's granularity: the oldest entry wins a host, as in Istio.
	Created int64
	// hosts are the hosts this entry declares to the plugin's clients, each
	// with its addresses or none: a host without addresses still claims the
	// host for its namespace (see store.answerFor), but never reaches the table.
	Hosts []Host
	Ports []Port // spec.ports that are valid, for SRV answers

	// Resolution is spec.resolution: with Endpoints, where Envoy connects
	// for the entry's hosts, which is what a client that cannot route the
	// hosts' mesh addresses is answered with.
	Resolution networking.ServiceEntry_Resolution
	// Auto says the hosts' addresses are auto-allocated (status.addresses):
	// virtual addresses only clients whose proxy captures DNS can route,
	// where declared ones have a listener in every sidecar. It is the
	// entry's, not each host's, as istiod allocates for a whole entry or
	// none of it; beside Resolution it takes no room of its own.
	Auto bool
	// Headless says the hosts answer with the addresses of the entry's
	// endpoints, as Istio's name table answers a service whose address is
	// unspecified (0.0.0.0) and whose resolution is NONE, if it has ports
	// (BuildNameTable, pkg/dns/server/name_table.go): resolution NONE, no
	// spec.addresses, at least one valid port. The store finds them: the
	// workloads the selector picks, else spec.endpoints.
	Headless bool
	// Extras holds what most entries leave empty; nil when all of it is.
	Extras *Extras
}

// Extras are the parts of an entry that most entries lack, behind one
// pointer: three slice headers and a selector in every entry would make up
// a third of it.
type Extras struct {
	// Endpoints are the addresses of spec.endpoints that DNS can give, in
	// order: read for entries without a workload selector.
	Endpoints []Endpoint

	// ExportedTo is nil for a public entry, visible to every client
	// namespace (exportTo empty, the mesh default, or holding "*"; every
	// entry with "exportto all"). With "exportto client" an entry that is
	// not public lists the namespaces it is visible to ("." is its own).
	ExportedTo []string

	// Selector is spec.workloadSelector's labels: nil when the entry has
	// none, empty when it selects every workload of its namespace. With a
	// selector Istio takes the entry's endpoints from the workloads it
	// selects and ignores spec.endpoints. Held in one string: a map would
	// weigh more than the rest of the entry.
	Selector *Selector

	// LegacyHosts are the hosts the v1 allocator counts ("autoallocate
	// legacy"): every eligible host, even of an entry not exported to us,
	// because istiod allocates mesh-wide and positions depend on all of them.
	LegacyHosts []LegacyHost
}

// Endpoints, ExportedTo, Selector and LegacyHosts read the entry's Extras.
func (e *Entry) Endpoints() []Endpoint {
	if e.Extras == nil {
		return nil
	}
	return e.Extras.Endpoints
}

func (e *Entry) ExportedTo() []string {
	if e.Extras == nil {
		return nil
	}
	return e.Extras.ExportedTo
}

func (e *Entry) Selector() *Selector {
	if e.Extras == nil {
		return nil
	}
	return e.Extras.Selector
}

func (e *Entry) LegacyHosts() []LegacyHost {
	if e.Extras == nil {
		return nil
	}
	return e.Extras.LegacyHosts
}

// LegacyHost returns the slot of the legacy allocator that gives host name
// of e its addresses, or nil when e's hosts have their own.
func (e *Entry) LegacyHost(name string) *LegacyHost {
	for i, h := range e.LegacyHosts() {
		if h.Name == name {
			return &e.Extras.LegacyHosts[i]
		}
	}
	return nil
}

// extras returns e's Extras, made if it had none, for convert to fill.
func (e *Entry) extras() *Extras {
	if e.Extras == nil {
		e.Extras = new(Extras)
	}
	return e.Extras
}

// Namespace and Name are the entry's, read from its key: fields of their
// own would cost every entry two string headers.
func (e *Entry) Namespace() string {
	ns, _, _ := strings.Cut(e.Key.Name, "/")
	return ns
}

func (e *Entry) Name() string {
	_, name, _ := strings.Cut(e.Key.Name, "/")
	return name
}

// Host is one host of an entry and its addresses in declaration order. A
// host of the legacy allocator has none of its own: its slot is the entry's
// LegacyHost of the same name.
type Host struct {
	Name  string      // lower case, no trailing dot; wildcards as "*.example.com"
	addrs packedAddrs // the host's own, in declaration order
}

// NewHost returns host name with addrs, in order.
func NewHost(name string, addrs ...netip.Addr) Host {
	return Host{Name: name, addrs: packAddrs(addrs)}
}

// Addrs returns the host's addresses, in order, in a new slice.
func (h Host) Addrs() []netip.Addr { return slices.Collect(h.addrs.all()) }

// HasAddrs reports whether the host has an address of its own.
func (h Host) HasAddrs() bool { return h.addrs != "" }

// AddrsKey is a string equal for two hosts with the same addresses in the
// same order, for a map key; it means nothing else.
func (h Host) AddrsKey() string { return string(h.addrs) }

// Endpoint is one address of spec.endpoints: an IP, or a host name that
// Envoy resolves (DNS and DNS_ROUND_ROBIN entries).
type Endpoint struct {
	IP   netip.Addr // valid for an IP
	Host string     // lower case, no trailing dot, for a host name
}

// AutoAllocateMode says where addresses for ServiceEntries without
// spec.addresses come from.
type AutoAllocateMode int

const (
	AutoAllocateStatus AutoAllocateMode = iota // istiod's status.addresses (Istio >= 1.23 controller)
	AutoAllocateLegacy                         // our copy of istiod's v1 in-memory allocator
	AutoAllocateOff                            // declared addresses only
)

// ExportMode says which ServiceEntries a client sees ("exportto").
type ExportMode int

const (
	ExportPublic ExportMode = iota // public entries only, to every client
	ExportAll                      // every entry, exportTo ignored
	ExportClient                   // per the client's namespace, as Istio's proxy does per pod
)

// Options are the Corefile options that decide which addresses count.
type Options struct {
	AutoAllocate AutoAllocateMode
	ExportTo     ExportMode
	// dualStack serves auto-allocated IPv6 addresses too ("autoallocate MODE
	// dualstack"). Istio's agent gives a pod the auto-allocated addresses of
	// its first IP family only, unless ISTIO_DUAL_STACK is on and the pod is
	// dual-stack; declared addresses are served whatever their family.
	DualStack bool
}

// Skip records one item of a ServiceEntry that was left out, and why. reason is
// the label value of the skipped-items metric.
type Skip struct {
	Reason string
	Item   string
}

// Reasons an item is skipped; they are the values of the "reason" label of
// coredns_serviceentry_skipped_items_total.
const (
	ReasonInvalidHost          = "invalid_host"
	ReasonPartialWildcard      = "partial_wildcard"
	ReasonInvalidAddress       = "invalid_address"
	ReasonWideCIDR             = "cidr_not_host"
	ReasonStatusInvalidAddress = "status_invalid_address"
	ReasonStatusUnknownHost    = "status_unknown_host"
	ReasonInvalidPort          = "invalid_port"
	ReasonInvalidEndpoint      = "invalid_endpoint"
	ReasonInvalidSelector      = "invalid_selector"
)

// Kind is the kind of object a key names.
type Kind uint8

const (
	KindServiceEntry Kind = iota + 1
	KindWorkloadEntry
	KindPod
)

// Key is how the store knows an object: its kind and its namespace/name, so
// that objects of two kinds with one name never take each other's place.
type Key struct {
	Kind Kind
	Name string // namespace/name
}

// ServiceEntryKey is the key of the ServiceEntry namespace/name.
func ServiceEntryKey(namespacedName string) Key {
	return Key{Kind: KindServiceEntry, Name: namespacedName}
}

// String is the key as logs name it: "ServiceEntry ns/name".
func (k Key) String() string {
	switch k.Kind {
	case KindServiceEntry:
		return "ServiceEntry " + k.Name
	case KindWorkloadEntry:
		return "WorkloadEntry " + k.Name
	case KindPod:
		return "Pod " + k.Name
	}
	return "object " + k.Name
}

// Identity returns a ServiceEntry's namespace ("default" when a manifest
// leaves it out, as kubectl would apply it) and the key the store knows it
// by.
func Identity(meta *metav1.ObjectMeta) (namespace string, key Key) {
	namespace = meta.Namespace
	if namespace == "" {
		namespace = metav1.NamespaceDefault
	}
	return namespace, ServiceEntryKey(types.NamespacedName{Namespace: namespace, Name: meta.Name}.String())
}

// convert turns one ServiceEntry, as the slim decoder reads it, into an entry.
// Hosts without an address stay in the entry (with none): they take part in
// choosing which namespace wins a host declared by several entries, as in
// Istio, but never reach the table. It returns nil when the entry declares no
// host the client sees and takes no part in the legacy allocation; skips
// lists what was left out so the caller can log it and count it, once per
// change.
func convert(meta *metav1.ObjectMeta, spec *slimSpec, status *slimStatus, opts Options) (*Entry, []Skip) {
	namespace, key := Identity(meta)
	e := &Entry{Key: key, Created: meta.CreationTimestamp.Unix()}
	exported := opts.ExportTo == ExportAll || exportedToAll(spec.ExportTo)
	if !exported && opts.ExportTo == ExportClient {
		e.extras().ExportedTo = exportedNamespaces(namespace, spec.ExportTo)
		exported = len(e.ExportedTo()) > 0
	}
	var skips []Skip

	declared, addrSkips := parseAddresses(spec.Addresses)
	skips = append(skips, addrSkips...)
	// Istio makes one service per host and address that parses as an IP or a
	// CIDR: an entry whose addresses are all invalid declares no service at
	// all, while one with only wide CIDRs declares services without an
	// address, which still claim the host.
	claims := len(spec.Addresses) == 0 || len(declared) > 0 || slices.ContainsFunc(addrSkips, func(s Skip) bool { return s.Reason == ReasonWideCIDR })

	resolution := spec.Resolution.value
	var fromStatus map[string][]netip.Addr
	if opts.AutoAllocate == AutoAllocateStatus && statusQualifies(meta, spec) {
		var statusSkips []Skip
		fromStatus, statusSkips = statusAddresses(spec.Hosts, status.Addresses, opts.DualStack)
		skips = append(skips, statusSkips...)
	}
	legacy := opts.AutoAllocate == AutoAllocateLegacy &&
		len(spec.Addresses) == 0 && resolution != networking.ServiceEntry_NONE

	// One string for the declared addresses, which every host shares.
	packedDeclared := packAddrs(declared)
	seen := make(map[string]bool, len(spec.Hosts))
	for _, raw := range spec.Hosts {
		name, reason := normalizeHost(raw)
		if reason != "" {
			skips = append(skips, Skip{Reason: reason, Item: raw})
			continue
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		wildcard := strings.HasPrefix(name, "*.")
		h := Host{Name: name}
		switch {
		case len(declared) > 0:
			h.addrs = packedDeclared
		case fromStatus != nil && (!wildcard || resolution == networking.ServiceEntry_DYNAMIC_DNS):
			h.addrs, e.Auto = packAddrs(fromStatus[raw]), true
		case legacy && !wildcard:
			x := e.extras()
			x.LegacyHosts = append(x.LegacyHosts, LegacyHost{
				Namespace: namespace,
				Host:      raw,
				Created:   e.Created,
				Entry:     meta.Name,
				Name:      name,
				V6:        opts.DualStack,
			})
		}
		if exported && claims {
			e.Hosts = append(e.Hosts, h)
		}
	}
	if len(e.Hosts) == 0 && len(e.LegacyHosts()) == 0 {
		return nil, skips
	}
	var portSkips, endpointSkips []Skip
	e.Ports, portSkips = parsePorts(spec.Ports)
	e.Resolution = resolution
	selector, selectorSkips := parseSelector(spec.Selector)
	if selector != nil {
		e.extras().Selector = selector
	}
	e.Headless = resolution == networking.ServiceEntry_NONE && len(spec.Addresses) == 0 && len(e.Ports) > 0
	switch resolution {
	case networking.ServiceEntry_STATIC, networking.ServiceEntry_DNS, networking.ServiceEntry_DNS_ROUND_ROBIN, networking.ServiceEntry_NONE:
		if spec.Selector == nil {
			var endpoints []Endpoint
			if endpoints, endpointSkips = parseEndpoints(spec.Endpoints); len(endpoints) > 0 {
				e.extras().Endpoints = endpoints
			}
		}
	}
	return e, slices.Concat(skips, portSkips, endpointSkips, selectorSkips)
}

// parseSelector validates spec.workloadSelector's labels as Istio's
// validation does (ValidateAlphaWorkloadSelector, pkg/config/validation): no
// empty key, no "*" in a key or a value. Istio refuses the whole entry for
// such a label; here the selector alone is left out, so the entry selects
// nothing. So is a label whose key holds "=" or NUL, or whose value holds
// NUL: Istio keeps it, but no workload's label can match it (Istio's
// validation of WorkloadEntries and the API server's of pods refuse such
// labels), and Labels could not tell it apart from another.
func parseSelector(labels map[string]string) (*Selector, []Skip) {
	if labels == nil {
		return nil, nil
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if v := labels[k]; k == "" || strings.Contains(k, "*") || strings.Contains(v, "*") || strings.ContainsAny(k, "=\x00") || strings.Contains(v, "\x00") {
			return nil, []Skip{{Reason: ReasonInvalidSelector, Item: k + "=" + v}}
		}
	}
	return SelectorOf(labels), nil
}

// parseEndpoints validates the addresses of spec.endpoints one by one: an IP
// (a scoped one means nothing to another host), or a host name as
// normalizeHost accepts it, without wildcard. Anything else, a Unix socket
// (unix://) included, is nothing DNS can answer with. Duplicates are
// dropped; order is kept.
func parseEndpoints(raw []slimEndpoint) ([]Endpoint, []Skip) {
	var out []Endpoint
	var skips []Skip
	for _, ep := range raw {
		var e Endpoint
		if ip, err := netip.ParseAddr(ep.Address); err == nil && ip.Zone() == "" {
			e.IP = ip.Unmap()
		} else if name, reason := normalizeHost(ep.Address); err != nil && reason == "" && !strings.HasPrefix(name, "*") {
			e.Host = name
		} else {
			skips = append(skips, Skip{Reason: ReasonInvalidEndpoint, Item: ep.Address})
			continue
		}
		if !slices.Contains(out, e) {
			out = append(out, e)
		}
	}
	return out, skips
}

// exportedToAll reports whether an entry is visible to every namespace: exportTo
// empty (the mesh default) or containing "*".
func exportedToAll(exportTo []string) bool {
	return len(exportTo) == 0 || slices.Contains(exportTo, "*")
}

// exportedNamespaces lists the namespaces an entry that is not public is
// visible to, as Istio's service index reads exportTo: "~" hides it from
// every namespace, "." is its own namespace, any other value names one.
func exportedNamespaces(own string, exportTo []string) []string {
	if slices.Contains(exportTo, "~") {
		return nil
	}
	var out []string
	for _, ns := range exportTo {
		if ns == "." {
			ns = own
		}
		if !slices.Contains(out, ns) {
			out = append(out, ns)
		}
	}
	return out
}

// SelectsWorkloads reports whether e answers with the workloads its
// selector picks in its namespace: a headless entry to every client, and a
// STATIC, DNS or DNS_ROUND_ROBIN one to a client outside the mesh (Envoy's
// endpoints for it are those workloads). A source must deliver the
// workloads of that namespace, pods included, and need deliver no others.
func (e *Entry) SelectsWorkloads() bool {
	if e.Selector() == nil {
		return false
	}
	switch e.Resolution {
	case networking.ServiceEntry_STATIC, networking.ServiceEntry_DNS, networking.ServiceEntry_DNS_ROUND_ROBIN:
		return true
	}
	return e.Headless
}

// VisibleTo reports whether clients of namespace ns ("" for a client of no
// known namespace) see e.
func (e *Entry) VisibleTo(ns string) bool {
	exportedTo := e.ExportedTo()
	return exportedTo == nil || (ns != "" && slices.Contains(exportedTo, ns))
}

// statusQualifies applies istiod's rules for when status.addresses, written by
// its ipallocate controller, are in force. Status left over from before the
// entry stopped qualifying is stale and must be ignored.
func statusQualifies(meta *metav1.ObjectMeta, spec *slimSpec) bool {
	if spec.Resolution.value == networking.ServiceEntry_NONE || len(spec.Addresses) > 0 {
		return false
	}
	return !strings.EqualFold(meta.Labels[autoAllocateLabel], "false")
}

// statusAddresses maps each spec host (compared exactly, as istiod does) to its
// auto-allocated addresses: the last IPv4 and, with dualStack, the last IPv6
// value written for it.
func statusAddresses(hosts []string, addrs []slimStatusAddress, dualStack bool) (map[string][]netip.Addr, []Skip) {
	var skips []Skip
	last := make(map[string]*[2]netip.Addr, len(hosts))
	for _, a := range addrs {
		if !slices.Contains(hosts, a.Host) {
			skips = append(skips, Skip{Reason: ReasonStatusUnknownHost, Item: a.Host + "=" + a.Value})
			continue
		}
		ip, err := netip.ParseAddr(a.Value)
		if err != nil || ip.Zone() != "" {
			skips = append(skips, Skip{Reason: ReasonStatusInvalidAddress, Item: a.Host + "=" + a.Value})
			continue
		}
		pair := last[a.Host]
		if pair == nil {
			pair = new([2]netip.Addr)
			last[a.Host] = pair
		}
		if ip.Is4() {
			pair[0] = ip
		} else {
			pair[1] = ip
		}
	}
	out := make(map[string][]netip.Addr, len(last))
	for host, pair := range last {
		for i, ip := range pair {
			if ip.IsValid() && (i == 0 || dualStack) {
				out[host] = append(out[host], ip)
			}
		}
	}
	return out, skips
}

// parseAddresses validates spec.addresses one by one. Plain IPs and /32 or /128
// prefixes are served as addresses; wider CIDRs never resolve (as in Istio).
// Duplicates are dropped; order is kept.
func parseAddresses(raw []string) ([]netip.Addr, []Skip) {
	var out []netip.Addr
	var skips []Skip
	for _, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			prefix, perr := netip.ParsePrefix(s)
			if perr != nil {
				skips = append(skips, Skip{Reason: ReasonInvalidAddress, Item: s})
				continue
			}
			if prefix.Bits() != prefix.Addr().BitLen() {
				skips = append(skips, Skip{Reason: ReasonWideCIDR, Item: s})
				continue
			}
			ip = prefix.Addr()
		}
		if ip.Zone() != "" {
			// A scoped address (fe80::1%eth0) means nothing to another host.
			skips = append(skips, Skip{Reason: ReasonInvalidAddress, Item: s})
			continue
		}
		if !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out, skips
}

// parsePorts validates spec.ports one by one, as Istio does: a number from 1
// to 65535 and a name that is an RFC 1123 label. Protocol UDP is served as
// _udp, every other protocol (TCP, HTTP, TLS, GRPC, none...) as _tcp.
// Duplicates are dropped; order is kept.
func parsePorts(raw []slimPort) ([]Port, []Skip) {
	if len(raw) == 0 {
		return nil, nil
	}
	out := make([]Port, 0, len(raw))
	var skips []Skip
	for _, p := range raw {
		if uint32(p.Number) < 1 || uint32(p.Number) > 65535 || len(validation.IsDNS1123Label(p.Name)) > 0 {
			skips = append(skips, Skip{Reason: ReasonInvalidPort, Item: p.Name + "/" + strconv.FormatUint(uint64(uint32(p.Number)), 10)})
			continue
		}
		// Port names repeat across entries (http, https, grpc...): the
		// entries decoded while a name's canonical copy lives share it.
		// (The handle is not kept: it would keep every name ever seen.)
		port := Port{Name: unique.Make(p.Name).Value(), Number: uint16(uint32(p.Number)), UDP: strings.EqualFold(p.Protocol, "UDP")}
		if !slices.Contains(out, port) {
			out = append(out, port)
		}
	}
	if len(out) == 0 {
		out = nil
	}
	return out, skips
}

// normalizeHost validates a ServiceEntry host and returns it lower-cased without
// a trailing dot, or the reason it is skipped. The name is an RFC 1123
// subdomain (apimachinery's check: at most 253 bytes, letters, digits and inner
// hyphens; single labels allowed), with Istio's rule on top that every label
// has at most 63 bytes. The first label may be "*" (a wildcard covering every
// name below, never the apex); a partial wildcard ("*foo.example.com") is
// accepted by Istio with a warning but never resolves, so it is skipped. "*"
// alone would capture every name in the zone and is skipped as invalid.
func normalizeHost(raw string) (string, string) {
	name := strings.ToLower(strings.TrimSuffix(raw, "."))
	if rest, ok := strings.CutPrefix(name, "*"); ok && rest != "" && rest[0] != '.' {
		return "", ReasonPartialWildcard
	}
	var problems []string
	if strings.HasPrefix(name, "*.") {
		problems = validation.IsWildcardDNS1123Subdomain(name)
	} else {
		problems = validation.IsDNS1123Subdomain(name)
	}
	if len(problems) > 0 || slices.ContainsFunc(strings.Split(name, "."), func(label string) bool { return len(label) > validation.DNS1123LabelMaxLength }) {
		return "", ReasonInvalidHost
	}
	return name, ""
}
