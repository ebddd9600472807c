package serviceentry

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	networking "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
)

// autoAllocateLabel lets a ServiceEntry opt out of auto-allocated addresses
// (istiod's ipallocate controller honours it; so do we).
const autoAllocateLabel = "networking.istio.io/enable-autoallocate-ip"

// entry is what the table needs of one ServiceEntry: validated, lower-cased
// hosts with the addresses each should answer with. Both sources (the
// Kubernetes reader and manifest files) convert to it once per change, so the
// table builder and the query path never see Istio's types.
type entry struct {
	key       string // namespace/name: the identity used by the store
	namespace string
	name      string
	created   time.Time
	// hosts are the hosts this entry declares to the plugin's clients, each
	// with its addresses or none: a host without addresses still claims the
	// host for its namespace (see store.answerFor), but never reaches the table.
	hosts []hostAddrs
	ports []srvPort // spec.ports that are valid, for SRV answers

	// exportedTo is nil for a public entry, visible to every client
	// namespace (exportTo empty, the mesh default, or holding "*"; every
	// entry with "exportto all"). With "exportto client" an entry that is
	// not public lists the namespaces it is visible to ("." is its own).
	exportedTo []string

	// legacyHosts are the hosts the v1 allocator counts ("autoallocate
	// legacy"): every eligible host, even of an entry not exported to us,
	// because istiod allocates mesh-wide and positions depend on all of them.
	legacyHosts []legacyHost
}

// hostAddrs is one host of an entry and its addresses in declaration order, or,
// when legacy is set, the allocator slot its addresses come from.
type hostAddrs struct {
	name   string // lower case, no trailing dot; wildcards as "*.example.com"
	addrs  []netip.Addr
	legacy *legacyHost
}

// autoAllocateMode says where addresses for ServiceEntries without
// spec.addresses come from.
type autoAllocateMode int

const (
	autoAllocateStatus autoAllocateMode = iota // istiod's status.addresses (Istio >= 1.23 controller)
	autoAllocateLegacy                         // our copy of istiod's v1 in-memory allocator
	autoAllocateOff                            // declared addresses only
)

// exportMode says which ServiceEntries a client sees ("exportto").
type exportMode int

const (
	exportPublic exportMode = iota // public entries only, to every client
	exportAll                      // every entry, exportTo ignored
	exportClient                   // per the client's namespace, as Istio's proxy does per pod
)

// convertOptions are the Corefile options that decide which addresses count.
type convertOptions struct {
	autoAllocate autoAllocateMode
	exportTo     exportMode
	// dualStack serves auto-allocated IPv6 addresses too ("autoallocate MODE
	// dualstack"). Istio's agent gives a pod the auto-allocated addresses of
	// its first IP family only, unless ISTIO_DUAL_STACK is on and the pod is
	// dual-stack; declared addresses are served whatever their family.
	dualStack bool
}

// skip records one item of a ServiceEntry that was left out, and why. reason is
// the label value of the skipped-items metric.
type skip struct {
	reason string
	item   string
}

// Reasons an item is skipped; they are the values of the "reason" label of
// coredns_serviceentry_skipped_items_total.
const (
	reasonInvalidHost          = "invalid_host"
	reasonPartialWildcard      = "partial_wildcard"
	reasonInvalidAddress       = "invalid_address"
	reasonWideCIDR             = "cidr_not_host"
	reasonStatusInvalidAddress = "status_invalid_address"
	reasonStatusUnknownHost    = "status_unknown_host"
	reasonInvalidPort          = "invalid_port"
)

// identity returns an entry's namespace ("default" when a manifest leaves it
// out, as kubectl would apply it) and the key the store knows it by.
func identity(meta *metav1.ObjectMeta) (namespace, key string) {
	namespace = meta.Namespace
	if namespace == "" {
		namespace = metav1.NamespaceDefault
	}
	return namespace, types.NamespacedName{Namespace: namespace, Name: meta.Name}.String()
}

// convert turns one ServiceEntry into an entry. Hosts without an address stay
// in the entry (with none): they take part in choosing which namespace wins a
// host declared by several entries, as in Istio, but never reach the table.
// It returns nil when the entry declares no host the client sees and takes no
// part in the legacy allocation; skips lists what was left out so the caller
// can log it and count it, once per change.
func convert(meta *metav1.ObjectMeta, spec *networking.ServiceEntry, status *networking.ServiceEntryStatus, opts convertOptions) (*entry, []skip) {
	namespace, key := identity(meta)
	// The namespace and name are the key's own bytes: one string per
	// entry instead of three.
	e := &entry{
		key:       key,
		namespace: key[:len(namespace)],
		name:      key[len(namespace)+1:],
		created:   meta.CreationTimestamp.Time,
	}
	exported := opts.exportTo == exportAll || exportedToAll(spec.GetExportTo())
	if !exported && opts.exportTo == exportClient {
		e.exportedTo = exportedNamespaces(namespace, spec.GetExportTo())
		exported = len(e.exportedTo) > 0
	}
	var skips []skip

	declared, addrSkips := parseAddresses(spec.GetAddresses())
	skips = append(skips, addrSkips...)
	// Istio makes one service per host and address that parses as an IP or a
	// CIDR: an entry whose addresses are all invalid declares no service at
	// all, while one with only wide CIDRs declares services without an
	// address, which still claim the host.
	claims := len(spec.GetAddresses()) == 0 || len(declared) > 0 || slices.ContainsFunc(addrSkips, func(s skip) bool { return s.reason == reasonWideCIDR })

	resolution := spec.GetResolution()
	var fromStatus map[string][]netip.Addr
	if opts.autoAllocate == autoAllocateStatus && statusQualifies(meta, spec) {
		var statusSkips []skip
		fromStatus, statusSkips = statusAddresses(spec.GetHosts(), status.GetAddresses(), opts.dualStack)
		skips = append(skips, statusSkips...)
	}
	legacy := opts.autoAllocate == autoAllocateLegacy &&
		len(spec.GetAddresses()) == 0 && resolution != networking.ServiceEntry_NONE

	seen := make(map[string]bool, len(spec.GetHosts()))
	legacyOf := make(map[int]int) // index in e.hosts -> index in e.legacyHosts
	for _, raw := range spec.GetHosts() {
		name, reason := normalizeHost(raw)
		if reason != "" {
			skips = append(skips, skip{reason: reason, item: raw})
			continue
		}
		if seen[name] {
			continue
		}
		seen[name] = true
		wildcard := strings.HasPrefix(name, "*.")
		h := hostAddrs{name: name}
		switch {
		case len(declared) > 0:
			h.addrs = declared
		case fromStatus != nil && (!wildcard || resolution == networking.ServiceEntry_DYNAMIC_DNS):
			h.addrs = fromStatus[raw]
		case legacy && !wildcard:
			e.legacyHosts = append(e.legacyHosts, legacyHost{
				namespace: namespace,
				host:      raw,
				created:   e.created.Truncate(time.Second),
				entry:     meta.Name,
				name:      name,
				v6:        opts.dualStack,
			})
			legacyOf[len(e.hosts)] = len(e.legacyHosts) - 1
		}
		if exported && claims {
			e.hosts = append(e.hosts, h)
		} else {
			delete(legacyOf, len(e.hosts))
		}
	}
	// A legacy host's slot is the one in e.legacyHosts, pointed at once the
	// slice has stopped growing: one copy of it, not two.
	for i, j := range legacyOf {
		e.hosts[i].legacy = &e.legacyHosts[j]
	}
	if len(e.hosts) == 0 && len(e.legacyHosts) == 0 {
		return nil, skips
	}
	var portSkips []skip
	e.ports, portSkips = parsePorts(spec.GetPorts())
	return e, append(skips, portSkips...)
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

// visibleTo reports whether clients of namespace ns ("" for a client of no
// known namespace) see e.
func (e *entry) visibleTo(ns string) bool {
	return e.exportedTo == nil || (ns != "" && slices.Contains(e.exportedTo, ns))
}

// statusQualifies applies istiod's rules for when status.addresses, written by
// its ipallocate controller, are in force. Status left over from before the
// entry stopped qualifying is stale and must be ignored.
func statusQualifies(meta *metav1.ObjectMeta, spec *networking.ServiceEntry) bool {
	if spec.GetResolution() == networking.ServiceEntry_NONE || len(spec.GetAddresses()) > 0 {
		return false
	}
	return !strings.EqualFold(meta.Labels[autoAllocateLabel], "false")
}

// statusAddresses maps each spec host (compared exactly, as istiod does) to its
// auto-allocated addresses: the last IPv4 and, with dualStack, the last IPv6
// value written for it.
func statusAddresses(hosts []string, addrs []*networking.ServiceEntryAddress, dualStack bool) (map[string][]netip.Addr, []skip) {
	var skips []skip
	last := make(map[string]*[2]netip.Addr, len(hosts))
	for _, a := range addrs {
		if !slices.Contains(hosts, a.GetHost()) {
			skips = append(skips, skip{reason: reasonStatusUnknownHost, item: a.GetHost() + "=" + a.GetValue()})
			continue
		}
		ip, err := netip.ParseAddr(a.GetValue())
		if err != nil || ip.Zone() != "" {
			skips = append(skips, skip{reason: reasonStatusInvalidAddress, item: a.GetHost() + "=" + a.GetValue()})
			continue
		}
		pair := last[a.GetHost()]
		if pair == nil {
			pair = new([2]netip.Addr)
			last[a.GetHost()] = pair
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
func parseAddresses(raw []string) ([]netip.Addr, []skip) {
	var out []netip.Addr
	var skips []skip
	for _, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			prefix, perr := netip.ParsePrefix(s)
			if perr != nil {
				skips = append(skips, skip{reason: reasonInvalidAddress, item: s})
				continue
			}
			if prefix.Bits() != prefix.Addr().BitLen() {
				skips = append(skips, skip{reason: reasonWideCIDR, item: s})
				continue
			}
			ip = prefix.Addr()
		}
		if ip.Zone() != "" {
			// A scoped address (fe80::1%eth0) means nothing to another host.
			skips = append(skips, skip{reason: reasonInvalidAddress, item: s})
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
func parsePorts(raw []*networking.ServicePort) ([]srvPort, []skip) {
	var out []srvPort
	var skips []skip
	for _, p := range raw {
		if p.GetNumber() < 1 || p.GetNumber() > 65535 || len(validation.IsDNS1123Label(p.GetName())) > 0 {
			skips = append(skips, skip{reason: reasonInvalidPort, item: p.GetName() + "/" + strconv.FormatUint(uint64(p.GetNumber()), 10)})
			continue
		}
		port := srvPort{name: p.GetName(), number: uint16(p.GetNumber()), udp: strings.EqualFold(p.GetProtocol(), "UDP")}
		if !slices.Contains(out, port) {
			out = append(out, port)
		}
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
		return "", reasonPartialWildcard
	}
	var problems []string
	if strings.HasPrefix(name, "*.") {
		problems = validation.IsWildcardDNS1123Subdomain(name)
	} else {
		problems = validation.IsDNS1123Subdomain(name)
	}
	if len(problems) > 0 || slices.ContainsFunc(strings.Split(name, "."), func(label string) bool { return len(label) > validation.DNS1123LabelMaxLength }) {
		return "", reasonInvalidHost
	}
	return name, ""
}
