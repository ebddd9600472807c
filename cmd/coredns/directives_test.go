package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/coredns/coredns/core/dnsserver"
)

func TestDirectiveOrder(t *testing.T) {
	got := dnsserver.Directives
	se := slices.Index(got, "serviceentry")
	if se < 0 {
		t.Fatalf("serviceentry is not a directive: %v", got)
	}
	if got[se+1] != "cache" {
		t.Errorf("serviceentry is followed by %q, want cache", got[se+1])
	}
	for _, after := range []string{"hosts", "kubernetes", "forward"} {
		if i := slices.Index(got, after); i < se {
			t.Errorf("%s (%d) comes before serviceentry (%d)", after, i, se)
		}
	}
	for _, before := range []string{"rewrite", "autopath", "loadbalance", "acl"} {
		if i := slices.Index(got, before); i > se {
			t.Errorf("%s (%d) comes after serviceentry (%d)", before, i, se)
		}
	}
	if n := len(slices.DeleteFunc(slices.Clone(got), func(d string) bool { return d != "serviceentry" })); n != 1 {
		t.Errorf("serviceentry appears %d times", n)
	}
}

func TestWithServiceEntryNeedsCache(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic for a directive list without cache")
		}
	}()
	withServiceEntry([]string{"hosts", "forward"})
}

// TestPluginCfgPatch applies plugin.cfg.patch to the pinned CoreDNS release's
// plugin.cfg (from the module cache) and checks that the patched order is the
// order this command builds.
func TestPluginCfgPatch(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/coredns/coredns").Output()
	if err != nil {
		t.Fatalf("finding CoreDNS in the module cache: %v", err)
	}
	upstream, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "plugin.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "plugin.cfg"), upstream, 0o644); err != nil {
		t.Fatal(err)
	}
	patch, err := filepath.Abs("../../plugin.cfg.patch")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("git", "apply", "--unsafe-paths", "-p1", patch)
	cmd.Dir = dir
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git apply plugin.cfg.patch: %v\n%s", err, msg)
	}
	f, err := os.Open(filepath.Join(dir, "plugin.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var order []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, pkg, _ := strings.Cut(line, ":")
		if name == "serviceentry" && pkg != "github.com/coredns-serviceentry/serviceentry" {
			t.Errorf("patch names package %q", pkg)
		}
		order = append(order, name)
	}
	if !slices.Equal(order, dnsserver.Directives) {
		t.Errorf("patched plugin.cfg order\n%v\ndiffers from cmd/coredns's\n%v", order, dnsserver.Directives)
	}
}
