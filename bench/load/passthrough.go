package main

import (
	"bytes"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/coredns-serviceentry/serviceentry/bench/passthrough"
	"github.com/miekg/dns"
)

// The pass-through mode measures what the plugin costs the names that are
// not its own, which in kube-system's "." stanza is nearly every query of the
// cluster: the same binary serves, with whoami as a cheap last plugin (so
// that our cost shows plainly), either whoami alone ("plain"), or
// serviceentry with fallthrough before it ("fallthrough"), or with
// fallthrough and searchpath as deploy/in-cluster ships it ("searchpath"),
// N entries loaded from manifests. The variants run in turn, their order
// reversed every repetition, and each is compared with plain within its
// repetition: the figure is the median of those same-run ratios.

var passThroughVariants = []string{"plain", "fallthrough", "searchpath"}

// passThroughCorefile is the stanza of one variant.
func passThroughCorefile(f files, variant string, port int) string {
	se := ""
	switch variant {
	case "fallthrough":
		se = fmt.Sprintf("    serviceentry {\n        manifests %s\n        fallthrough\n    }\n", f.manifests)
	case "searchpath":
		se = fmt.Sprintf("    serviceentry {\n        manifests %s\n        fallthrough\n        searchpath\n    }\n", f.manifests)
	}
	return fmt.Sprintf(".:%d {\n    bind 127.0.0.1\n%s    whoami\n}\n", port, se)
}

// checkPassThrough makes sure, before measuring, that the server hands a
// name not ours to whoami (an empty answer, whoami's records in the
// additional section) and, unless plain, that serviceentry is in the chain
// (a host of the manifests is answered).
func checkPassThrough(variant string) func(addr string, f files) error {
	return func(addr string, f files) error {
		client := &dns.Client{Timeout: 500 * time.Millisecond}
		deadline := time.Now().Add(2 * time.Minute)
		want := 1
		if variant == "plain" {
			want = 0
		}
		for {
			r, _, err := client.Exchange(new(dns.Msg).SetQuestion(dns.Fqdn(f.sampleV4), dns.TypeA), addr)
			if err == nil && len(r.Answer) == want {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: %s A: want %d answers, got %v (%v)", variant, f.sampleV4, want, r, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		r, _, err := client.Exchange(new(dns.Msg).SetQuestion("api-1.vendor-1.com.team-1.svc.cluster.local.", dns.TypeA), addr)
		if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Extra) != 2 {
			return fmt.Errorf("%s: a name not ours was not answered by whoami: %v (%v)", variant, r, err)
		}
		return nil
	}
}

func passThrough(o options) {
	fmt.Printf("# pass-through benchmark: names not ours, whoami after serviceentry vs whoami alone, same binary, %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Printf("# dnsperf -l %v -c %d (throughput), -Q %d -l %v (latency); server on CPU %s, dnsperf on CPU %s, %s; %d reps, medians of same-run ratios\n",
		o.length.Seconds(), o.clients, o.rate, o.latencyLen.Seconds(), o.serverCPU, o.clientCPU, pinning(), o.reps)
	for _, n := range o.sizes {
		f, err := generate(o.work, n)
		if err != nil {
			log.Fatal(err)
		}
		f.queries = filepath.Join(o.work, fmt.Sprintf("passthrough-%d", n))
		// whoami answers every name alike, so the numbers of Services and
		// of vendors only shape the names.
		if err := os.WriteFile(f.queries, passthrough.Queries(uint64(n), 500, 50), 0o644); err != nil {
			log.Fatal(err)
		}
		results := map[string][]result{}
		for rep := range o.reps {
			order := slices.Clone(passThroughVariants)
			if rep%2 == 1 {
				slices.Reverse(order)
			}
			for _, variant := range order {
				r, err := serve(o, f, variant, func(port int) string { return passThroughCorefile(f, variant, port) }, checkPassThrough(variant))
				if err != nil {
					log.Fatalf("n=%d %s: %v", n, variant, err)
				}
				log.Printf("n=%d rep %d %-12s %8.0f QPS %6.1f µs/query p50 %.3f ms p99 %.3f ms RSS %.1f MiB load %s",
					n, rep+1, variant, r.qps, r.cpuPerQuery, r.p50, r.p99, r.rssMiB, loadAverage())
				results[variant] = append(results[variant], r)
			}
		}
		fmt.Printf("\n## %d entries, names not ours\n\n", n)
		fmt.Println("| | QPS | server CPU µs/query | p50 ms | p99 ms | QPS ÷ plain, per rep | median | p99 ÷ plain, median | CPU ÷ plain, median |")
		fmt.Println("|---|---|---|---|---|---|---|---|---|")
		plain := results["plain"]
		for _, variant := range passThroughVariants {
			m := median(results[variant])
			var qps, p99, cpu []float64
			for i, r := range results[variant] {
				qps = append(qps, r.qps/plain[i].qps)
				p99 = append(p99, r.p99/plain[i].p99)
				cpu = append(cpu, r.cpuPerQuery/plain[i].cpuPerQuery)
			}
			fmt.Printf("| %s | %.0f | %.2f | %.3f | %.3f | %s | **%.3f** | %.3f | %.3f |\n", variant, m.qps, m.cpuPerQuery, m.p50, m.p99,
				ratios(qps), middle(qps), middle(p99), middle(cpu))
		}
	}
}

func ratios(v []float64) string {
	var b bytes.Buffer
	for i, x := range v {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%.3f", x)
	}
	return b.String()
}

func middle(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// loadAverage is the machine's 1-minute load average, for the log: the
// machine is shared, and load hits both sides of a pair alike only when
// they alternate.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return string(bytes.Fields(b)[0])
}
