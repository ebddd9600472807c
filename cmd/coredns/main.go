// Command coredns is CoreDNS with every in-tree plugin plus serviceentry,
// which sits in the plugin chain right before cache (see withServiceEntry).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/core/plugin" // every in-tree plugin
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns-serviceentry/serviceentry"
)

func init() {
	dnsserver.Directives = withServiceEntry(dnsserver.Directives)
}

func main() {
	coremain.Run()
}
