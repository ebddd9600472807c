package serviceentry

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

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
	convert        convertOptions
	clusterDomains []string
	searchDomains  []string // searchpath: nil when off
}

func setup(c *caddy.Controller) error {
	cfg, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	if len(cfg.manifests) == 0 {
		// Fail the load now on a bad kubeconfig (or none outside a cluster);
		// the client itself is only built when the source starts.
		if _, err := restConfig(cfg.kubeconfig, cfg.kubecontext); err != nil {
			return plugin.Error(pluginName, err)
		}
	}
	se := &ServiceEntry{Zones: cfg.zones, Fall: cfg.fall, TTL: cfg.ttl, ClusterDomains: cfg.clusterDomains,
		SearchDomains: cfg.searchDomains}
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
		// per-client answers it would hand one namespace's private answers
		// to another. Its handlers are all known once the servers are made.
		if cfg.convert.exportTo == exportClient && server.Handler("cache") != nil {
			return plugin.Error(pluginName, errors.New("exportto client cannot be served with cache in the same server block: cache would give one namespace's answers to another; serve the plugin's zones from a block without cache"))
		}
		u := &user{inst: inst, handler: se, servers: serverLabels(server), zones: strings.Join(cfg.zones, ",")}
		st, err := running.acquire(u, cfg.sourceKey(), func() (source, *store, error) { return newSource(cfg) })
		if err != nil {
			return plugin.Error(pluginName, err)
		}
		se.attach(st)
		if !st.waitSynced(cfg.startupTimeout) {
			log.Warningf("ServiceEntries not read within startup_timeout %s; until they are, names that fallthrough covers are passed on, the rest get SERVFAIL, and the plugin is not ready", cfg.startupTimeout)
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

// source feeds a store: from a Kubernetes API server or from manifest files.
type source interface {
	// start begins reading in the background. The store publishes its first
	// table once the source completes a full read.
	start() error
	// stop ends every goroutine of the source before it returns.
	stop()
}

func newSource(cfg *config) (source, *store, error) {
	st := newStore(cfg.convert.autoAllocate == autoAllocateLegacy)
	if len(cfg.manifests) > 0 {
		return newManifestSource(cfg.manifests, cfg.convert, st), st, nil
	}
	src, err := newKubeSource(cfg, st)
	return src, st, err
}

// sourceKey identifies what a source reads and how it converts it: two blocks
// (or two loads of the Corefile) with equal keys share one source and table.
// Options of the handler alone (zones, ttl, fallthrough) are not part of it.
func (cfg *config) sourceKey() string {
	return fmt.Sprintf("%q %q %q %q %q %+v", cfg.manifests, cfg.kubeconfig, cfg.kubecontext, cfg.namespaces, cfg.labels, cfg.convert)
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
		convert:        convertOptions{autoAllocate: autoAllocateStatus},
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
	if len(cfg.manifests) > 0 && cfg.convert.exportTo == exportClient {
		return nil, fmt.Errorf("exportto client needs the Kubernetes source: a client's namespace is found from the pods' addresses, which manifests do not give")
	}
	// Legacy addresses are positions among every eligible entry of the mesh:
	// computed over fewer entries they differ from those istiod hands out.
	if cfg.convert.autoAllocate == autoAllocateLegacy && (len(cfg.namespaces) > 0 || cfg.labels != "") {
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
		modes := map[string]autoAllocateMode{"status": autoAllocateStatus, "legacy": autoAllocateLegacy, "off": autoAllocateOff}
		mode, ok := modes[args[0]]
		if !ok {
			return c.Errf("autoallocate must be status, legacy or off, got %q", args[0])
		}
		cfg.convert.autoAllocate = mode
		// Istio's agent gives a pod the auto-allocated addresses of its first
		// IP family only, unless ISTIO_DUAL_STACK is on and the pod is
		// dual-stack: IPv4 only unless told the mesh is dual-stack.
		cfg.convert.dualStack = false
		if len(args) == 2 {
			if args[1] != "dualstack" {
				return c.Errf("autoallocate %s takes only dualstack, got %q", args[0], args[1])
			}
			if mode == autoAllocateOff {
				return c.Errf("autoallocate off dualstack: dualstack needs auto-allocated addresses (status or legacy)")
			}
			cfg.convert.dualStack = true
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
	case "exportto":
		args := c.RemainingArgs()
		modes := map[string]exportMode{"public": exportPublic, "all": exportAll, "client": exportClient}
		mode, ok := modes[strings.Join(args, " ")]
		if !ok {
			return c.Errf("exportto must be public, all or client, got %q", args)
		}
		cfg.convert.exportTo = mode
	default:
		return c.Errf("unknown property '%s'", c.Val())
	}
	return nil
}
