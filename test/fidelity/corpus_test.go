package fidelity

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// seEntry is one generated ServiceEntry, kept in this form (rather than only
// as YAML) so that a difference can be explained and its entries printed.
type seEntry struct {
	APIVersion string
	Name       string
	Namespace  string
	Created    time.Time
	OptOut     bool // label networking.istio.io/enable-autoallocate-ip: "false" (in some case)
	OptOutText string
	Hosts      []string // as written: upper case and trailing dots kept
	Addresses  []string
	Resolution string // "" leaves it out (NONE)
	ExportTo   []string
	Endpoints  []string
	Selector   map[string]string // spec.workloadSelector.labels; nil: no selector
	Status     [][2]string       // status.addresses: host, value
}

// wlEntry is one generated WorkloadEntry, which a selector may pick.
type wlEntry struct {
	APIVersion   string
	Name         string
	Namespace    string
	Address      string
	Labels       map[string]string
	HealthChecks bool   // annotation proxy.istio.io/health-checks-enabled: "true"
	Healthy      string // status of its Healthy condition; "" for none
}

func (w *wlEntry) doc() string {
	meta := map[string]any{"name": w.Name, "namespace": w.Namespace}
	if w.HealthChecks {
		meta["annotations"] = map[string]string{"proxy.istio.io/health-checks-enabled": "true"}
	}
	obj := map[string]any{
		"apiVersion": "networking.istio.io/" + w.APIVersion,
		"kind":       "WorkloadEntry",
		"metadata":   meta,
		"spec":       map[string]any{"address": w.Address, "labels": w.Labels},
	}
	if w.Healthy != "" {
		obj["status"] = map[string]any{"conditions": []map[string]string{{"type": "Healthy", "status": w.Healthy}}}
	}
	b, err := json.Marshal(obj)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func (e *seEntry) key() string { return e.Namespace + "/" + e.Name }

// public reports whether every namespace sees the entry (exportTo empty or
// with "*"): the only entries a client in a namespace without entries (and
// not named by any exportTo) sees.
func (e *seEntry) public() bool {
	return len(e.ExportTo) == 0 || slices.Contains(e.ExportTo, "*")
}

func (e *seEntry) resolution() string {
	if e.Resolution == "" {
		return "NONE"
	}
	return e.Resolution
}

// doc renders the entry as one JSON document (valid YAML), as kubectl would
// write it.
func (e *seEntry) doc() string {
	meta := map[string]any{
		"name":              e.Name,
		"namespace":         e.Namespace,
		"creationTimestamp": e.Created.UTC().Format(time.RFC3339),
	}
	if e.OptOut {
		meta["labels"] = map[string]string{"networking.istio.io/enable-autoallocate-ip": e.OptOutText}
	}
	spec := map[string]any{
		"hosts": e.Hosts,
		"ports": []map[string]any{{"number": 443, "name": "tls", "protocol": "TLS"}},
	}
	if len(e.Addresses) > 0 {
		spec["addresses"] = e.Addresses
	}
	if e.Resolution != "" {
		spec["resolution"] = e.Resolution
	}
	if e.ExportTo != nil {
		spec["exportTo"] = e.ExportTo
	}
	if e.Selector != nil {
		spec["workloadSelector"] = map[string]any{"labels": e.Selector}
	}
	if len(e.Endpoints) > 0 {
		var eps []map[string]any
		for _, a := range e.Endpoints {
			eps = append(eps, map[string]any{"address": a})
		}
		spec["endpoints"] = eps
	}
	obj := map[string]any{
		"apiVersion": "networking.istio.io/" + e.APIVersion,
		"kind":       "ServiceEntry",
		"metadata":   meta,
		"spec":       spec,
	}
	if len(e.Status) > 0 {
		var addrs []map[string]string
		for _, s := range e.Status {
			addrs = append(addrs, map[string]string{"host": s[0], "value": s[1]})
		}
		obj["status"] = map[string]any{"addresses": addrs}
	}
	b, err := json.Marshal(obj)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// corpus is a generated mesh: its entries and the questions to ask of it.
type corpus struct {
	seed      uint64
	entries   []*seEntry
	workloads []*wlEntry
	questions []question
}

type question struct {
	name  string // fully qualified, in the case asked
	qtype uint16
}

func (c *corpus) yaml() string {
	var docs []string
	for _, e := range c.entries {
		docs = append(docs, e.doc())
	}
	for _, w := range c.workloads {
		docs = append(docs, w.doc())
	}
	return strings.Join(docs, "\n---\n") + "\n"
}

var (
	namespaces = []string{"team-a", "team-b", "payments", "infra", "legacy-apps", "partners"}
	domains    = []string{"example.com", "corp.internal", "partner.example.net", "db.internal", "mesh.global", "api.example.org"}
	services   = []string{"api", "auth", "billing", "cache", "db", "ldap", "mail", "search", "s3", "queue", "metrics", "login", "web", "reports", "vault"}
	subs       = []string{"eu", "us", "prod", "staging", "v2"}
	// Istio's validation refuses "*" beside other values.
	exportTos = [][]string{{"*"}, {"."}, {"~"}, {"team-b"}, {".", "payments"}, {"infra", "partners"}, {"team-a", "."}}
	resolves  = []string{"", "NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"}
	versions  = []string{"v1", "v1beta1", "v1alpha3"}
)

// generator draws a realistic mesh from a seed.
type generator struct {
	r        *rand.Rand
	hosts    []string // every exact host written so far, as written
	wilds    []string // every wildcard suffix so far ("x.example.com" for "*.x.example.com")
	times    []time.Time
	nextAuto int
	sharedV4 []string
}

func newGenerator(seed uint64) *generator {
	g := &generator{r: rand.New(rand.NewPCG(seed, seed^0x5eed))}
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	// Few distinct creation times, so that equal timestamps are common.
	for i := range 40 {
		g.times = append(g.times, base.Add(time.Duration(i*7919)*time.Second))
	}
	for i := range 8 {
		g.sharedV4 = append(g.sharedV4, fmt.Sprintf("198.51.100.%d", i+1))
	}
	return g
}

func (g *generator) pick(list []string) string { return list[g.r.IntN(len(list))] }

func (g *generator) chance(p float64) bool { return g.r.Float64() < p }

// spelling writes a host in upper case or with a trailing dot now and then,
// as users do.
func (g *generator) spelling(h string) string {
	switch {
	case g.chance(0.06):
		h = strings.ToUpper(h[:1]) + h[1:]
	case g.chance(0.04):
		h = strings.ToUpper(h)
	}
	if g.chance(0.06) {
		h += "."
	}
	return h
}

func (g *generator) newExact() string {
	name := g.pick(services)
	if g.chance(0.4) {
		name += "." + g.pick(subs)
	}
	if g.chance(0.3) {
		name += fmt.Sprint(g.r.IntN(20))
	}
	return name + "." + g.pick(domains)
}

func (g *generator) host() string {
	switch x := g.r.Float64(); {
	case x < 0.18 && len(g.hosts) > 0: // the same host again, across or within namespaces
		h := strings.TrimSuffix(strings.ToLower(g.pick(g.hosts)), ".")
		return g.spelling(h)
	case x < 0.30: // a wildcard
		suffix := g.pick(domains)
		if g.chance(0.6) {
			suffix = g.pick(subs) + "." + suffix
		}
		g.wilds = append(g.wilds, suffix)
		return "*." + suffix
	case x < 0.40 && len(g.wilds) > 0: // an exact name under a wildcard
		h := g.pick(services) + "." + g.pick(g.wilds)
		g.hosts = append(g.hosts, h)
		return g.spelling(h)
	default:
		h := g.newExact()
		g.hosts = append(g.hosts, h)
		return g.spelling(h)
	}
}

func (g *generator) v4() string {
	if g.chance(0.3) {
		return g.pick(g.sharedV4)
	}
	return fmt.Sprintf("10.%d.%d.%d", g.r.IntN(4), g.r.IntN(256), 1+g.r.IntN(254))
}

func (g *generator) v6() string {
	return fmt.Sprintf("2001:db8:%x::%x", g.r.IntN(16), 1+g.r.IntN(0xfff))
}

func (g *generator) addresses() []string {
	var out []string
	switch x := g.r.Float64(); {
	case x < 0.38: // none
	case x < 0.66:
		for range 1 + g.r.IntN(3) {
			out = append(out, g.v4())
		}
	case x < 0.74:
		for range 1 + g.r.IntN(2) {
			out = append(out, g.v6())
		}
	case x < 0.84:
		out = append(out, g.v4(), g.v6())
	case x < 0.91:
		out = append(out, g.v4()+"/32")
		if g.chance(0.5) {
			out = append(out, g.v6()+"/128")
		}
	case x < 0.96: // wide CIDRs only: they never resolve
		out = append(out, fmt.Sprintf("10.%d.0.0/16", 100+g.r.IntN(50)))
		if g.chance(0.3) {
			out = append(out, "2001:db8:ff::/64")
		}
	default: // a wide CIDR beside an IP
		out = append(out, fmt.Sprintf("172.16.%d.0/24", g.r.IntN(200)), g.v4())
	}
	return out
}

func (g *generator) autoV4() string {
	g.nextAuto++
	return fmt.Sprintf("240.240.%d.%d", g.nextAuto/250, 1+g.nextAuto%250)
}

func (g *generator) autoV6() string {
	return fmt.Sprintf("2001:2::%x", g.nextAuto)
}

// status writes status.addresses as istiod's controller would, plus the
// stale and odd cases a real cluster has: a second value for a host (the last
// wins), only one family, a host the spec no longer has, status left on an
// entry that no longer qualifies.
func (g *generator) status(e *seEntry) {
	for _, h := range e.Hosts {
		if !g.chance(0.85) {
			continue
		}
		if strings.HasPrefix(h, "*") && e.Resolution != "DYNAMIC_DNS" && !g.chance(0.1) {
			continue // istiod allocates for wildcards of DYNAMIC_DNS only
		}
		e.Status = append(e.Status, [2]string{h, g.autoV4()})
		if g.chance(0.8) {
			e.Status = append(e.Status, [2]string{h, g.autoV6()})
		}
		if g.chance(0.08) {
			e.Status = append(e.Status, [2]string{h, g.autoV4()})
		}
	}
	if g.chance(0.05) {
		e.Status = append(e.Status, [2]string{g.newExact(), g.autoV4()})
	}
}

// entry draws one ServiceEntry; valid reports whether Istio's validation
// (the webhook) accepts it, and the generator draws again when it does not.
func (g *generator) entry(i int) *seEntry {
	e := &seEntry{
		APIVersion: g.pick(versions),
		Name:       fmt.Sprintf("se-%03d", i),
		Namespace:  g.pick(namespaces),
		Created:    g.times[g.r.IntN(len(g.times))],
		Resolution: g.pick(resolves),
	}
	seen := map[string]bool{}
	for range 1 + g.r.IntN(3) + g.r.IntN(2)*g.r.IntN(3) {
		h := g.host()
		if k := strings.TrimSuffix(strings.ToLower(h), "."); !seen[k] {
			seen[k] = true
			e.Hosts = append(e.Hosts, h)
		}
	}
	e.Addresses = g.addresses()
	if g.chance(0.35) {
		e.ExportTo = slices.Clone(exportTos[g.r.IntN(len(exportTos))])
	}
	switch e.resolution() {
	case "STATIC":
		for range 1 + g.r.IntN(2) {
			e.Endpoints = append(e.Endpoints, g.v4())
		}
	case "DYNAMIC_DNS": // wildcard hosts only, no addresses, no endpoints (Istio's validation)
		e.Hosts, e.Addresses = nil, nil
		for range 1 + g.r.IntN(2) {
			suffix := g.pick(subs) + "." + g.pick(domains)
			g.wilds = append(g.wilds, suffix)
			if !slices.Contains(e.Hosts, "*."+suffix) {
				e.Hosts = append(e.Hosts, "*."+suffix)
			}
		}
	}
	// NONE takes no endpoints (Istio's validation), so Istio's headless
	// answers (endpoint addresses) come from the workloads a selector
	// picks: a headless entry (NONE, no addresses) with a selector now and
	// then, and a selector beside other resolutions, which Istio takes its
	// endpoints from instead of spec.endpoints.
	switch {
	case g.chance(0.06):
		e.Resolution, e.Addresses, e.Endpoints = g.pick([]string{"", "NONE"}), nil, nil
		e.Selector = g.selector()
	case e.resolution() == "STATIC" && g.chance(0.05):
		e.Selector, e.Endpoints = g.selector(), nil
	}
	if g.chance(0.06) {
		e.OptOut = true
		e.OptOutText = g.pick([]string{"false", "False", "FALSE", "true", "no"})
	}
	if len(e.Addresses) == 0 && e.resolution() != "NONE" || g.chance(0.08) {
		g.status(e)
	}
	return e
}

var (
	workloadApps     = []string{"db", "web", "cache", "ldap"}
	workloadVersions = []string{"v1", "v2"}
)

// selector draws a workload selector: by app, by app and version, or
// (rarely) empty, which selects every workload of the namespace.
func (g *generator) selector() map[string]string {
	switch x := g.r.Float64(); {
	case x < 0.05:
		return map[string]string{}
	case x < 0.7:
		return map[string]string{"app": g.pick(workloadApps)}
	default:
		return map[string]string{"app": g.pick(workloadApps), "version": g.pick(workloadVersions)}
	}
}

// workload draws one WorkloadEntry: mostly an IPv4 address, some IPv6, some
// a host name (which Istio's name table leaves out) or an address another
// workload has too; some health-checked, healthy or not or not yet.
func (g *generator) workload(i int) *wlEntry {
	w := &wlEntry{
		APIVersion: g.pick(versions),
		Name:       fmt.Sprintf("wle-%03d", i),
		Namespace:  g.pick(namespaces),
		Labels:     map[string]string{"app": g.pick(workloadApps)},
	}
	if g.chance(0.7) {
		w.Labels["version"] = g.pick(workloadVersions)
	}
	switch x := g.r.Float64(); {
	case x < 0.65:
		w.Address = fmt.Sprintf("10.50.%d.%d", g.r.IntN(4), 1+g.r.IntN(40))
	case x < 0.8:
		w.Address = fmt.Sprintf("2001:db8:50::%x", 1+g.r.IntN(40))
	case x < 0.9:
		w.Address = "vm-" + fmt.Sprint(g.r.IntN(10)) + "." + g.pick(domains)
	default:
		w.Address = g.pick(g.sharedV4)
	}
	if g.chance(0.2) {
		w.HealthChecks = true
		w.Healthy = g.pick([]string{"", "True", "False"})
	}
	return w
}

// questions asks for every host, names under wildcards, wildcard apexes and
// parents of hosts, unknown names, each as A and AAAA, some in mixed case.
func (g *generator) questions(entries []*seEntry) []question {
	names := map[string]bool{}
	add := func(n string) { names[strings.ToLower(dns.Fqdn(n))] = true }
	for _, e := range entries {
		for _, h := range e.Hosts {
			h = strings.TrimSuffix(strings.ToLower(h), ".")
			if suffix, ok := strings.CutPrefix(h, "*."); ok {
				add("x" + fmt.Sprint(g.r.IntN(100)) + "." + suffix)
				add("a.b." + suffix)
				add(suffix) // the apex: never covered by its own wildcard
			} else {
				add(h)
				add("below." + h)
				if _, parent, ok := strings.Cut(h, "."); ok {
					add(parent)
				}
			}
		}
	}
	for i := range 60 {
		add(fmt.Sprintf("unknown-%d.%s", i, g.pick(domains)))
	}
	add("nothing-here.invalid")
	// Some as a pod's resolver asks them first, under each search domain.
	for _, n := range slices.Sorted(mapKeys(names)) {
		if g.chance(0.2) {
			for _, d := range searchDomains {
				add(n + d)
			}
		}
	}
	var out []question
	for _, n := range slices.Sorted(mapKeys(names)) {
		asked := n
		if g.chance(0.1) {
			asked = strings.ToUpper(n[:1]) + n[1:]
		}
		out = append(out, question{asked, dns.TypeA}, question{asked, dns.TypeAAAA})
	}
	return out
}
