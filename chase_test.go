package serviceentry

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coredns/caddy"
	_ "github.com/coredns/coredns/plugin/hosts"
	"github.com/miekg/dns"
)

// TestChaseThroughServer: a client outside the mesh asking for a host whose
// Envoy endpoint is a host name gets the CNAME and the target's records, as
// the whole server answers them (here the hosts plugin, after ours); two
// entries aliasing each other end after maxChase aliases instead of looping.
func TestChaseThroughServer(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "se.yaml"), `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: alias, namespace: ns}
spec: {hosts: [alias.internal], resolution: DNS, endpoints: [{address: real.example.com}]}
status: {addresses: [{host: alias.internal, value: 240.240.0.5}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ping, namespace: ns}
spec: {hosts: [ping.internal], resolution: DNS, endpoints: [{address: pong.internal}]}
status: {addresses: [{host: ping.internal, value: 240.240.0.6}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pong, namespace: ns}
spec: {hosts: [pong.internal], resolution: DNS, endpoints: [{address: ping.internal}]}
status: {addresses: [{host: pong.internal, value: 240.240.0.7}]}
`)
	port := freeUDPPort(t)
	input := caddy.CaddyfileInput{ServerTypeName: "dns", Filepath: "Corefile", Contents: []byte(fmt.Sprintf(
		".:%d {\n bind 127.0.0.1\n serviceentry {\n manifests %s\n clients outside\n fallthrough\n }\n hosts {\n 198.51.100.7 real.example.com\n fallthrough\n }\n}\n",
		port, filepath.Join(dir, "se.yaml")))}
	inst := startCaddy(t, input)
	defer stopCaddy(t, inst)

	ask := func(name string) *dns.Msg {
		r, err := dns.Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := ask("alias.internal.")
	var got []string
	for _, rr := range r.Answer {
		got = append(got, strings.TrimPrefix(rr.String(), rr.Header().String()))
	}
	if want := "real.example.com. 198.51.100.7"; strings.Join(got, " ") != want || r.Rcode != dns.RcodeSuccess {
		t.Errorf("alias.internal: %s %v, want NOERROR %s", dns.RcodeToString[r.Rcode], got, want)
	}
	r = ask("ping.internal.")
	if n := len(r.Answer); n != maxChase+1 {
		t.Errorf("ping.internal: %d records, want the first CNAME and %d chased", n, maxChase)
	}
	for _, rr := range r.Answer {
		if _, ok := rr.(*dns.CNAME); !ok {
			t.Errorf("ping.internal: %v, want CNAMEs only", rr)
		}
	}
}
