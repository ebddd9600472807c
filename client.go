package serviceentry

import (
	"net"
	"net/netip"

	"github.com/coredns-serviceentry/serviceentry/internal/podindex"
	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/miekg/dns"
)

// clientMode says how the handler tells what a client can route ("clients").
type clientMode uint8

const (
	// clientsMesh answers every client as a proxy that captures DNS would
	// be answered: where every query comes from such proxies or a forwarder
	// for them (the .global layout), or where no pods can be read.
	clientsMesh clientMode = iota
	// clientsByPod classes each client by the pod holding its address, from
	// the marks Istio writes on it (package reach); an address of no pod is
	// a client outside the mesh.
	clientsByPod
	// clientsOutside answers every client as one outside the mesh.
	clientsOutside
)

// asker is the client of one query: its address is looked up in the pod
// index at most once, and only when an answer depends on it.
type asker struct {
	w      dns.ResponseWriter
	pods   *podindex.Index // nil when pods are not read
	mode   clientMode
	looked bool
	pod    podindex.Client
}

// client returns the pod holding the client's address: the zero Client when
// none does, or when pods are not read.
func (a *asker) client() podindex.Client {
	if !a.looked {
		a.looked = true
		if a.pods != nil {
			a.pod = a.pods.Lookup(remoteIP(a.w))
		}
	}
	return a.pod
}

// class is what the client routes, and whether it has a sidecar, whose Envoy
// asks for the names it resolves itself.
func (a *asker) class() (reach.Class, bool) {
	switch a.mode {
	case clientsMesh:
		return reach.Mesh, false
	case clientsOutside:
		return reach.Outside, false
	}
	m := a.client().Marks
	// Pods' classes never depend on the mesh config: istiod's injector
	// writes what decides DNS capture into the pod (docs/reach.md).
	return m.Class(), m.Sidecar()
}

// remoteIP is the address a query comes from.
func remoteIP(w dns.ResponseWriter) netip.Addr {
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr()
	case *net.TCPAddr:
		return a.AddrPort().Addr()
	}
	return netip.Addr{}
}
