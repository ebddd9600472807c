package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// shippedCorefile is the Corefile of deploy/in-cluster/coredns-configmap.yaml:
// kubeadm's own plus the stanza (test/servers holds it to the pinned
// kubeadm's template, and runs this command on that template too).
func shippedCorefile(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../../deploy/in-cluster/coredns-configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(data, &cm); err != nil {
		t.Fatal(err)
	}
	return cm.Data["Corefile"]
}

var stanzaRE = regexp.MustCompile(`(?m)^[ \t]*serviceentry \{\n(?:.*\n)*?[ \t]*\}\n`)

// A k3s-style Corefile: a hosts block for the nodes' names, and import lines
// for the files of an optional ConfigMap, which exist only where CoreDNS runs.
const k3s = `.:53 {
    errors
    health
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }
    hosts /etc/coredns/NodeHosts {
      ttl 60
      reload 15s
      fallthrough
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
    import /etc/coredns/custom/*.override
}
import /etc/coredns/custom/*.server
`

const k3sMerged = `.:53 {
    errors
    health
    ready
    serviceentry {
      fallthrough
      searchpath
    }
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }
    hosts /etc/coredns/NodeHosts {
      ttl 60
      reload 15s
      fallthrough
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
    import /etc/coredns/custom/*.override
}
import /etc/coredns/custom/*.server
`

// Stub domains (kubeadm's old stubDomains, or a hand edit) come before the
// "." block and must not receive the stanza.
const stubDomains = `# the company's zones
corp.example:53 {
    errors
    cache 30
    forward . 10.150.0.1
}
dns://.:53 {
    errors
    kubernetes k8s.example 10.96.0.0/12 ip6.arpa {
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . 172.16.0.1
}
tls://.:853 {
    tls /etc/tls/cert.pem /etc/tls/key.pem
    forward . 127.0.0.1:53
}
`

const stubDomainsMerged = `# the company's zones
corp.example:53 {
    errors
    cache 30
    forward . 10.150.0.1
}
dns://.:53 {
    errors
    serviceentry {
        fallthrough
        searchpath k8s.example
        cluster_domain k8s.example
    }
    kubernetes k8s.example 10.96.0.0/12 ip6.arpa {
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . 172.16.0.1
}
tls://.:853 {
    tls /etc/tls/cert.pem /etc/tls/key.pem
    forward . 127.0.0.1:53
}
`

func TestMerge(t *testing.T) {
	shipped := shippedCorefile(t)
	kubeadm := stanzaRE.ReplaceAllString(shipped, "")
	if kubeadm == shipped {
		t.Fatal("the shipped Corefile has no stanza to take out")
	}
	narrow := "serviceentry mesh.internal {\n    namespaces platform\n}\n"
	tests := []struct {
		name, in, stanza, want string
		changed                bool
		wantErr, note          string
	}{
		{name: "kubeadm's Corefile gives the shipped one", in: kubeadm, want: shipped, changed: true},
		{name: "the shipped Corefile is left alone", in: shipped, want: shipped},
		{name: "k3s: hosts and imports kept, no imported file read", in: k3s, want: k3sMerged, changed: true},
		{name: "stub domains, another cluster domain, a reverse CIDR, a TLS block", in: stubDomains, want: stubDomainsMerged, changed: true},
		{
			name: "tabs and a kubernetes directive without options",
			in:   ".:53 {\n\terrors\n\tkubernetes cluster.local\n\tforward . /etc/resolv.conf\n}\n",
			want: ".:53 {\n\terrors\n\tserviceentry {\n\t\tfallthrough\n\t\tsearchpath\n\t}\n\tkubernetes cluster.local\n\tforward . /etc/resolv.conf\n}\n", changed: true,
		},
		{
			name: "CRLF line ends are kept",
			in:   ".:53 {\r\n    kubernetes cluster.local\r\n}\r\n",
			want: ".:53 {\r\n    serviceentry {\r\n        fallthrough\r\n        searchpath\r\n    }\r\n    kubernetes cluster.local\r\n}\r\n", changed: true,
		},
		{
			name: "several keys, the root among them",
			in:   "example.org .:53 {\n    kubernetes cluster.local\n}\n",
			want: "example.org .:53 {\n    serviceentry {\n        fallthrough\n        searchpath\n    }\n    kubernetes cluster.local\n}\n", changed: true,
		},
		{
			name: "an import of a file that is not here is not read",
			in:   ".:53 {\n    import /nonexistent/serviceentry.conf\n    kubernetes cluster.local\n}\n",
			want: ".:53 {\n    import /nonexistent/serviceentry.conf\n    serviceentry {\n        fallthrough\n        searchpath\n    }\n    kubernetes cluster.local\n}\n", changed: true,
		},
		{
			name: "a stanza of one's own, narrowed, indented as the Corefile is", in: kubeadm, stanza: narrow, changed: true,
			want: strings.Replace(kubeadm, "    kubernetes", "    serviceentry mesh.internal {\n       namespaces platform\n    }\n    kubernetes", 1),
		},
		{
			name: "an existing stanza with other options is kept as it is",
			in:   ".:53 {\n    serviceentry mesh.internal\n    kubernetes cluster.local\n}\n",
			want: ".:53 {\n    serviceentry mesh.internal\n    kubernetes cluster.local\n}\n",
		},
		{
			name: "autopath: no searchpath in the stanza",
			in:   ".:53 {\n    autopath @kubernetes\n    kubernetes cluster.local {\n        pods verified\n    }\n}\n",
			want: ".:53 {\n    autopath @kubernetes\n    serviceentry {\n        fallthrough\n    }\n    kubernetes cluster.local {\n        pods verified\n    }\n}\n", changed: true,
			note: "autopath",
		},
		{
			name: "autopath and another cluster domain",
			in:   ".:53 {\n    autopath @kubernetes\n    kubernetes k8s.example\n}\n",
			want: ".:53 {\n    autopath @kubernetes\n    serviceentry {\n        fallthrough\n        cluster_domain k8s.example\n    }\n    kubernetes k8s.example\n}\n", changed: true,
			note: "autopath",
		},
		{name: "no root block", in: "example.org:53 {\n    forward . 10.0.0.1\n}\n", wantErr: `no server block serves zone "."`},
		{name: "a root block over TLS only", in: "tls://.:853 {\n    kubernetes cluster.local\n}\n", wantErr: `no server block serves zone "."`},
		{name: "two root blocks", in: ".:53 {\n    kubernetes cluster.local\n}\n.:1053 {\n    kubernetes cluster.local\n}\n", wantErr: `2 server blocks serve zone "."`},
		{name: "no kubernetes in the root block", in: ".:53 {\n    forward . 10.0.0.1\n}\ncluster.local:53 {\n    kubernetes\n}\n", wantErr: "has no kubernetes directive"},
		{name: "kubernetes without a domain", in: ".:53 {\n    kubernetes {\n        pods insecure\n    }\n}\n", wantErr: "kubernetes names no cluster domain"},
		{name: "kubernetes sharing its line", in: ".:53 { kubernetes cluster.local\n}\n", wantErr: "put it on a line of its own"},
		{name: "a stanza that is not serviceentry", in: kubeadm, stanza: "hosts {\n  1.2.3.4 a.example\n}\n", wantErr: "one serviceentry directive"},
		{name: "a stanza with something more", in: kubeadm, stanza: "serviceentry\nhosts\n", wantErr: "one serviceentry directive"},
		{name: "two stanzas", in: kubeadm, stanza: "serviceentry a.example\nserviceentry b.example\n", wantErr: "found 2"},
		{name: "an unclosed block", in: ".:53 {\n    kubernetes cluster.local\n", wantErr: "Syntax error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := merge("Corefile", []byte(tc.in), tc.stanza)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q; output:\n%s", err, tc.wantErr, got.corefile)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (tc.note == "") != (got.note == "") || !strings.Contains(got.note, tc.note) {
				t.Errorf("note %q, want one with %q", got.note, tc.note)
			}
			if string(got.corefile) != tc.want || got.changed != tc.changed {
				t.Fatalf("changed %v (want %v), got:\n%s\nwant:\n%s", got.changed, tc.changed, got.corefile, tc.want)
			}
			// Idempotent: the result merged again is the result.
			again, err := merge("Corefile", got.corefile, tc.stanza)
			if err != nil || again.changed || !bytes.Equal(again.corefile, got.corefile) {
				t.Errorf("second merge: changed %v, err %v:\n%s", again.changed, err, again.corefile)
			}
		})
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(in, []byte(k3s), 0o644); err != nil {
		t.Fatal(err)
	}
	stanza := filepath.Join(dir, "stanza")
	if err := os.WriteFile(stanza, []byte("serviceentry mesh.internal\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name         string
		args         []string
		stdin        string
		code         int
		stdout       string
		stderrSubstr string
	}{
		{name: "a file", args: []string{in}, stdout: k3sMerged, stderrSubstr: "added at line 5"},
		{name: "standard input", args: nil, stdin: k3s, stdout: k3sMerged, stderrSubstr: "stdin"},
		{name: "dash is standard input", args: []string{"-"}, stdin: k3sMerged, stdout: k3sMerged, stderrSubstr: "unchanged"},
		{name: "a stanza file", args: []string{"-stanza", stanza, in}, stdout: strings.Replace(k3s, "    kubernetes", "    serviceentry mesh.internal\n    kubernetes", 1), stderrSubstr: "added"},
		{name: "empty input", stdin: "", code: 1, stderrSubstr: "empty Corefile"},
		{name: "a refusal prints nothing", stdin: "example.org {\n}\n", code: 1, stderrSubstr: `zone "."`},
		{name: "a missing file", args: []string{filepath.Join(dir, "nope")}, code: 1, stderrSubstr: "no such file"},
		{name: "two files", args: []string{in, in}, code: 2, stderrSubstr: "usage"},
		{name: "an unknown flag", args: []string{"-x"}, code: 2, stderrSubstr: "usage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, strings.NewReader(tc.stdin), &stdout, &stderr)
			if code != tc.code || stdout.String() != tc.stdout || !strings.Contains(stderr.String(), tc.stderrSubstr) {
				t.Errorf("exit %d (want %d), stdout:\n%s\nstderr: %s (want %q)", code, tc.code, stdout.String(), stderr.String(), tc.stderrSubstr)
			}
		})
	}
}
