package serviceentry

import (
	"fmt"
	"strings"
	"testing"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/source/manifest"
	"github.com/coredns-serviceentry/serviceentry/internal/table"
)

// badEntry is one ServiceEntry of the catalogue, in namespace "bad".
func badEntry(name, spec string) string {
	return fmt.Sprintf("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: %s, namespace: bad}\nspec:\n%s", name, spec)
}

// TestBadInputCatalogue: each row adds one odd or bad ServiceEntry to the
// entries of the handler tests and says what the plugin does with it: which
// names it serves (and with how many addresses), and which items it skips with
// which metric reason. Every row also checks that every name of the other
// entries answers exactly as before.
func TestBadInputCatalogue(t *testing.T) {
	label64 := strings.Repeat("a", 64)
	name254 := strings.Repeat(strings.Repeat("a", 63)+".", 3) + strings.Repeat("b", 62)
	var many, manyAddrs []string
	for i := range 256 {
		many = append(many, fmt.Sprintf("h%d.bad.internal", i))
		manyAddrs = append(manyAddrs, fmt.Sprintf("10.1.%d.%d", i/250, i%250+1))
	}
	var cidrs []string
	for bits := 0; bits <= 32; bits++ {
		cidrs = append(cidrs, fmt.Sprintf("%q", fmt.Sprintf("10.9.0.0/%d", bits)))
	}
	for bits := 0; bits <= 128; bits++ {
		cidrs = append(cidrs, fmt.Sprintf("%q", fmt.Sprintf("2001:db8:9::/%d", bits)))
	}
	for _, c := range []struct {
		name  string
		docs  string
		serve map[string]int    // name -> number of A+AAAA records served
		skips map[string]uint64 // metric reason -> increase
		opts  entry.Options
	}{
		{name: "empty hosts", docs: badEntry("e", "  hosts: []\n  addresses: [192.0.2.50]\n")},
		{name: "star alone", docs: badEntry("e", "  hosts: ['*', ok.bad.internal]\n  addresses: [192.0.2.50]\n"),
			serve: map[string]int{"ok.bad.internal": 1}, skips: map[string]uint64{entry.ReasonInvalidHost: 1}},
		{name: "partial wildcard", docs: badEntry("e", "  hosts: ['*x.bad.internal', '*-x.bad.internal']\n  addresses: [192.0.2.50]\n"),
			skips: map[string]uint64{entry.ReasonPartialWildcard: 2}},
		{name: "254-char name", docs: badEntry("e", "  hosts: ["+name254+"]\n  addresses: [192.0.2.50]\n"),
			skips: map[string]uint64{entry.ReasonInvalidHost: 1}},
		{name: "64-char label", docs: badEntry("e", "  hosts: ["+label64+".bad.internal]\n  addresses: [192.0.2.50]\n"),
			skips: map[string]uint64{entry.ReasonInvalidHost: 1}},
		{name: "non-ASCII host", docs: badEntry("e", "  hosts: [bücher.bad.internal]\n  addresses: [192.0.2.50]\n"),
			skips: map[string]uint64{entry.ReasonInvalidHost: 1}},
		{name: "punycode host", docs: badEntry("e", "  hosts: [xn--bcher-kva.bad.internal]\n  addresses: [192.0.2.50]\n"),
			serve: map[string]int{"xn--bcher-kva.bad.internal": 1}},
		{name: "upper case", docs: badEntry("e", "  hosts: [UP.Bad.Internal]\n  addresses: [192.0.2.50]\n"),
			serve: map[string]int{"up.bad.internal": 1}},
		{name: "trailing dot", docs: badEntry("e", "  hosts: [dot.bad.internal.]\n  addresses: [192.0.2.50]\n"),
			serve: map[string]int{"dot.bad.internal": 1}},
		{name: "duplicate hosts", docs: badEntry("e", "  hosts: [dup.bad.internal, DUP.bad.internal, dup.bad.internal.]\n  addresses: [192.0.2.50]\n"),
			serve: map[string]int{"dup.bad.internal": 1}},
		{name: "256 hosts", docs: badEntry("e", "  hosts: ["+strings.Join(many, ", ")+"]\n  addresses: [192.0.2.50]\n"),
			serve: map[string]int{"h0.bad.internal": 1, "h255.bad.internal": 1}},
		{name: "256 addresses", docs: badEntry("e", "  hosts: [wide.bad.internal]\n  addresses: ["+strings.Join(manyAddrs, ", ")+"]\n"),
			serve: map[string]int{"wide.bad.internal": 256}},
		{name: "IPv4-mapped IPv6", docs: badEntry("e", "  hosts: [mapped.bad.internal]\n  addresses: ['::ffff:192.0.2.9']\n"),
			serve: map[string]int{"mapped.bad.internal": 1}},
		{name: "zoned IPv6", docs: badEntry("e", "  hosts: [zoned.bad.internal]\n  addresses: ['fe80::1%eth0', 192.0.2.50]\n"),
			serve: map[string]int{"zoned.bad.internal": 1}, skips: map[string]uint64{entry.ReasonInvalidAddress: 1}},
		{name: "CIDRs of every size", docs: badEntry("e", "  hosts: [cidr.bad.internal]\n  addresses: ["+strings.Join(cidrs, ", ")+"]\n"),
			serve: map[string]int{"cidr.bad.internal": 2}, skips: map[string]uint64{entry.ReasonWideCIDR: 33 + 129 - 2}},
		{name: "addresses with spaces", docs: badEntry("e", "  hosts: [space.bad.internal]\n  addresses: [' 192.0.2.50', '192.0.2.51 ', '192.0.2.52']\n"),
			serve: map[string]int{"space.bad.internal": 1}, skips: map[string]uint64{entry.ReasonInvalidAddress: 2}},
		{name: "unknown resolution name", docs: badEntry("e", "  hosts: [res.bad.internal]\n  addresses: [192.0.2.50]\n  resolution: BOGUS\n"),
			skips: map[string]uint64{manifest.ReasonInvalidManifest: 1}},
		{name: "unknown resolution number", docs: badEntry("e", "  hosts: [resnum.bad.internal]\n  addresses: [192.0.2.50]\n  resolution: 99\n"),
			serve: map[string]int{"resnum.bad.internal": 1}},
		{name: "missing name", docs: "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {namespace: bad}\nspec: {hosts: [noname.bad.internal], addresses: [192.0.2.50]}\n",
			skips: map[string]uint64{manifest.ReasonInvalidManifest: 1}},
		{name: "missing namespace", docs: "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: nons}\nspec: {hosts: [nons.bad.internal], addresses: [192.0.2.50]}\n",
			serve: map[string]int{"nons.bad.internal": 1}},
		{name: "missing creationTimestamp, legacy", opts: entry.Options{AutoAllocate: entry.AutoAllocateLegacy, DualStack: true},
			docs:  badEntry("e", "  hosts: [notime.bad.internal]\n  resolution: DNS\n"),
			serve: map[string]int{"notime.bad.internal": 2}},
		{name: "status for a host not in the spec", docs: badEntry("e", "  hosts: [st.bad.internal]\n  resolution: DNS\nstatus:\n  addresses: [{host: other.bad.internal, value: 240.240.0.9}, {host: st.bad.internal, value: 240.240.0.8}]\n"),
			serve: map[string]int{"st.bad.internal": 1}, skips: map[string]uint64{entry.ReasonStatusUnknownHost: 1}},
		{name: "status values that are not IPs", docs: badEntry("e", "  hosts: [stbad.bad.internal]\n  resolution: DNS\nstatus:\n  addresses: [{host: stbad.bad.internal, value: nope}, {host: stbad.bad.internal, value: 240.240.0.0/16}]\n"),
			skips: map[string]uint64{entry.ReasonStatusInvalidAddress: 2}},
		{name: "opt-out label in odd case", docs: "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: optout, namespace: bad, labels: {networking.istio.io/enable-autoallocate-ip: 'FaLsE'}}\n" +
			"spec: {hosts: [optout.bad.internal], resolution: DNS}\nstatus: {addresses: [{host: optout.bad.internal, value: 240.240.0.7}]}\n"},
		{name: "not YAML at all", docs: "{{{ not yaml", skips: map[string]uint64{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The handler entries have bad items of their own: what they
			// skip is subtracted from what the whole input skips.
			baseStore := storeFrom(t, c.opts, handlerEntries)
			base, before := baseStore.table(), baseStore.skipped.counts()
			counter := newStore(false)
			entries, _, err := manifest.Parse("test.yaml", []byte(handlerEntries+"\n---\n"+c.docs), c.opts, counter)
			if c.name == "not YAML at all" {
				// The stream itself is broken after the good documents: they
				// are returned with the error (the file keeps its last good
				// version in the manifests source).
				if err == nil {
					t.Fatal("no error for a broken stream")
				}
			} else if err != nil {
				t.Fatal(err)
			}
			st := newStore(c.opts.AutoAllocate == entry.AutoAllocateLegacy)
			all := make(map[entry.Key]*entry.Entry)
			for _, e := range entries {
				all[e.Key] = e
			}
			st.ReplaceAll(all, nil)
			st.MarkSynced()
			got := st.table()

			after := counter.skipped.counts()
			for reason, want := range c.skips {
				if d := after[reason] - before[reason]; d != want {
					t.Errorf("skipped %s: +%v, want +%v", reason, d, want)
				}
			}
			for reason, n := range after {
				if _, expected := c.skips[reason]; !expected && n != before[reason] {
					t.Errorf("unexpected skip %s: +%v", reason, n-before[reason])
				}
			}
			for name, want := range c.serve {
				ans := lookupIn(got, name)
				if ans == nil || ans.A().Len()+ans.AAAA().Len() != want {
					t.Errorf("%s: got %v, want %d records", name, ans, want)
				}
			}
			// Everything else is as it was: the base names answer the same,
			// and the bad entry adds no name beyond those it is expected to.
			for name, want := range servedNames(baseStore) {
				if ans := lookupIn(got, name); !sameAnswer(ans, want) {
					t.Errorf("%s changed: %v -> %v", name, want, ans)
				}
			}
			added := got.Hosts - base.Hosts
			if added != len(c.serve) && c.name != "256 hosts" {
				t.Errorf("the entry added %d names, want %d", added, len(c.serve))
			}
			if c.name == "256 hosts" && added != 256 {
				t.Errorf("256 hosts added %d names", added)
			}
		})
	}
}

// servedNames lists every name a store's table answers, with its answer
// ("*." kept for wildcards: a lookup of that very name goes through the
// wildcard).
func servedNames(st *store) map[string]*table.Answer {
	out := make(map[string]*table.Answer)
	add := func(host string) {
		if ans := lookupIn(st.table(), host); ans != nil {
			out[host] = ans
		}
	}
	for host := range st.byHost.one {
		add(host)
	}
	for host := range st.byHost.many {
		add(host)
	}
	return out
}
