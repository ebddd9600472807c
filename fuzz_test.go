package serviceentry

import (
	"context"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
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
		Next:  test.NextHandler(dns.RcodeSuccess, nil)}).attach(storeFrom(f, entry.Options{}, handlerEntries))
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
