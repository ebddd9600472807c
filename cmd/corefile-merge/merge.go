package main

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/coredns/caddy/caddyfile"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/parse"
	"github.com/coredns/coredns/plugin/pkg/transport"
)

// defaultDomain is the cluster domain the plugin assumes when its stanza
// names none (cluster_domain and searchpath both default to it).
const defaultDomain = "cluster.local"

// result is what merge did: the Corefile to write, and whether it differs
// from the input (an input that already has the stanza is returned as is).
type result struct {
	corefile []byte
	changed  bool
	// line is the line of the serviceentry directive in corefile.
	line int
	// note says what the default stanza left out, and why.
	note string
}

// merge adds stanza to the server block of corefile that serves zone "."
// over plain DNS (the one the cluster's pods ask), on the lines right before
// that block's kubernetes directive, and leaves every other byte as it was:
// stub domains, hosts, imports, comments, the cluster domain. The plugin's
// place in the chain is fixed when CoreDNS is built, so the line chosen only
// keeps the Corefile readable; it is the block that matters.
//
// An empty stanza means the default one: fallthrough and searchpath, with
// cluster_domain and searchpath naming the kubernetes directive's own
// domains when they are not cluster.local, so that the cluster's Services
// keep their names.
//
// A block that already has a serviceentry directive is left alone, whatever
// its options: running merge twice changes nothing, and CoreDNS refuses a
// second serviceentry in one block.
func merge(name string, corefile []byte, stanza string) (result, error) {
	blk, err := dotBlock(name, corefile)
	if err != nil {
		return result{}, err
	}
	if se, ok := blk.Tokens["serviceentry"]; ok {
		return result{corefile: corefile, line: se[0].Line}, nil
	}
	kube, ok := blk.Tokens["kubernetes"]
	if !ok {
		// Search-path expansions and the cluster domain are answered by the
		// block holding kubernetes; a stanza elsewhere would not see them.
		return result{}, fmt.Errorf("%s: the server block %s has no kubernetes directive; "+
			"the stanza belongs in the block that answers the cluster's names, add it by hand", name, strings.Join(blk.Keys, " "))
	}
	newline := "\n"
	if bytes.Contains(corefile, []byte("\r\n")) {
		newline = "\r\n"
	}
	lines := strings.SplitAfter(string(corefile), "\n")
	at := kube[0].Line - 1
	indent, rest := splitIndent(lines[at])
	if !strings.HasPrefix(rest, "kubernetes") {
		return result{}, fmt.Errorf("%s:%d: kubernetes does not start its line; put it on a line of its own", name, kube[0].Line)
	}
	var note string
	if stanza == "" {
		domains, err := clusterDomains(name, kube)
		if err != nil {
			return result{}, err
		}
		// autopath runs before the plugin and already walks the search
		// path through it; searchpath would only double its CNAME.
		_, autopath := blk.Tokens["autopath"]
		if autopath {
			note = "the block has autopath, which walks the search path through the plugin: the stanza has no searchpath"
		}
		stanza = defaultStanza(domains, !autopath)
	}
	if err := checkStanza(stanza); err != nil {
		return result{}, err
	}
	inner := innerIndent(indent, lines, at)
	var add strings.Builder
	for _, l := range strings.Split(strings.TrimRight(dedent(stanza), "\n"), "\n") {
		l = strings.TrimRight(l, " \t\r")
		switch {
		case l == "":
		case l[0] == '\t' || l[0] == ' ':
			// An option: indented as this Corefile indents the options of
			// its kubernetes block.
			l = inner + strings.TrimLeft(l, " \t")
		default:
			l = indent + l
		}
		add.WriteString(l + newline)
	}
	out := strings.Join(lines[:at], "") + add.String() + strings.Join(lines[at:], "")

	// The result must parse, and the stanza must land in the block it was
	// meant for: a check of this function, not of the input.
	check, err := dotBlock(name, []byte(out))
	if err != nil {
		return result{}, fmt.Errorf("internal error: the merged Corefile does not parse: %v", err)
	}
	se, ok := check.Tokens["serviceentry"]
	if !ok || se[0].Line != at+1 {
		return result{}, fmt.Errorf("internal error: the stanza is not in the %s block after merging", strings.Join(blk.Keys, " "))
	}
	return result{corefile: []byte(out), changed: true, line: at + 1, note: note}, nil
}

// dotBlock is the one server block of corefile that serves zone "." over
// plain DNS. Imported files and snippets are not read: they live where
// CoreDNS runs, not where this command does, so import lines are blanked
// before parsing (the line numbers stay those of the input).
func dotBlock(name string, corefile []byte) (caddyfile.ServerBlock, error) {
	blocks, err := caddyfile.Parse(name, bytes.NewReader(withoutImports(name, corefile)), nil)
	if err != nil {
		return caddyfile.ServerBlock{}, err
	}
	var found []caddyfile.ServerBlock
	var all []string
	for _, b := range blocks {
		all = append(all, strings.Join(b.Keys, " "))
		if servesRoot(b.Keys) {
			found = append(found, b)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return caddyfile.ServerBlock{}, fmt.Errorf("%s: no server block serves zone \".\" over plain DNS (blocks: %s); "+
			"this does not look like a cluster's Corefile, add the stanza by hand", name, strings.Join(all, "; "))
	default:
		var keys []string
		for _, b := range found {
			keys = append(keys, strings.Join(b.Keys, " "))
		}
		return caddyfile.ServerBlock{}, fmt.Errorf("%s: %d server blocks serve zone \".\" (%s); choose one and add the stanza by hand",
			name, len(found), strings.Join(keys, "; "))
	}
}

// servesRoot tells whether one of a server block's keys is zone "." over
// plain DNS (".", ".:53", "dns://.:53"), as CoreDNS normalizes them.
func servesRoot(keys []string) bool {
	for _, k := range keys {
		if trans, _ := parse.Transport(k); trans != transport.DNS {
			continue
		}
		for _, z := range plugin.Host(k).NormalizeExact() {
			if z == "." {
				return true
			}
		}
	}
	return false
}

// withoutImports returns corefile with every line that the lexer starts
// with an import directive blanked, so that parsing reads no file.
func withoutImports(name string, corefile []byte) []byte {
	d := caddyfile.NewDispenser(name, bytes.NewReader(corefile))
	blank := map[int]bool{}
	last := 0
	for d.Next() {
		if d.Line() != last && d.Val() == "import" {
			blank[d.Line()] = true
		}
		last = d.Line()
	}
	if len(blank) == 0 {
		return corefile
	}
	lines := strings.SplitAfter(string(corefile), "\n")
	for n := range blank {
		if _, rest := splitIndent(lines[n-1]); strings.HasPrefix(rest, "import") {
			lines[n-1] = "\n"
		}
	}
	return []byte(strings.Join(lines, ""))
}

// clusterDomains are the forward zones of the kubernetes directive whose
// tokens are kube: its arguments on the directive's line, less the reverse
// zones. Without arguments kubernetes serves the block's own zone ("."),
// and no cluster domain can be told from that.
func clusterDomains(name string, kube []caddyfile.Token) ([]string, error) {
	var domains []string
	for _, t := range kube[1:] {
		if t.Line != kube[0].Line || t.Text == "{" {
			break
		}
		for _, z := range plugin.Host(t.Text).NormalizeExact() {
			if !plugin.Name("in-addr.arpa.").Matches(z) && !plugin.Name("ip6.arpa.").Matches(z) {
				domains = append(domains, strings.TrimSuffix(z, "."))
			}
		}
	}
	if len(domains) == 0 {
		return nil, fmt.Errorf("%s:%d: kubernetes names no cluster domain; give the stanza with -stanza", name, kube[0].Line)
	}
	return domains, nil
}

// defaultStanza is the stanza of deploy/in-cluster/coredns-configmap.yaml,
// with the cluster's domains named where they are not the plugin's default,
// and without searchpath when searchpath is false.
func defaultStanza(domains []string, searchpath bool) string {
	s := "serviceentry {\n\tfallthrough\n"
	d := ""
	if len(domains) != 1 || domains[0] != defaultDomain {
		d = strings.Join(domains, " ")
	}
	if searchpath {
		s += "\t" + strings.TrimSpace("searchpath "+d) + "\n"
	}
	if d != "" {
		s += "\tcluster_domain " + d + "\n"
	}
	return s + "}\n"
}

// checkStanza refuses a -stanza that is not one serviceentry directive:
// anything else would be merged into the cluster's DNS unseen.
func checkStanza(stanza string) error {
	blocks, err := caddyfile.Parse("stanza", strings.NewReader("stanza {\n"+stanza+"\n}\n"), nil)
	if err != nil {
		return fmt.Errorf("the stanza does not parse: %v", err)
	}
	if len(blocks) != 1 || len(blocks[0].Tokens) != 1 || blocks[0].Tokens["serviceentry"] == nil {
		return fmt.Errorf("the stanza must be one serviceentry directive and nothing else")
	}
	if n := countDirective(blocks[0].Tokens["serviceentry"]); n != 1 {
		return fmt.Errorf("the stanza must be one serviceentry directive, found %d", n)
	}
	return nil
}

// countDirective counts the directives among tokens that the parser filed
// under one name: each starts a line with that name.
func countDirective(tokens []caddyfile.Token) int {
	n := 0
	for i, t := range tokens {
		if t.Text == tokens[0].Text && (i == 0 || tokens[i-1].Line != t.Line) {
			n++
		}
	}
	return n
}

// innerIndent is the indentation of a directive's options in this
// Corefile: that of the kubernetes block's first option when it has one,
// else one more level than the directive.
func innerIndent(indent string, lines []string, at int) string {
	if at+1 < len(lines) {
		next, rest := splitIndent(lines[at+1])
		if len(next) > len(indent) && strings.HasPrefix(next, indent) && strings.TrimSpace(rest) != "}" {
			return next
		}
	}
	if strings.Contains(indent, "\t") {
		return indent + "\t"
	}
	return indent + "    "
}

// dedent removes the indentation of the stanza's first line from each line,
// since a stanza file may be indented as it sits in a Corefile. What is left
// indented is an option: merge gives it the Corefile's own option indent (the
// plugin's options have no blocks of their own, so one level is all there is).
func dedent(s string) string {
	lines := strings.Split(strings.Trim(s, "\n"), "\n")
	first, _ := splitIndent(lines[0])
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, first)
	}
	return strings.Join(lines, "\n")
}

// splitIndent splits a line into its leading blanks and the rest.
func splitIndent(line string) (indent, rest string) {
	rest = strings.TrimLeft(line, " \t")
	return line[:len(line)-len(rest)], rest
}
