package serviceentry

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/podindex"
	"github.com/coredns-serviceentry/serviceentry/internal/source/kube"
	"github.com/coredns-serviceentry/serviceentry/internal/source/manifest"
	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/fall"
	"k8s.io/apimachinery/pkg/labels"
)

func init() { plugin.Register(pluginName, setup) }

const (
	defaultTTL            = 30
	maxTTL                = 3600
	defaultStartupTimeout = 5 * time.Second
)

// config is the parsed serviceentry block.
type config struct {
	zones          []string
	fall           fall.F
	ttl            uint32
	manifests      []string
	kubeconfig     string
	kubecontext    string
	startupTimeout time.Duration
	namespaces     []string
	labels         string
	convert        entry.Options
	clusterDomains []string
	searchDomains  []string // searchpath: nil when off
	clients        clientMode
	clientsSet     bool // clients was given
}

func setup(c *caddy.Controller) error {
	cfg, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	if len(cfg.manifests) == 0 {
		// Fail the load now on a bad kubeconfig (or none outside a cluster);
		// the client itself is only built when the source starts.
		if _, err := kube.RESTConfig(cfg.kubeconfig, cfg.kubecontext); err != nil {
			return plugin.Error(pluginName, err)
		}
	}
	se := &ServiceEntry{Zones: cfg.zones, Fall: cfg.fall, TTL: cfg.ttl, ClusterDomains: cfg.clusterDomains,
		SearchDomains: cfg.searchDomains, clients: cfg.clients, zonesLabel: strings.Join(cfg.zones, ",")}
	inst := instanceOf(c)
	server := dnsserver.GetConfig(c)
	if server.Root != "" {
		cfg.resolveManifests(server.Root)
	}

	// Nothing starts here: a later plugin's setup may still fail the load.
	// Sources are shared across reloads (see running): OnStartup takes over a
	// running one with the same configuration or starts one, and the
	// instance's shutdown, or the failure of the reload that created it,
	// releases it.
	c.OnStartup(func() error {
		// cache keys its replies by name and type alone: in front of
		// per-client answers it would hand one client's answers to the
		// next. This module's CoreDNS runs the plugin before cache; a build
		// that runs it after cache cannot serve per-client answers in a
		// block with cache. Its handlers are all known once the servers are
		// made.
		if cfg.perClient() && server.Handler("cache") != nil && cacheFirst(dnsserver.Directives) {
			return plugin.Error(pluginName, errors.New("this CoreDNS runs cache before serviceentry, and cache would give one client's answers to another: build it with serviceentry before cache (plugin.cfg.patch), serve the plugin's zones from a block without cache, or give every client the same answers (clients mesh and exportto public)"))
		}
		u := &user{inst: inst, handler: se, servers: serverLabels(server), zones: se.zonesLabel, view: server.ViewName}
		se.block = u
		st, err := running.acquire(u, cfg.sourceKey(), func() (entrySource, *store, error) { return newSource(cfg) })
		if err != nil {
			return plugin.Error(pluginName, err)
		}
		switch st.waitSynced(cfg.startupTimeout) {
		case missingEntries:
			log.Warningf("ServiceEntries not read within startup_timeout %s; until they are, names that fallthrough covers are passed on, the rest get SERVFAIL, and the plugin is not ready", cfg.startupTimeout)
		case missingPods:
			log.Warningf("ServiceEntries read, but pods not all read within startup_timeout %s; until they are, every client is answered as one outside the mesh, and the plugin is not ready", cfg.startupTimeout)
		}
		return nil
	})
	c.OnShutdown(func() error { running.release(inst); return nil })
	c.OnRestartFailed(func() error { running.releaseAllBut(inst); return nil })

	server.AddPlugin(func(next plugin.Handler) plugin.Handler {
		se.Next = next
		return se
	})
	return nil
}

// serverLabels are the values CoreDNS's metrics give the server label for the
// block's listeners.
func serverLabels(cfg *dnsserver.Config) []string {
	transport := cfg.Transport
	if transport == "" {
		transport = "dns"
	}
	var out []string
	for _, host := range cfg.ListenHosts {
		out = append(out, transport+"://"+net.JoinHostPort(host, cfg.Port))
	}
	return out
}

// entrySource feeds a store: from a Kubernetes API server or from manifest files.
type entrySource interface {
	// Start begins reading in the background. The store publishes its first
	// table once the source completes a full read.
	Start() error
	// Stop ends every goroutine of the source before it returns.
	Stop()
}

func newSource(cfg *config) (entrySource, *store, error) {
	st := newStore(cfg.convert.AutoAllocate == entry.AutoAllocateLegacy)
	if len(cfg.manifests) > 0 {
		return manifest.New(cfg.manifests, cfg.convert, st), st, nil
	}
	// A client's namespace and class are those of the pod holding its
	// address: the source reads the pods into the index the handler looks
	// clients up in.
	if cfg.perClient() {
		st.clients = podindex.New()
	}
	src, err := kube.New(kube.Config{Kubeconfig: cfg.kubeconfig, Context: cfg.kubecontext, Namespaces: cfg.namespaces,
		Labels: cfg.labels, Convert: cfg.convert}, st, st.clients)
	return src, st, err
}

// sourceKey identifies what a source reads and how it converts it: two blocks
// (or two loads of the Corefile) with equal keys share one source and table.
// Options of the handler alone (zones, ttl, fallthrough) are not part of it.
func (cfg *config) sourceKey() string {
	return fmt.Sprintf("%q %q %q %q %q %+v %t", cfg.manifests, cfg.kubeconfig, cfg.kubecontext, cfg.namespaces, cfg.labels, cfg.convert, cfg.perClient())
}

// perClient reports whether two clients may get different answers for one
// name: by the namespace or the class of the pod holding their address, so
// the source reads pods.
func (cfg *config) perClient() bool {
	return cfg.convert.ExportTo == entry.ExportClient || cfg.clients == clientsByPod
}

// cacheFirst reports whether the directive order runs cache before
// serviceentry.
func cacheFirst(directives []string) bool {
	c, se := slices.Index(directives, "cache"), slices.Index(directives, pluginName)
	return c >= 0 && c < se
}

// resolveManifests makes relative manifest paths relative to CoreDNS's root
// directive, as the hosts and file plugins do.
func (cfg *config) resolveManifests(root string) {
	for i, p := range cfg.manifests {
		if !filepath.IsAbs(p) {
			cfg.manifests[i] = filepath.Join(root, p)
		}
	}
}

func parse(c *caddy.Controller) (*config, error) {
	cfg := &config{
		ttl:            defaultTTL,
		startupTimeout: defaultStartupTimeout,
		convert:        entry.Options{AutoAllocate: entry.AutoAllocateStatus},
		clients:        clientsByPod,
	}
	blocks := 0
	for c.Next() {
		blocks++
		if blocks > 1 {
			return nil, plugin.ErrOnce
		}
		cfg.zones = plugin.OriginsFromArgsOrServerBlock(c.RemainingArgs(), c.ServerBlockKeys)
		for c.NextBlock() {
			if err := parseOption(c, cfg); err != nil {
				return nil, err
			}
		}
	}
	if len(cfg.manifests) > 0 && (cfg.kubeconfig != "" || len(cfg.namespaces) > 0 || cfg.labels != "") {
		return nil, fmt.Errorf("manifests cannot be combined with kubeconfig, namespaces or labels: they select the Kubernetes source")
	}
	// A client's namespace is that of the pod holding its address, which
	// only the API server knows.
	if len(cfg.manifests) > 0 && cfg.convert.ExportTo == entry.ExportClient {
		return nil, fmt.Errorf("exportto client needs the Kubernetes source: a client's namespace is found from the pods' addresses, which manifests do not give")
	}
	// Manifests give no pods to class clients by: their clients are taken
	// to be proxies that capture DNS (or forwarders for them), as Istio's
	// own DNS proxy answers its pod, unless the Corefile says otherwise.
	if len(cfg.manifests) > 0 && !cfg.clientsSet {
		cfg.clients = clientsMesh
	}
	if len(cfg.manifests) > 0 && cfg.clients == clientsByPod {
		return nil, fmt.Errorf("clients pods needs the Kubernetes source: a client is classed by the pod holding its address, which manifests do not give")
	}
	// Legacy addresses are positions among every eligible entry of the mesh:
	// computed over fewer entries they differ from those istiod hands out.
	if cfg.convert.AutoAllocate == entry.AutoAllocateLegacy && (len(cfg.namespaces) > 0 || cfg.labels != "") {
		return nil, fmt.Errorf("autoallocate legacy cannot be combined with namespaces or labels: istiod allocates over every namespace and label, so addresses computed over fewer entries would differ from istiod's")
	}
	if cfg.clusterDomains == nil {
		cfg.clusterDomains = defaultClusterDomains
	}
	return cfg, nil
}

func parseOption(c *caddy.Controller, cfg *config) error {
	switch c.Val() {
	case "fallthrough":
		cfg.fall.SetZonesFromArgs(c.RemainingArgs())
	case "ttl":
		args := c.RemainingArgs()
		if len(args) != 1 {
			return c.ArgErr()
		}
		ttl, err := strconv.Atoi(args[0])
		if err != nil || ttl < 0 || ttl > maxTTL {
			return c.Errf("ttl must be an integer from 0 to %d, got %q", maxTTL, args[0])
		}
		cfg.ttl = uint32(ttl)
	case "manifests":
		args := c.RemainingArgs()
		if len(args) == 0 {
			return c.ArgErr()
		}
		cfg.manifests = append(cfg.manifests, args...)
	case "kubeconfig":
		args := c.RemainingArgs()
		if len(args) != 1 && len(args) != 2 {
			return c.ArgErr()
		}
		cfg.kubeconfig = args[0]
		if len(args) == 2 {
			cfg.kubecontext = args[1]
		}
	case "startup_timeout":
		args := c.RemainingArgs()
		if len(args) != 1 {
			return c.ArgErr()
		}
		d, err := time.ParseDuration(args[0])
		if err != nil || d < 0 {
			return c.Errf("startup_timeout must be a non-negative duration such as 5s, got %q", args[0])
		}
		cfg.startupTimeout = d
	case "namespaces":
		args := c.RemainingArgs()
		if len(args) == 0 {
			return c.ArgErr()
		}
		cfg.namespaces = append(cfg.namespaces, args...)
	case "labels":
		args := c.RemainingArgs()
		if len(args) == 0 {
			return c.ArgErr()
		}
		selector := strings.Join(args, " ")
		if _, err := labels.Parse(selector); err != nil {
			return c.Errf("labels: invalid selector %q: %v", selector, err)
		}
		cfg.labels = selector
	case "autoallocate":
		args := c.RemainingArgs()
		if len(args) != 1 && len(args) != 2 {
			return c.ArgErr()
		}
		modes := map[string]entry.AutoAllocateMode{"status": entry.AutoAllocateStatus, "legacy": entry.AutoAllocateLegacy, "off": entry.AutoAllocateOff}
		mode, ok := modes[args[0]]
		if !ok {
			return c.Errf("autoallocate must be status, legacy or off, got %q", args[0])
		}
		cfg.convert.AutoAllocate = mode
		// Istio's agent gives a pod the auto-allocated addresses of its first
		// IP family only, unless ISTIO_DUAL_STACK is on and the pod is
		// dual-stack: IPv4 only unless told the mesh is dual-stack.
		cfg.convert.DualStack = false
		if len(args) == 2 {
			if args[1] != "dualstack" {
				return c.Errf("autoallocate %s takes only dualstack, got %q", args[0], args[1])
			}
			if mode == entry.AutoAllocateOff {
				return c.Errf("autoallocate off dualstack: dualstack needs auto-allocated addresses (status or legacy)")
			}
			cfg.convert.DualStack = true
		}
	case "cluster_domain":
		args := c.RemainingArgs()
		if len(args) == 0 {
			return c.ArgErr()
		}
		for _, d := range args {
			cfg.clusterDomains = append(cfg.clusterDomains, plugin.Name(d).Normalize())
		}
	case "searchpath":
		args := c.RemainingArgs()
		if len(args) == 0 {
			args = []string{"cluster.local"}
		}
		for _, d := range args {
			cfg.searchDomains = append(cfg.searchDomains, plugin.Name(d).Normalize())
		}
	case "clients":
		args := c.RemainingArgs()
		modes := map[string]clientMode{"pods": clientsByPod, "mesh": clientsMesh, "outside": clientsOutside}
		mode, ok := modes[strings.Join(args, " ")]
		if !ok {
			return c.Errf("clients must be pods, mesh or outside, got %q", args)
		}
		cfg.clients, cfg.clientsSet = mode, true
	case "exportto":
		args := c.RemainingArgs()
		modes := map[string]entry.ExportMode{"public": entry.ExportPublic, "all": entry.ExportAll, "client": entry.ExportClient}
		mode, ok := modes[strings.Join(args, " ")]
		if !ok {
			return c.Errf("exportto must be public, all or client, got %q", args)
		}
		cfg.convert.ExportTo = mode
	default:
		return c.Errf("unknown property '%s'", c.Val())
	}
	return nil
}
