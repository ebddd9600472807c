package serviceentry

import (
	"context"
	"testing"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// FuzzServeDNS sends arbitrary wire-format messages through the handler with
// a realistic table: no panic, and every reply packs as a DNS message.
func FuzzServeDNS(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"address.internal.", dns.TypeA}, {"x.y.wild.internal.", dns.TypeAAAA},
		{"unknown.internal.", dns.TypeMX}, {"example.org.", dns.TypeA}, {"internal.", dns.TypeSOA},
	} {
		m := new(dns.Msg).SetQuestion(q.name, q.qtype)
		m.SetEdns0(1232, true)
		wire, _ := m.Pack()
		f.Add(wire)
	}
	two := new(dns.Msg).SetQuestion("address.internal.", dns.TypeA)
	two.Question = append(two.Question, dns.Question{Name: "v6only.internal.", Qtype: dns.TypeAAAA, Qclass: dns.ClassCHAOS})
	wire, _ := two.Pack()
	f.Add(wire)
	f.Add([]byte{})

	se := (&ServiceEntry{
		Zones: []string{"internal."},
		TTL:   30,
		Next:  test.NextHandler(dns.RcodeSuccess, nil)}).attach(storeFrom(f, convertOptions{}, handlerEntries))
	f.Fuzz(func(t *testing.T, wire []byte) {
		m := new(dns.Msg)
		if err := m.Unpack(wire); err != nil || len(m.Question) == 0 {
			return // the server drops these before any plugin runs
		}
		rec := dnstest.NewRecorder(&test.ResponseWriter{})
		if _, err := se.ServeDNS(context.Background(), request.NewScrubWriter(m, rec), m); err != nil {
			t.Fatalf("ServeDNS: %v", err)
		}
		if rec.Msg != nil {
			if _, err := rec.Msg.Pack(); err != nil {
				t.Fatalf("reply does not pack: %v", err)
			}
		}
	})
}

// FuzzParseManifests feeds arbitrary bytes to the manifest parser, between two
// valid ServiceEntries: no panic; every entry returned holds only valid,
// lower-case names; the valid entry before the input is always returned, and
// the one after it whenever the stream parses to its end.
func FuzzParseManifests(f *testing.F) {
	f.Add([]byte(handlerEntries))
	f.Add([]byte(`{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"j"},"spec":{"hosts":["J.internal"],"addresses":["192.0.2.1"]}}`))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec: {hosts: ['*'], addresses: ['fe80::1%eth0']}\n"))
	f.Add([]byte("---\n---\n"))
	const before = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: fuzz-before, namespace: fuzz}\nspec: {hosts: [before.fuzz], addresses: [192.0.2.1]}\n---\n"
	const after = "\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: fuzz-after, namespace: fuzz}\nspec: {hosts: [after.fuzz], addresses: [192.0.2.2]}\n"
	f.Fuzz(func(t *testing.T, data []byte) {
		input := append(append([]byte(before), data...), after...)
		for _, mode := range []autoAllocateMode{autoAllocateStatus, autoAllocateLegacy} {
			entries, err := parseManifests("test.yaml", input, convertOptions{autoAllocate: mode}, new(skipTally))
			keys := make(map[string]bool)
			for _, e := range entries {
				keys[e.key] = true
			}
			if !keys["fuzz/fuzz-before"] {
				t.Fatalf("the valid entry before the input was lost (err %v)", err)
			}
			if err == nil && !keys["fuzz/fuzz-after"] {
				t.Fatal("the stream parsed to its end but lost the valid entry after the input")
			}
			for _, e := range entries {
				for _, h := range e.hosts {
					if _, reason := normalizeHost(h.name); reason != "" {
						t.Fatalf("entry %s holds invalid host %q", e.key, h.name)
					}
				}
			}
		}
	})
}
