package serviceentry

import (
	"net/netip"
	"slices"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/coredns-serviceentry/serviceentry/internal/table"
	networking "istio.io/api/networking/v1alpha3"
)

// minReach is the class every client is at least: an answer that reaches it
// needs no other.
const minReach = reach.Outside

// reachOf is the least class of client that routes the addresses the hosts
// of e answer with. Auto-allocated addresses have a listener only in proxies that
// capture DNS, and in ztunnel; declared ones have one in every sidecar; the
// declared addresses of a NONE entry are where the client connects
// (Envoy's original destination), real for everyone. docs/reach.md has the
// Istio sources.
func reachOf(e *entry.Entry) reach.Class {
	switch {
	case e.Auto:
		return reach.Mesh
	case e.Resolution == networking.ServiceEntry_NONE:
		return reach.Outside
	}
	return reach.DeclaredOnly
}

// directOf is what a client that cannot route a host's mesh addresses is
// answered with: where Envoy would connect for it (convertResolution,
// pilot/pkg/networking/core/cluster.go), decided by the oldest contributing
// entry (contributors come oldest first):
//
//   - STATIC: the addresses of the endpoints, of every contributing STATIC
//     entry;
//   - DNS (STRICT_DNS, Envoy uses every endpoint): the addresses of the IP
//     endpoints when the first endpoint is an IP, else a CNAME to the first
//     host-name endpoint (one name can alias one target);
//   - DNS_ROUND_ROBIN (LOGICAL_DNS, Envoy uses the first endpoint only): that
//     endpoint, as an address or a CNAME;
//   - with a workload selector, the endpoints are the workloads it selects
//     (a STRICT_DNS or LOGICAL_DNS cluster's too: FromServiceEndpoints,
//     pilot/pkg/xds/endpoints/endpoint_builder.go), in endpointAddrs'
//     order;
//   - DNS or DNS_ROUND_ROBIN without endpoints and without a workload
//     selector: Envoy resolves the host itself, so the real answer is the
//     next plugin's: nil, and resolved is true (a sidecar's Envoy asking
//     for it must get it too);
//   - anything else (DYNAMIC_DNS, NONE without reachable addresses, a
//     selector that picks no workload with an address): nil, the name is
//     passed on.
//
// Answers are shared through shared by entry, so an entry's many hosts hold
// one.
func (s *store) directOf(contributors []*entry.Entry, shared map[any]*table.Answer) (ans *table.Answer, resolved bool) {
	oldest := contributors[0]
	resolution := oldest.Resolution
	switch resolution {
	case networking.ServiceEntry_STATIC, networking.ServiceEntry_DNS, networking.ServiceEntry_DNS_ROUND_ROBIN:
	default:
		return nil, false
	}
	endpoints := oldest.Endpoints()
	if len(endpoints) == 0 && oldest.Selector() == nil {
		return nil, resolution != networking.ServiceEntry_STATIC
	}
	type directKey struct{ e *entry.Entry }
	if len(contributors) == 1 {
		if ans, ok := shared[directKey{oldest}]; ok {
			return ans, false
		}
	}
	switch {
	case oldest.Selector() != nil && resolution == networking.ServiceEntry_DNS_ROUND_ROBIN:
		if addrs := s.endpointAddrs(oldest); len(addrs) > 0 {
			ans = table.NewAnswer(addrs[:1], nil)
		}
	case oldest.Selector() != nil:
		ans = s.directAddrs(contributors, resolution)
	case endpoints[0].Host != "" && resolution != networking.ServiceEntry_STATIC:
		ans = &table.Answer{Target: endpoints[0].Host}
	case resolution == networking.ServiceEntry_DNS_ROUND_ROBIN:
		ans = table.NewAnswer([]netip.Addr{endpoints[0].IP}, nil)
	default:
		ans = s.directAddrs(contributors, resolution)
	}
	if len(contributors) == 1 {
		shared[directKey{oldest}] = ans
	}
	return ans, false
}

// directAddrs answers with the IP endpoints (the selected workloads, with a
// selector) of every contributor of resolution, without duplicates; nil
// when there are none.
func (s *store) directAddrs(contributors []*entry.Entry, resolution networking.ServiceEntry_Resolution) *table.Answer {
	var ips []netip.Addr
	add := func(ip netip.Addr) {
		if ip.IsValid() && !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	for _, e := range contributors {
		switch {
		case e.Resolution != resolution:
		case e.Selector() != nil:
			for _, ip := range s.endpointAddrs(e) {
				add(ip)
			}
		default:
			for _, ep := range e.Endpoints() {
				add(ep.IP)
			}
		}
	}
	if len(ips) == 0 {
		return nil
	}
	return table.NewAnswer(ips, nil)
}

// resolvedBy lists the names Envoy resolves itself for entry e, through
// cluster DNS from its pod's address, and connects to uncaptured: the
// host-name endpoints of a DNS or DNS_ROUND_ROBIN entry (a STRICT_DNS or
// LOGICAL_DNS cluster's hosts). A sidecar pod asking for such a name must
// get its real address, even when a ServiceEntry of its own declares it.
// (The hosts of an entry without endpoints are its Resolved answers.)
func resolvedBy(e *entry.Entry) []string {
	if e.Resolution != networking.ServiceEntry_DNS && e.Resolution != networking.ServiceEntry_DNS_ROUND_ROBIN {
		return nil
	}
	var names []string
	for _, ep := range e.Endpoints() {
		if ep.Host != "" {
			names = append(names, ep.Host)
		}
	}
	return names
}

// countResolved adds delta to the count of each name Envoy resolves for e,
// and marks those names to be rebuilt.
func (s *store) countResolved(e *entry.Entry, delta int) {
	for _, name := range resolvedBy(e) {
		if n := s.envoyResolves[name] + delta; n > 0 {
			s.envoyResolves[name] = n
		} else {
			delete(s.envoyResolves, name)
		}
		s.dirty[name] = true
	}
}
