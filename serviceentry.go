// Package serviceentry is a CoreDNS plugin that answers A and AAAA queries for
// the hosts of Istio ServiceEntries, read from a Kubernetes API server or from
// manifest files.
package serviceentry

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/coredns-serviceentry/serviceentry/internal/table"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/dnsutil"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"github.com/coredns/coredns/plugin/pkg/nonwriter"
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

	// ClusterDomains are the Kubernetes cluster domains, fully qualified; nil
	// means cluster.local. A ServiceEntry host inside them is answered only
	// when the rest of the chain says NXDOMAIN, so that a real Service's name
	// keeps its ClusterIP (as in Istio, where a Service overrides an entry).
	ClusterDomains []string

	// SearchDomains are the cluster domains whose search-path expansions
	// (<host>.<namespace>.svc.<domain> and shorter) are answered with a
	// CNAME to the host; nil turns searchpath off.
	SearchDomains []string

	// clients says how a client's class, what it can route, is told.
	clients clientMode
	// zonesLabel is the value of the zones label of the plugin's metrics.
	zonesLabel string
	// counters are the query counters of each server answered for; a
	// server's are added under countersMu.
	counters   atomic.Pointer[[]*queryCounters]
	countersMu sync.Mutex

	// store is the one of the source this instance answers from. OnStartup
	// attaches it (a reload may hand over a running one), so it is read
	// atomically: ready may ask before it is set, and a reload that keeps
	// the block lets go of it (see successor).
	store atomic.Pointer[store]
	// block is the plugin block se answers for, as the source registry
	// knows it; OnStartup sets it before the servers start.
	block *user
}

// attach makes se answer from st.
func (se *ServiceEntry) attach(st *store) *ServiceEntry {
	se.store.Store(st)
	return se
}

// table is the published table, or nil before the first full read.
func (se *ServiceEntry) table() *table.Table {
	if st := se.store.Load(); st != nil {
		return st.table()
	}
	return nil
}

// viewOf returns t, the table of st, as the client of w sees it. With
// "exportto client" the client's namespace comes from the address it asks
// from.
func (se *ServiceEntry) viewOf(st *store, t *table.Table, w dns.ResponseWriter) (table.View, asker) {
	who := asker{w: w, pods: st.clients, mode: se.clients}
	if t.Overlays == nil {
		// No namespace sees anything else: no need to know the client's.
		return table.View{Table: t}, who
	}
	return t.ViewFor(who.client().Namespace), who
}

// defaultClusterDomains is where Kubernetes names live unless cluster_domain
// says otherwise.
var defaultClusterDomains = []string{"cluster.local."}

var (
	// errNotSynced is returned with SERVFAIL so that the errors plugin logs why.
	errNotSynced = errors.New("ServiceEntries not read yet")
	// errChainFailed is returned when the plugins asked before answering a
	// name in the cluster domain fail without saying why.
	errChainFailed = errors.New("the next plugin failed for a ServiceEntry host in the cluster domain")
)

// ServeDNS implements plugin.Handler. The goroutine serving a query starts
// with a small stack, and one that is deep when the reply is sent (or when
// the next plugin runs) makes the runtime copy it into a larger one for every
// query. Nearly every name of a cluster is not ours: ServeDNS tells those
// from a small frame and hands them on from it, with no larger frame of ours
// below the rest of the chain.
func (se *ServiceEntry) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	st := se.store.Load()
	if st == nil {
		// Let go at a reload, yet still asked: CoreDNS left a server of the
		// replaced instance reading its socket (see successor). The live
		// block answers, with its store and the rest of its chain.
		if live := running.successor(se.block); live != nil {
			se, st = live, live.store.Load()
		}
	}
	qname, zone, on := se.passes(r, st)
	if on {
		return plugin.NextOrFailure(se.Name(), se.Next, ctx, w, r)
	}
	return se.serve(ctx, w, r, st, qname, zone)
}

// passes reports whether r goes to the next plugin without a look at the
// client: its class or zone is not ours, or fallthrough covers it and no view
// may serve it or one of its search forms, or, before the first full read,
// fallthrough covers it. st is se's store, nil before OnStartup and once let
// go. Otherwise it returns, for serve, the question's name, lower case, and
// its zone (matching a zone other than "." allocates: it is done once).
func (se *ServiceEntry) passes(r *dns.Msg, st *store) (qname, zone string, on bool) {
	// ServiceEntries are class IN data: CHAOS (version.bind) and the other
	// classes belong to other plugins, whatever the name.
	if len(r.Question) == 0 || r.Question[0].Qclass != dns.ClassINET {
		return "", "", true
	}
	qname = lowerName(r.Question[0].Name)
	// With zone ".", the root itself is not ours: no ServiceEntry declares it
	// and a made-up root SOA or NS would be cached as the real root's.
	if qname == "." {
		return "", "", true
	}
	if zone = plugin.Zones(se.Zones).Matches(qname); zone == "" {
		return "", "", true
	}
	if !se.Fall.Through(qname) {
		return qname, zone, false
	}
	var t *table.Table
	if st != nil {
		t = st.table()
	}
	// Not synced. Cluster DNS must not go down with us: a name that
	// fallthrough covers goes on exactly as an unknown name would (a
	// ServiceEntry host may get the next plugin's answer until then).
	if t == nil || !se.mayServe(t, qname) {
		return "", "", true
	}
	return qname, zone, false
}

// serve answers r, whose lower-case name is qname in zone, or hands it on. It
// builds and writes the reply, or hands the query on, from its own frame:
// resolve, whose frame is large, has returned by then, so that the records'
// allocations and the write do not grow the goroutine's stack.
func (se *ServiceEntry) serve(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, st *store, qname, zone string) (int, error) {
	var out outcome
	se.resolve(w, r, st, qname, zone, &out)
	switch {
	case out.next:
		se.counted(ctx).byResult[resultPassedOn].Inc()
		return plugin.NextOrFailure(se.Name(), se.Next, ctx, w, r)
	case out.afterKubernetes:
		return se.afterKubernetes(ctx, w, r, &out)
	case out.build == buildNothing:
		return dns.RcodeServerFailure, plugin.Error(se.Name(), errNotSynced)
	}
	m, chase := se.build(r, &out)
	if chase != "" {
		se.chase(ctx, w, r, m, chase)
	}
	if c := se.counted(ctx); out.build == buildAnswer {
		c.answer(out.class, resultOf(m))
	} else {
		c.byResult[resultOf(m)].Inc()
	}
	w.WriteMsg(m)
	return m.Rcode, nil
}

// outcome is what resolve decided for a query: a reply for serve to build
// (for a served name, the records of x for a client of class), the next
// plugin, the next plugin first (a served name in the cluster domain, or a
// search-path expansion: see afterKubernetes), or, when none is set, SERVFAIL
// before the first full read.
type outcome struct {
	build           replyKind
	rcode           int      // of a negative reply
	hosts           []string // of a PTR reply
	class           reach.Class
	next            bool
	afterKubernetes bool
	tbl             table.View
	x               reply // x.zone and x.name are the apex's, a negative's and a PTR's too
}

// replyKind is the reply an outcome stands for.
type replyKind uint8

const (
	buildNothing replyKind = iota
	buildApex
	buildPTR
	buildNegative
	buildAnswer
)

// build makes the reply out stands for, and returns the target of its last
// CNAME when the rest of the chain gives that target's records.
func (se *ServiceEntry) build(r *dns.Msg, out *outcome) (*dns.Msg, string) {
	switch out.build {
	case buildApex:
		return se.apex(r, out.tbl, out.x.zone, r.Question[0].Qtype), ""
	case buildPTR:
		return se.ptr(r, out.tbl, out.x.zone, out.x.name, out.hosts), ""
	case buildNegative:
		return se.negative(r, out.tbl, out.x.zone, out.x.name, out.rcode), ""
	}
	return se.answer(r, out.tbl, &out.x)
}

// resolve decides how to answer r, whose lower-case name is qname in zone,
// once passes has not handed it on, and writes it to out. out is serve's and
// filled in place: resolve's frame is on the stack of every query, and an
// outcome returned would be copied in it (see ServeDNS).
func (se *ServiceEntry) resolve(w dns.ResponseWriter, r *dns.Msg, st *store, qname, zone string, out *outcome) {
	var t *table.Table
	if st != nil {
		t = st.table()
	}
	if t == nil {
		// Not synced. Cluster DNS must not go down with us: a name that
		// fallthrough covers goes on exactly as an unknown name would (a
		// ServiceEntry host may get the next plugin's answer until then).
		// Where we are the only authority, we cannot say anything true.
		out.next = se.Fall.Through(qname)
		return
	}

	// Where fallthrough covers a name it may exist elsewhere: only the names
	// we serve are ours, the apex and empty non-terminals are not.
	authoritative := !se.Fall.Through(qname)
	tbl, who := se.viewOf(st, t, w)
	out.tbl = tbl
	x := &out.x
	x.name, x.zone = qname, zone
	qtype := r.Question[0].Qtype
	if qname == zone && authoritative && (qtype == dns.TypeSOA || qtype == dns.TypeNS) {
		out.build = buildApex
		return
	}

	name := trimDot(qname)
	if addr, ok := reverseAddr(name); ok {
		if out.hosts = se.ptrHosts(tbl, &who, addr); len(out.hosts) > 0 {
			out.build = buildPTR
			return
		}
	}
	// An exact host beats an expansion, which beats a wildcard (as in
	// Istio): a wildcard inside the cluster domain must not swallow the
	// search path of every other host.
	var found, ok bool
	x.Hit, found = tbl.Find(name, false)
	if !found && se.SearchDomains != nil && se.expansion(tbl, qname, r.Question[0].Name, x) {
		out.class, ok = x.reaches(&who)
		out.afterKubernetes, out.next = ok, !ok
		return
	}
	if !found {
		x.Hit, found = tbl.Find(name, true)
	}
	if !found {
		if !authoritative {
			out.next = true
			return
		}
		// The apex and a name with served names below it exist: NODATA,
		// never NXDOMAIN, which would deny everything below (RFC 8020).
		out.build, out.rcode = buildNegative, dns.RcodeNameError
		if qname == zone || tbl.HasBelow(name) {
			out.rcode = dns.RcodeSuccess
		}
		return
	}
	x.owner = r.Question[0].Name
	if out.class, ok = x.reaches(&who); !ok {
		out.next = true
		return
	}
	if se.inClusterDomain(qname) {
		out.afterKubernetes = true
		return
	}
	out.build = buildAnswer
}

// reaches replaces x's answer by the one for the client, and reports the
// client's class and whether there is one: when nothing the plugin has
// reaches the client, the name goes on to the next plugin, as if the plugin
// were not there.
func (x *reply) reaches(who *asker) (reach.Class, bool) {
	class, sidecar := who.class()
	x.found = x.Answer
	x.Answer = x.Answer.For(class, sidecar)
	return class, x.Answer != nil
}

// reply is what a served name is answered with: the records of h for owner,
// preceded, for a search-path expansion, by a CNAME from the name asked.
type reply struct {
	table.Hit
	owner string // the name the records are for, fully qualified, as asked
	name  string // owner in lower case
	zone  string // the zone of owner
	alias string // the name asked when it is an expansion of owner, else ""
	// found is the answer the name was found with, before For picked the
	// client's: it holds the host's SRV ports, the same for every client.
	found *table.Answer
}

// answer is the reply with the records of x for the question, or NODATA, and
// the target of its last CNAME when the target's records are the rest of the
// chain's to give.
func (se *ServiceEntry) answer(r *dns.Msg, tbl table.View, x *reply) (m *dns.Msg, chase string) {
	qtype := r.Question[0].Qtype
	var rrs, extra []dns.RR
	switch {
	case qtype == dns.TypeSRV:
		rrs, extra = se.srvRecords(x)
	case x.Service:
		// A service name holds SRV records only.
	case x.Answer.Target != "":
		// An alias answers every type: the target's records follow.
		rrs = []dns.RR{&dns.CNAME{Hdr: dns.RR_Header{Name: x.owner, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: se.TTL},
			Target: dns.Fqdn(x.Answer.Target)}}
		if qtype != dns.TypeCNAME {
			chase = dns.Fqdn(x.Answer.Target)
		}
	case qtype == dns.TypeA:
		rrs = addressRecords(x.owner, dns.TypeA, se.TTL, x.Answer.A())
	case qtype == dns.TypeAAAA:
		rrs = addressRecords(x.owner, dns.TypeAAAA, se.TTL, x.Answer.AAAA())
	}
	if x.alias == "" && len(rrs) == 0 {
		return se.negative(r, tbl, x.zone, x.name, dns.RcodeSuccess), ""
	}

	m = new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.Answer = rrs
	m.Extra = extra
	if x.alias != "" {
		cname := &dns.CNAME{Hdr: dns.RR_Header{Name: x.alias, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: se.TTL}, Target: x.owner}
		m.Answer = append([]dns.RR{cname}, rrs...)
		// The CNAME alone says nothing of the target's records: the
		// target's NODATA needs its SOA, unless the CNAME was asked.
		if len(rrs) == 0 && qtype != dns.TypeCNAME {
			m.Ns = []dns.RR{soa(negativeOwner(tbl, x.zone, x.name), se.TTL)}
		}
	}
	return m, chase
}

// inClusterDomain reports whether qname (lower case) is in a cluster domain.
func (se *ServiceEntry) inClusterDomain(qname string) bool {
	domains := se.ClusterDomains
	if domains == nil {
		domains = defaultClusterDomains
	}
	return zoneOf(qname, domains) != ""
}

// afterKubernetes answers a ServiceEntry host inside the cluster domain, or a
// search-path expansion, only if the rest of the chain (the kubernetes plugin)
// says the name does not exist: a namespace that can write ServiceEntries
// must not take over a real Service's name, nor a pod's under a headless
// Service. Any other reply of the chain is written as it is. out is what
// resolve decided: the records of out.x for a client of out.class.
func (se *ServiceEntry) afterKubernetes(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, out *outcome) (int, error) {
	nw := nonwriter.New(w)
	rcode, err := plugin.NextOrFailure(se.Name(), se.Next, ctx, nw, r)
	if nw.Msg == nil {
		// The chain left the reply to the server (SERVFAIL, REFUSED...).
		if rcode == dns.RcodeServerFailure && err == nil {
			err = plugin.Error(se.Name(), errChainFailed)
		}
		return rcode, err
	}
	if nw.Msg.Rcode == dns.RcodeNameError {
		m, chase := se.answer(r, out.tbl, &out.x)
		if chase != "" {
			se.chase(ctx, w, r, m, chase)
		}
		res := resultOf(m)
		if out.x.alias != "" {
			res = resultSearchpath
		}
		se.counted(ctx).answer(out.class, res)
		w.WriteMsg(m)
		return m.Rcode, nil
	}
	se.counted(ctx).byResult[resultPassedOn].Inc()
	if nw.Msg.Rcode == dns.RcodeServerFailure && err == nil {
		err = plugin.Error(se.Name(), errChainFailed)
	}
	w.WriteMsg(nw.Msg)
	return rcode, err
}

// apex is the reply to SOA or NS at a zone's apex. The NS name is ns.dns.<zone>, as
// the kubernetes plugin's; its addresses go along as glue only when the table
// answers for that name, since we know no other address of ours.
func (se *ServiceEntry) apex(r *dns.Msg, tbl table.View, zone string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if qtype == dns.TypeSOA {
		m.Answer = []dns.RR{soa(zone, se.TTL)}
	} else {
		ns := dnsutil.Join("ns.dns", zone)
		m.Answer = []dns.RR{&dns.NS{Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: se.TTL}, Ns: ns}}
		if glue := tbl.Lookup(trimDot(ns)); glue != nil {
			m.Extra = append(addressRecords(ns, dns.TypeA, se.TTL, glue.A()), addressRecords(ns, dns.TypeAAAA, se.TTL, glue.AAAA())...)
		}
	}
	return m
}

// negative is NXDOMAIN or NODATA (rcode success, no answer) with an SOA in the
// authority section, so that resolvers cache it for the plugin's TTL (RFC
// 2308).
func (se *ServiceEntry) negative(r *dns.Msg, tbl table.View, zone, qname string, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(r, rcode)
	m.Authoritative = true
	m.Ns = []dns.RR{soa(negativeOwner(tbl, zone, qname), se.TTL)}
	return m
}

// negativeOwner is the name whose SOA a negative answer for qname carries: the
// zone's. With zone "." that would be a made-up root SOA, which a resolver
// could cache as the root's: the SOA is then that of the closest ancestor the
// table serves (a served name or an empty non-terminal), else of the name's
// parent, else, for a top-level name, of the name itself, so that what is
// cached stays scoped to the name asked.
func negativeOwner(tbl table.View, zone, qname string) string {
	if zone != "." {
		return zone
	}
	name := trimDot(qname)
	if anc := tbl.ClosestServed(name); anc != "" {
		return qname[len(qname)-len(anc)-1:]
	}
	if off, end := dns.NextLabel(qname, 0); !end {
		return qname[off:]
	}
	return qname
}

// soa synthesizes the SOA of zone as CoreDNS's kubernetes plugin does; its
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
// case), from the packed addresses of qtype's family (table.IPv4s or
// table.IPv6s). The records are fresh for every reply because plugins in
// front of us (rewrite, loadbalance, cache) may change what they are handed;
// the IPs share the table's bytes and are never written.
func addressRecords(owner string, qtype uint16, ttl uint32, packed []byte) []dns.RR {
	size := net.IPv6len
	if qtype == dns.TypeA {
		size = net.IPv4len
	}
	n := len(packed) / size
	if n == 0 {
		return nil
	}
	ip := func(i int) net.IP { return net.IP(packed[i*size : (i+1)*size : (i+1)*size]) }
	hdr := dns.RR_Header{Name: owner, Rrtype: qtype, Class: dns.ClassINET, Ttl: ttl}
	if n == 1 {
		if qtype == dns.TypeA {
			return oneRecord(dns.A{Hdr: hdr, A: ip(0)})
		}
		return oneRecord(dns.AAAA{Hdr: hdr, AAAA: ip(0)})
	}
	rrs := make([]dns.RR, n)
	if qtype == dns.TypeA {
		recs := make([]dns.A, n)
		for i := range recs {
			recs[i] = dns.A{Hdr: hdr, A: ip(i)}
			rrs[i] = &recs[i]
		}
		return rrs
	}
	recs := make([]dns.AAAA, n)
	for i := range recs {
		recs[i] = dns.AAAA{Hdr: hdr, AAAA: ip(i)}
		rrs[i] = &recs[i]
	}
	return rrs
}

// oneRecord returns rec as an answer section. Most hosts have one address
// of a family: the record and the slice holding it are one allocation.
func oneRecord[T any, P interface {
	*T
	dns.RR
}](rec T) []dns.RR {
	one := &struct {
		rrs [1]dns.RR
		rec T
	}{rec: rec}
	one.rrs[0] = P(&one.rec)
	return one.rrs[:]
}

// lowerName is the question's name as request.Request.Name gives it: in
// presentation form (escaped) and lower case. A name of lower-case letters,
// digits, '-', '_' and dots, as nearly all are, is already both: it is
// returned as it is, where request.Request copies it through a
// strings.Builder first.
func lowerName(name string) string {
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return strings.ToLower(dns.Name(name).String())
		}
	}
	return name
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
