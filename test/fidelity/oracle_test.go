package fidelity

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/dns"
	kubeyaml "k8s.io/apimachinery/pkg/util/yaml"

	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/networking/core"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/config/schema/resource"
	dnsclient "istio.io/istio/pkg/dns/client"
	dnsProto "istio.io/istio/pkg/dns/proto"
	istiolog "istio.io/istio/pkg/log"
	pkgmodel "istio.io/istio/pkg/model"
	istiotest "istio.io/istio/pkg/test"
)

// clientNamespace is the namespace of the pod whose sidecar answers: no entry
// lives there and no exportTo names it, so it sees exactly the public entries,
// which is what the plugin serves by default (exportto public).
const clientNamespace = "client"

// searchDomains are a pod's in clientNamespace (kubelet writes them).
var searchDomains = []string{clientNamespace + ".svc.cluster.local", "svc.cluster.local", "cluster.local"}

// toConfig converts one manifest with Istio's own CRD conversion (what its
// Kubernetes config store does) and validates it with Istio's own validation
// (what its webhook does).
func toConfig(doc string) (*config.Config, error) {
	var obj crd.IstioKind
	if err := kubeyaml.NewYAMLOrJSONDecoder(strings.NewReader(doc), 4096).Decode(&obj); err != nil {
		return nil, err
	}
	gvk := obj.GroupVersionKind()
	s, ok := collections.PilotGatewayAPI().FindByGroupVersionAliasesKind(resource.FromKubernetesGVK(&gvk))
	if !ok {
		return nil, fmt.Errorf("istio knows no schema for %v", gvk)
	}
	cfg, err := crd.ConvertObject(s, &obj, "")
	if err != nil {
		return nil, err
	}
	if _, err := s.ValidateConfig(*cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// oracle is Istio's own DNS path for one sidecar: the ServiceEntry registry
// and push context of pilot's config-gen test harness, the name table istiod
// builds for the proxy, and the agent's LocalDNSServer answering over TCP.
type oracle struct {
	addr      string
	forwarded sync.Map // names the LocalDNSServer sent upstream
}

// newOracle builds Istio's answerer for the configs. autoAllocate gives the
// proxy DNS capture and auto-allocation metadata (a pod with
// ISTIO_META_DNS_CAPTURE and ISTIO_META_DNS_AUTO_ALLOCATE); without it the
// proxy gets declared addresses only, as "autoallocate off" serves. The pod is
// IPv4 only, or, with dualStack, dual-stack in a mesh with ISTIO_DUAL_STACK on.
func newOracle(t *testing.T, configs []config.Config, autoAllocate, dualStack bool) *oracle {
	t.Helper()
	ips := []string{"10.200.0.10"}
	if dualStack {
		istiotest.SetForTest(t, &features.EnableDualStack, true)
		ips = append(ips, "fd00:200::10")
	}
	cg := core.NewConfigGenTest(t, core.TestOptions{Configs: configs})
	proxy := cg.SetupProxy(&model.Proxy{
		ConfigNamespace: clientNamespace,
		IPAddresses:     ips,
		Metadata: &model.NodeMetadata{
			DNSCapture:      pkgmodel.StringBool(autoAllocate),
			DNSAutoAllocate: pkgmodel.StringBool(autoAllocate),
		},
	})
	table := cg.ConfigGen.BuildNameTable(proxy, cg.PushContext())

	o := &oracle{}
	upstream := o.startUpstream(t)
	var srv *dnsclient.LocalDNSServer
	var err error
	for range 5 { // the port is free when drawn; another process may take it first
		o.addr = net.JoinHostPort("127.0.0.1", fmt.Sprint(freePort(t)))
		srv, err = dnsclient.NewLocalDNSServer(clientNamespace, clientNamespace+".svc.cluster.local", o.addr,
			dnsclient.WithUpstreamTimeout(2*time.Second))
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("NewLocalDNSServer: %v", err)
	}
	// The agent reads its search domains and upstream servers from
	// /etc/resolv.conf, a fixed path; they are unexported fields. Set them
	// to a pod's search path and to our upstream, which records what is
	// forwarded, before the table is built from them.
	setField(t, srv, "searchNamespaces", slices.Clone(searchDomains))
	setField(t, srv, "resolvConfServers", []string{upstream})
	srv.UpdateLookupTable(table)
	srv.StartDNS()
	t.Cleanup(srv.Close)
	checkSearchDomains(t, srv)
	o.waitUp(t)
	return o
}

// setField sets an unexported field of the LocalDNSServer. It fails loudly,
// naming the field, when a new Istio renames it or changes its type.
func setField(t *testing.T, srv *dnsclient.LocalDNSServer, name string, value any) {
	t.Helper()
	f := reflect.ValueOf(srv).Elem().FieldByName(name)
	if !f.IsValid() || f.Type() != reflect.TypeOf(value) {
		t.Fatalf("istio's LocalDNSServer has no field %s of type %T at this version: update setField's callers", name, value)
	}
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Set(reflect.ValueOf(value))
}

// checkSearchDomains reads the search domains back through an exported
// method, so that a change in how Istio uses the field is seen.
func checkSearchDomains(t *testing.T, srv *dnsclient.LocalDNSServer) {
	t.Helper()
	var got []string
	srv.BuildAlternateHosts(oneHostTable(), func(_ map[string]struct{}, _, _ []netip.Addr, search []string) { got = search })
	if !slices.Equal(got, searchDomains) {
		t.Fatalf("LocalDNSServer search domains %v, want %v", got, searchDomains)
	}
}

func oneHostTable() *dnsProto.NameTable {
	return &dnsProto.NameTable{Table: map[string]*dnsProto.NameTable_NameInfo{"probe.example.": {Ips: []string{"192.0.2.1"}}}}
}

// startUpstream runs the upstream the LocalDNSServer forwards to: it answers
// REFUSED and records the name, so that "Istio forwards" is known exactly,
// whatever this machine's resolver says.
func (o *oracle) startUpstream(t *testing.T) string {
	t.Helper()
	var pc net.PacketConn
	var l net.Listener
	var err error
	for range 50 { // a port free for both UDP and TCP
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		if l, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if len(r.Question) > 0 {
			o.forwarded.Store(strings.ToLower(r.Question[0].Name), true)
		}
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeRefused)
		w.WriteMsg(m)
	})
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: l, Handler: h}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
	return pc.LocalAddr().String()
}

// waitUp waits for the LocalDNSServer's listeners and checks that an unknown
// name reaches our upstream.
func (o *oracle) waitUp(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := exchange(o.addr, "probe.fidelity.invalid.", dns.TypeA)
		if err == nil {
			if _, ok := o.forwarded.Load("probe.fidelity.invalid."); !ok || r.Rcode != dns.RcodeRefused {
				t.Fatalf("an unknown name did not reach the test's upstream: %v", r)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("LocalDNSServer on %s not answering: %v", o.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ask returns Istio's reply and whether it was forwarded upstream.
func (o *oracle) ask(q question) (*dns.Msg, bool, error) {
	o.forwarded.Delete(strings.ToLower(q.name))
	r, err := exchange(o.addr, q.name, q.qtype)
	if err != nil {
		return nil, false, err
	}
	_, fwd := o.forwarded.Load(strings.ToLower(q.name))
	return r, fwd && r.Rcode == dns.RcodeRefused, nil
}

func exchange(addr, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

func freePort(t *testing.T) int {
	t.Helper()
	// A port free for both UDP and TCP.
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// TestMain quiets Istio's logs: its controllers log every service at info.
func TestMain(m *testing.M) {
	for _, s := range istiolog.Scopes() {
		s.SetOutputLevel(istiolog.ErrorLevel)
	}
	os.Exit(m.Run())
}
