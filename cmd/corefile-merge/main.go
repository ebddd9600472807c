// Command corefile-merge adds the serviceentry stanza to a cluster's own
// Corefile and keeps everything else of it (stub domains, hosts, imports,
// comments, the cluster domain), so that the in-cluster layout never replaces
// a Corefile it did not write. It reads the Corefile from a file or standard
// input and prints the merged one; see docs/deploying.md for the kubectl
// steps around it.
//
//	kubectl -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}' | corefile-merge > Corefile
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
)

const usage = `usage: corefile-merge [-stanza FILE] [COREFILE]

Prints COREFILE (standard input when absent or "-") with a serviceentry stanza
added to the server block for zone ".", before its kubernetes directive.
Everything else is kept byte for byte. A block that already has a
serviceentry directive is printed unchanged, so running it twice is safe.
Files named by import lines are not read (they exist where CoreDNS runs): a
serviceentry directive in one of them is not seen.

Without -stanza the stanza is
    serviceentry {
        fallthrough
        searchpath
    }
naming the kubernetes directive's cluster domains (cluster_domain and
searchpath) when they are not cluster.local, and without searchpath where the
block has autopath (it already walks the search path through the plugin). -stanza FILE gives another one
(one serviceentry directive), e.g. with namespaces, or a narrower zone where
untrusted namespaces can write ServiceEntries (docs/security.md).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is the command with its streams and exit status, for tests.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("corefile-merge", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	stanzaFile := fs.String("stanza", "", "a file holding the serviceentry stanza to add")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return 2
	}
	name, in := "stdin", stdin
	if fs.NArg() == 1 && fs.Arg(0) != "-" {
		f, err := os.Open(fs.Arg(0))
		if err != nil {
			fmt.Fprintln(stderr, "corefile-merge:", err)
			return 1
		}
		defer f.Close()
		name, in = fs.Arg(0), f
	}
	corefile, err := io.ReadAll(in)
	if err != nil {
		fmt.Fprintln(stderr, "corefile-merge:", err)
		return 1
	}
	var stanza string
	if *stanzaFile != "" {
		b, err := os.ReadFile(*stanzaFile)
		if err != nil {
			fmt.Fprintln(stderr, "corefile-merge:", err)
			return 1
		}
		stanza = string(b)
	}
	// An empty Corefile is what a jsonpath into a missing ConfigMap or key
	// prints: refuse it rather than print nothing for kubectl to apply.
	if len(corefile) == 0 {
		fmt.Fprintf(stderr, "corefile-merge: %s: empty Corefile\n", name)
		return 1
	}
	res, err := merge(name, corefile, stanza)
	if err != nil {
		fmt.Fprintln(stderr, "corefile-merge:", err)
		return 1
	}
	if _, err := stdout.Write(res.corefile); err != nil {
		fmt.Fprintln(stderr, "corefile-merge:", err)
		return 1
	}
	if res.note != "" {
		fmt.Fprintf(stderr, "corefile-merge: %s: %s\n", name, res.note)
	}
	if res.changed {
		fmt.Fprintf(stderr, "corefile-merge: %s: serviceentry stanza added at line %d\n", name, res.line)
	} else {
		fmt.Fprintf(stderr, "corefile-merge: %s: already has a serviceentry directive at line %d; unchanged\n", name, res.line)
	}
	return 0
}
