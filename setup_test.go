package serviceentry

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin/pkg/fall"
)

func TestParse(t *testing.T) {
	cases := []struct {
		name    string
		input   string
		wantErr string // substring; empty means success
		check   func(t *testing.T, c *config)
	}{
		{"defaults", `serviceentry`, "", func(t *testing.T, c *config) {
			if c.ttl != 30 || c.startupTimeout != 5*time.Second || c.convert.AutoAllocate != entry.AutoAllocateStatus || c.convert.ExportTo != entry.ExportPublic {
				t.Errorf("defaults: %+v", c)
			}
			if len(c.zones) != 1 || c.zones[0] != "." {
				t.Errorf("zones %v, want the server block's", c.zones)
			}
			if !c.fall.Equal(fall.Zero) {
				t.Errorf("fallthrough on by default")
			}
			if strings.Join(c.clusterDomains, ",") != "cluster.local." {
				t.Errorf("cluster domains %v, want cluster.local.", c.clusterDomains)
			}
			if c.searchDomains != nil {
				t.Errorf("searchpath on by default: %v", c.searchDomains)
			}
		}},
		{"searchpath defaults to cluster.local", "serviceentry {\nsearchpath\n}", "", func(t *testing.T, c *config) {
			if strings.Join(c.searchDomains, ",") != "cluster.local." {
				t.Errorf("search domains %v, want cluster.local.", c.searchDomains)
			}
		}},
		{"searchpath domains", "serviceentry {\nsearchpath Corp.Local cluster.local.\n}", "", func(t *testing.T, c *config) {
			if strings.Join(c.searchDomains, ",") != "corp.local.,cluster.local." {
				t.Errorf("search domains %v", c.searchDomains)
			}
		}},
		{"zones from args", `serviceentry global Example.COM`, "", func(t *testing.T, c *config) {
			if strings.Join(c.zones, ",") != "global.,example.com." {
				t.Errorf("zones %v", c.zones)
			}
		}},
		{"all options", `serviceentry global {
			kubeconfig /tmp/kc ctx
			startup_timeout 500ms
			namespaces a b
			namespaces c
			labels app in (x, y),tier=db
			ttl 0
			autoallocate off
			exportto all
			cluster_domain Cluster.Example corp.local.
			fallthrough a.global
		}`, "", func(t *testing.T, c *config) {
			if c.kubeconfig != "/tmp/kc" || c.kubecontext != "ctx" || c.startupTimeout != 500*time.Millisecond {
				t.Errorf("kube options: %+v", c)
			}
			if strings.Join(c.namespaces, ",") != "a,b,c" || c.labels != "app in (x, y),tier=db" {
				t.Errorf("scope: %v %q", c.namespaces, c.labels)
			}
			if c.ttl != 0 || c.convert.AutoAllocate != entry.AutoAllocateOff || c.convert.ExportTo != entry.ExportAll {
				t.Errorf("answer options: %+v", c)
			}
			if !c.fall.Through("x.a.global.") || c.fall.Through("b.global.") {
				t.Errorf("fallthrough zones wrong")
			}
			if strings.Join(c.clusterDomains, ",") != "cluster.example.,corp.local." {
				t.Errorf("cluster domains %v", c.clusterDomains)
			}
		}},
		{"legacy alone", "serviceentry {\nautoallocate legacy\n}", "", func(t *testing.T, c *config) {
			if c.convert.AutoAllocate != entry.AutoAllocateLegacy {
				t.Errorf("autoallocate %v, want legacy", c.convert.AutoAllocate)
			}
		}},
		{"manifests", `serviceentry { 
			manifests examples a.yaml
			autoallocate off
		}`, "", func(t *testing.T, c *config) {
			if strings.Join(c.manifests, ",") != "examples,a.yaml" || c.convert.AutoAllocate != entry.AutoAllocateOff {
				t.Errorf("%+v", c)
			}
		}},
		{"ttl max", `serviceentry { 
			ttl 3600 
		}`, "", nil},
		{"ttl too big", "serviceentry {\nttl 3601\n}", "ttl must be an integer from 0 to 3600", nil},
		{"ttl negative", "serviceentry {\nttl -1\n}", "ttl must be", nil},
		{"ttl not a number", "serviceentry {\nttl abc\n}", "ttl must be", nil},
		{"ttl no arg", "serviceentry {\nttl\n}", "Wrong argument count", nil},
		{"bad duration", "serviceentry {\nstartup_timeout 5\n}", "startup_timeout must be", nil},
		{"autoallocate dualstack", "serviceentry {\nautoallocate status dualstack\n}", "", func(t *testing.T, c *config) {
			if c.convert.AutoAllocate != entry.AutoAllocateStatus || !c.convert.DualStack {
				t.Errorf("convert options %+v, want status with dualstack", c.convert)
			}
		}},
		{"autoallocate IPv4 only by default", "serviceentry {\nautoallocate legacy\n}", "", func(t *testing.T, c *config) {
			if c.convert.DualStack {
				t.Errorf("dualstack on by default")
			}
		}},
		{"autoallocate off dualstack", "serviceentry {\nautoallocate off dualstack\n}", "dualstack needs auto-allocated addresses", nil},
		{"autoallocate bad family", "serviceentry {\nautoallocate status ipv6\n}", "autoallocate status takes only dualstack", nil},
		{"bad autoallocate", "serviceentry {\nautoallocate v2\n}", "autoallocate must be status, legacy or off", nil},
		{"bad exportto", "serviceentry {\nexportto some\n}", "exportto must be public, all or client", nil},
		{"bad labels", "serviceentry {\nlabels a=(\n}", "labels: invalid selector", nil},
		{"unknown property", "serviceentry {\nendpoint http://x\n}", "unknown property 'endpoint'", nil},
		{"manifests without path", "serviceentry {\nmanifests\n}", "Wrong argument count", nil},
		{"kubeconfig too many args", "serviceentry {\nkubeconfig a b c\n}", "Wrong argument count", nil},
		{"legacy with namespaces", "serviceentry {\nautoallocate legacy\nnamespaces a\n}", "autoallocate legacy cannot be combined with namespaces or labels: istiod allocates over every namespace", nil},
		{"legacy with labels", "serviceentry {\nlabels app=x\nautoallocate legacy\n}", "autoallocate legacy cannot be combined with namespaces or labels", nil},
		{"cluster_domain without a domain", "serviceentry {\ncluster_domain\n}", "Wrong argument count", nil},
		{"exportto client with manifests", "serviceentry {\nmanifests x\nexportto client\n}", "exportto client needs the Kubernetes source", nil},
		{"exportto client", "serviceentry {\nexportto client\n}", "", func(t *testing.T, c *config) {
			if c.convert.ExportTo != entry.ExportClient {
				t.Errorf("exportto %v, want client", c.convert.ExportTo)
			}
		}},
		{"manifests with kubeconfig", "serviceentry {\nmanifests x\nkubeconfig y\n}", "manifests cannot be combined", nil},
		{"twice in a block", "serviceentry\nserviceentry", "plugin", nil},
		{"error names the line", "serviceentry {\n\n\nttl x\n}", "Testfile:4", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctl := caddy.NewTestController("dns", c.input)
			ctl.ServerBlockKeys = []string{".:1053"}
			cfg, err := parse(ctl)
			if c.wantErr != "" {
				if err == nil {
					t.Fatalf("want error containing %q, got none", c.wantErr)
				}
				if !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %q does not contain %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if c.check != nil {
				c.check(t, cfg)
			}
		})
	}
}

// TestSetupErrors: setup fails at startup with the plugin's name in the error
// for bad input and for a Kubernetes source that cannot be configured.
func TestSetupErrors(t *testing.T) {
	for _, c := range []struct{ input, want string }{
		{"serviceentry {\nttl x\n}", "plugin/serviceentry"},
		{"serviceentry {\nkubeconfig /nonexistent/kubeconfig\n}", "loading kubeconfig /nonexistent/kubeconfig"},
	} {
		err := setup(caddy.NewTestController("dns", c.input))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one containing %q", c.input, err, c.want)
		}
	}
}

// TestReadmeExamples: every serviceentry block in the Corefiles of the README
// and docs/ parses, so the documented examples stay valid.
func TestReadmeExamples(t *testing.T) {
	docs, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	var text []byte
	for _, path := range append([]string{"README.md"}, docs...) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		text = append(text, b...)
	}
	var blocks []string
	for _, corefile := range strings.Split(string(text), "~~~ corefile\n")[1:] {
		lines := strings.Split(corefile[:strings.Index(corefile, "~~~")], "\n")
		for i, line := range lines {
			trimmed := strings.TrimSpace(line)
			if !strings.HasPrefix(trimmed, "serviceentry") {
				continue
			}
			block := []string{trimmed}
			if strings.HasSuffix(trimmed, "{") {
				indent := line[:len(line)-len(strings.TrimLeft(line, " "))]
				for _, next := range lines[i+1:] {
					block = append(block, next)
					if next == indent+"}" {
						break
					}
				}
			}
			blocks = append(blocks, strings.Join(block, "\n"))
		}
	}
	if len(blocks) < 5 {
		t.Fatalf("found %d serviceentry blocks in README.md and docs/, want the examples", len(blocks))
	}
	for _, b := range blocks {
		ctl := caddy.NewTestController("dns", b)
		ctl.ServerBlockKeys = []string{".:53"}
		if _, err := parse(ctl); err != nil {
			t.Errorf("documented example does not parse: %v\n%s", err, b)
		}
	}
}
