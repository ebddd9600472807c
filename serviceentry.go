// Package serviceentry is a CoreDNS plugin that answers A and AAAA queries for
// the hosts of Istio ServiceEntries, read from a Kubernetes API server or from
// manifest files.
package serviceentry

import (
	"context"
	"errors"
	"net"
	"sync/atomic"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/dnsutil"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

const pluginName = "serviceentry"

// ServiceEntry is the plugin handler. It only reads the table its source keeps
// current; it never parses, locks or logs on the query path.
type ServiceEntry struct {
	Next  plugin.Handler
	Zones []string
	Fall  fall.F
	TTL   uint32

	// store is the one of the source this instance answers from. OnStartup
	// attaches it (a reload may hand over a running one), so it is read
	// atomically: ready may ask before it is set.
	store atomic.Pointer[store]
}

// attach makes se answer from st.
func (se *ServiceEntry) attach(st *store) *ServiceEntry {
	se.store.Store(st)
	return se
}

// table is the published table, or nil before the first full read.
func (se *ServiceEntry) table() *table {
	if st := se.store.Load(); st != nil {
		return st.table()
	}
	return nil
}

// errNotSynced is returned with SERVFAIL so that the errors plugin logs why.
var errNotSynced = errors.New("ServiceEntries not read yet")

// ServeDNS implements plugin.Handler.
func (se *ServiceEntry) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	state := request.Request{W: w, Req: r}
	qname := state.Name()
	zone := plugin.Zones(se.Zones).Matches(qname)
	if zone == "" {
		return plugin.NextOrFailure(se.Name(), se.Next, ctx, w, r)
	}

	tbl := se.table()
	if tbl == nil {
		// Not synced. Cluster DNS must not go down with us: a name that
		// fallthrough covers goes on exactly as an unknown name would (a
		// ServiceEntry host may get the next plugin's answer until then).
		// Where we are the only authority, we cannot say anything true.
		if se.Fall.Through(qname) {
			return plugin.NextOrFailure(se.Name(), se.Next, ctx, w, r)
		}
		return dns.RcodeServerFailure, plugin.Error(se.Name(), errNotSynced)
	}

	ans := tbl.lookup(trimDot(qname))
	if ans == nil {
		if se.Fall.Through(qname) {
			return plugin.NextOrFailure(se.Name(), se.Next, ctx, w, r)
		}
		return se.negative(w, r, zone, dns.RcodeNameError)
	}

	var rrs []dns.RR
	switch state.QType() {
	case dns.TypeA:
		rrs = addressRecords(r.Question[0].Name, dns.TypeA, se.TTL, ans.a)
	case dns.TypeAAAA:
		rrs = addressRecords(r.Question[0].Name, dns.TypeAAAA, se.TTL, ans.aaaa)
	}
	if len(rrs) == 0 {
		return se.negative(w, r, zone, dns.RcodeSuccess)
	}

	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.Answer = rrs
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

// negative writes NXDOMAIN or NODATA (rcode success, no answer) with the zone's
// SOA in the authority section, so that resolvers cache it for the plugin's TTL
// (RFC 2308).
func (se *ServiceEntry) negative(w dns.ResponseWriter, r *dns.Msg, zone string, rcode int) (int, error) {
	m := new(dns.Msg)
	m.SetRcode(r, rcode)
	m.Authoritative = true
	m.Ns = []dns.RR{soa(zone, se.TTL)}
	w.WriteMsg(m)
	return rcode, nil
}

// soa synthesizes the zone's SOA as CoreDNS's kubernetes plugin does; its
// minimum (the negative-caching TTL) is the plugin's TTL.
func soa(zone string, ttl uint32) dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:      dnsutil.Join("ns.dns", zone),
		Mbox:    dnsutil.Join("hostmaster", zone),
		Serial:  1,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  ttl,
	}
}

// addressRecords builds the answer for the query name as asked (keeping its
// case). The records are fresh for every reply because plugins in front of us
// (rewrite, loadbalance, cache) may change what they are handed; the IPs are
// shared and never written.
func addressRecords(owner string, qtype uint16, ttl uint32, ips []net.IP) []dns.RR {
	if len(ips) == 0 {
		return nil
	}
	hdr := dns.RR_Header{Name: owner, Rrtype: qtype, Class: dns.ClassINET, Ttl: ttl}
	rrs := make([]dns.RR, len(ips))
	if qtype == dns.TypeA {
		recs := make([]dns.A, len(ips))
		for i, ip := range ips {
			recs[i] = dns.A{Hdr: hdr, A: ip}
			rrs[i] = &recs[i]
		}
		return rrs
	}
	recs := make([]dns.AAAA, len(ips))
	for i, ip := range ips {
		recs[i] = dns.AAAA{Hdr: hdr, AAAA: ip}
		rrs[i] = &recs[i]
	}
	return rrs
}

// trimDot drops the trailing dot of a fully qualified name: the table keys
// names without it, as ServiceEntry hosts are written.
func trimDot(name string) string {
	if len(name) > 1 && name[len(name)-1] == '.' {
		return name[:len(name)-1]
	}
	return name
}

// Name implements plugin.Handler.
func (se *ServiceEntry) Name() string { return pluginName }
