// Command load is the load benchmark: the built CoreDNS answering N names from
// ServiceEntry manifests (serviceentry) versus the same names from a hosts file
// (CoreDNS's own hosts plugin), in the same binary, measured with dnsperf in
// alternating runs (A, B, A, B, ...). The server is pinned to one core and
// dnsperf to the other, both at SCHED_RR, because other work on a small
// machine otherwise swings results several-fold. Figures are medians over the
// repetitions; compare the ratios, not the absolute values.
//
// Run it with scripts/bench-load, which builds the binary and installs dnsperf.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

type options struct {
	coredns    string
	sizes      []int
	reps       int
	length     time.Duration // of each throughput run
	clients    int
	rate       int           // queries per second of the latency runs
	latencyLen time.Duration // of each latency run
	serverCPU  string
	clientCPU  string
	work       string
	mode       string
}

func main() {
	var o options
	var sizes string
	flag.StringVar(&o.coredns, "coredns", "", "CoreDNS binary built from cmd/coredns (required)")
	flag.StringVar(&sizes, "n", "10000,100000", "numbers of names, comma separated")
	flag.IntVar(&o.reps, "reps", 3, "repetitions of each A/B pair")
	flag.DurationVar(&o.length, "l", 20*time.Second, "length of each throughput run")
	flag.IntVar(&o.clients, "c", 4, "dnsperf clients")
	flag.IntVar(&o.rate, "rate", 5000, "fixed query rate of the latency runs, below saturation")
	flag.DurationVar(&o.latencyLen, "latency-length", 10*time.Second, "length of each latency run")
	flag.StringVar(&o.serverCPU, "server-cpu", "0", "CPU the server is pinned to")
	flag.StringVar(&o.clientCPU, "client-cpu", "1", "CPU dnsperf is pinned to")
	flag.StringVar(&o.work, "work", "", "folder for the generated files (a temporary one if empty)")
	flag.StringVar(&o.mode, "mode", "hosts", "hosts: serviceentry against the hosts plugin on the same names; "+
		"passthrough: names that are not ours, whoami after serviceentry (fallthrough, then with searchpath) against whoami alone")
	flag.Parse()
	if o.coredns == "" {
		log.Fatal("-coredns is required")
	}
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 10 {
			log.Fatalf("-n: %q is not a number of names (at least 10)", s)
		}
		o.sizes = append(o.sizes, n)
	}
	if o.work == "" {
		dir, err := os.MkdirTemp("", "bench-load-")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(dir)
		o.work = dir
	}

	if o.mode == "passthrough" {
		passThrough(o)
		return
	}
	if o.mode != "hosts" {
		log.Fatalf("-mode: %q is neither hosts nor passthrough", o.mode)
	}
	fmt.Printf("# load benchmark: serviceentry vs hosts, same binary, %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Printf("# dnsperf -l %v -c %d (throughput), -Q %d -l %v (latency); server on CPU %s, dnsperf on CPU %s, %s; %d reps, medians\n",
		o.length.Seconds(), o.clients, o.rate, o.latencyLen.Seconds(), o.serverCPU, o.clientCPU, pinning(), o.reps)
	ownQPS := map[int]float64{}
	for _, n := range o.sizes {
		files, err := generate(o.work, n)
		if err != nil {
			log.Fatal(err)
		}
		results := map[string][]result{}
		for rep := range o.reps {
			order := []string{"serviceentry", "hosts"}
			if rep%2 == 1 {
				slices.Reverse(order) // A, B, B, A, ...: neither always runs first
			}
			for _, variant := range order {
				r, err := run(o, files, variant)
				if err != nil {
					log.Fatalf("n=%d %s: %v", n, variant, err)
				}
				log.Printf("n=%d rep %d %-12s %8.0f QPS %6.1f µs/query p50 %.3f ms p99 %.3f ms RSS %.1f MiB",
					n, rep+1, variant, r.qps, r.cpuPerQuery, r.p50, r.p99, r.rssMiB)
				results[variant] = append(results[variant], r)
			}
		}
		se, hosts := median(results["serviceentry"]), median(results["hosts"])
		ownQPS[n] = se.qps
		fmt.Printf("\n## %d names\n\n", n)
		fmt.Println("| | QPS | server CPU µs/query | p50 ms | p99 ms | RSS MiB |")
		fmt.Println("|---|---|---|---|---|---|")
		for _, row := range []struct {
			name string
			r    result
		}{{"serviceentry", se}, {"hosts", hosts}} {
			fmt.Printf("| %s | %.0f | %.1f | %.3f | %.3f | %.1f |\n", row.name, row.r.qps, row.r.cpuPerQuery, row.r.p50, row.r.p99, row.r.rssMiB)
		}
		fmt.Printf("| **serviceentry / hosts** | **%.2f** | **%.2f** | %.2f | %.2f | %.2f |\n",
			se.qps/hosts.qps, se.cpuPerQuery/hosts.cpuPerQuery, se.p50/hosts.p50, se.p99/hosts.p99, se.rssMiB/hosts.rssMiB)
	}
	if len(o.sizes) > 1 {
		small, large := o.sizes[0], o.sizes[len(o.sizes)-1]
		fmt.Printf("\nserviceentry QPS at %d names / at %d names: %.2f\n", large, small, ownQPS[large]/ownQPS[small])
	}
}

func pinning() string {
	if canPin() {
		return "SCHED_RR 10"
	}
	return "no SCHED_RR (chrt not permitted): expect more noise"
}

// files are the inputs of one size.
type files struct {
	n                  int
	manifests, hosts   string
	queries            string
	sampleV4, sampleV6 string // names to check before measuring
	absent             string
}

// generate writes N names as ServiceEntries and as a hosts file, and the
// query file: 45% A, 45% AAAA (half the names have no IPv6: NODATA), 10%
// absent names. Half the names are svc-i.ns-m.global, half
// svc-i.example.internal; every name has 240.240.x.y, even ones 2001:2::x.
func generate(dir string, n int) (files, error) {
	f := files{n: n,
		manifests: filepath.Join(dir, fmt.Sprintf("entries-%d.yaml", n)),
		hosts:     filepath.Join(dir, fmt.Sprintf("hosts-%d", n)),
		queries:   filepath.Join(dir, fmt.Sprintf("queries-%d", n)),
	}
	name := func(i int) string {
		if i%2 == 0 {
			return fmt.Sprintf("svc-%d.ns-%d.global", i, i%100)
		}
		return fmt.Sprintf("svc-%d.example.internal", i)
	}
	v4 := func(i int) string { return fmt.Sprintf("240.240.%d.%d", i>>8&0xff, i&0xff) }
	v6 := func(i int) string { return fmt.Sprintf("2001:2::%x", i) }
	f.sampleV4, f.sampleV6, f.absent = name(1), name(2), "absent-1.example.internal"

	var se, hosts, queries bytes.Buffer
	for i := range n {
		addrs := fmt.Sprintf("%q", v4(i))
		fmt.Fprintf(&hosts, "%s %s\n", v4(i), name(i))
		if i%2 == 0 {
			addrs += fmt.Sprintf(", %q", v6(i))
			fmt.Fprintf(&hosts, "%s %s\n", v6(i), name(i))
		}
		fmt.Fprintf(&se, "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc-%d, namespace: ns-%d}\n"+
			"spec: {hosts: [%q], addresses: [%s], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC}\n",
			i, i%100, name(i), addrs)
	}
	r := rand.New(rand.NewPCG(uint64(n), 1))
	for range 100_000 {
		switch p := r.IntN(100); {
		case p < 10:
			fmt.Fprintf(&queries, "absent-%d.%s A\n", r.IntN(n), []string{"example.internal", "ns-1.global"}[r.IntN(2)])
		case p < 55:
			fmt.Fprintf(&queries, "%s A\n", name(r.IntN(n)))
		default:
			fmt.Fprintf(&queries, "%s AAAA\n", name(r.IntN(n)))
		}
	}
	for path, data := range map[string][]byte{f.manifests: se.Bytes(), f.hosts: hosts.Bytes(), f.queries: queries.Bytes()} {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return f, err
		}
	}
	return f, nil
}

// corefile serves the names with one plugin; zones are the same for both so
// absent names stay with the plugin (hosts answers them SERVFAIL, serviceentry
// NXDOMAIN with an SOA, as each does in production).
func corefile(f files, variant string, port int) string {
	switch variant {
	case "serviceentry":
		return fmt.Sprintf(".:%d {\n    bind 127.0.0.1\n    serviceentry global example.internal {\n        manifests %s\n    }\n}\n", port, f.manifests)
	default:
		return fmt.Sprintf(".:%d {\n    bind 127.0.0.1\n    hosts %s global example.internal {\n        no_reverse\n    }\n}\n", port, f.hosts)
	}
}

type result struct {
	qps, cpuPerQuery, p50, p99, rssMiB float64
}

// median takes the median of each figure on its own.
func median(rs []result) result {
	pick := func(get func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return result{
		qps:         pick(func(r result) float64 { return r.qps }),
		cpuPerQuery: pick(func(r result) float64 { return r.cpuPerQuery }),
		p50:         pick(func(r result) float64 { return r.p50 }),
		p99:         pick(func(r result) float64 { return r.p99 }),
		rssMiB:      pick(func(r result) float64 { return r.rssMiB }),
	}
}

// run starts the server for one variant, checks its answers, and measures
// throughput with CPU per query, then latency at a fixed rate, then RSS.
func run(o options, f files, variant string) (result, error) {
	return serve(o, f, variant, func(port int) string { return corefile(f, variant, port) }, checkAnswers)
}

// serve starts the server of a Corefile (made for a port), checks its
// answers with check, and measures it as run says.
func serve(o options, f files, variant string, corefile func(port int) string, check func(addr string, f files) error) (result, error) {
	port, err := freeUDPPort()
	if err != nil {
		return result{}, err
	}
	conf := filepath.Join(o.work, "Corefile."+variant)
	if err := os.WriteFile(conf, []byte(corefile(port)), 0o644); err != nil {
		return result{}, err
	}
	server := exec.Command(o.coredns, "-conf", conf, "-quiet")
	server = pinned(o.serverCPU, server)
	var serverLog bytes.Buffer
	server.Stdout, server.Stderr = &serverLog, &serverLog
	if err := server.Start(); err != nil {
		return result{}, err
	}
	defer func() { _ = server.Process.Kill(); _ = server.Wait() }()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := check(addr, f); err != nil {
		return result{}, fmt.Errorf("%w\n%s", err, serverLog.String())
	}

	pid := server.Process.Pid
	if _, err := dnsperf(o, port, f, "-l", "2"); err != nil { // warm up
		return result{}, err
	}
	cpu0, err := processCPU(pid)
	if err != nil {
		return result{}, err
	}
	out, err := dnsperf(o, port, f, "-l", fmt.Sprint(o.length.Seconds()), "-c", fmt.Sprint(o.clients))
	if err != nil {
		return result{}, err
	}
	cpu1, err := processCPU(pid)
	if err != nil {
		return result{}, err
	}
	var r result
	r.qps, err = statistic(out, `Queries per second:\s+([0-9.]+)`)
	if err != nil {
		return r, err
	}
	completed, err := statistic(out, `Queries completed:\s+([0-9]+)`)
	if err != nil {
		return r, err
	}
	r.cpuPerQuery = float64((cpu1 - cpu0).Microseconds()) / completed

	out, err = dnsperf(o, port, f, "-l", fmt.Sprint(o.latencyLen.Seconds()), "-Q", fmt.Sprint(o.rate), "-v")
	if err != nil {
		return r, err
	}
	if r.p50, r.p99, err = latencies(out); err != nil {
		return r, err
	}
	rss, err := processRSS(pid)
	r.rssMiB = float64(rss) / (1 << 20)
	return r, err
}

// checkAnswers makes sure the server answers the same as the other variant
// would before anything is measured: an A, an AAAA and an absent name.
func checkAnswers(addr string, f files) error {
	client := &dns.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(2 * time.Minute)
	for _, q := range []struct {
		name  string
		qtype uint16
		want  int // answers
	}{{f.sampleV4, dns.TypeA, 1}, {f.sampleV6, dns.TypeAAAA, 1}, {f.sampleV4, dns.TypeAAAA, 0}, {f.absent, dns.TypeA, 0}} {
		for {
			r, _, err := client.Exchange(new(dns.Msg).SetQuestion(dns.Fqdn(q.name), q.qtype), addr)
			if err == nil && len(r.Answer) == q.want {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s %s: want %d answers, got %v (%v)", q.name, dns.TypeToString[q.qtype], q.want, r, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

func dnsperf(o options, port int, f files, args ...string) (string, error) {
	args = append([]string{"-s", "127.0.0.1", "-p", fmt.Sprint(port), "-d", f.queries}, args...)
	cmd := pinned(o.clientCPU, exec.Command("dnsperf", args...))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("dnsperf %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func statistic(out, pattern string) (float64, error) {
	m := regexp.MustCompile(pattern).FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no %q in dnsperf's output:\n%s", pattern, out)
	}
	return strconv.ParseFloat(m[1], 64)
}

// latencies reads dnsperf -v lines ("> NOERROR name A 0.000095") and returns
// p50 and p99 in milliseconds. Lost queries ("> T name A") are not counted.
func latencies(out string) (p50, p99 float64, err error) {
	var ms []float64
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 5 || fields[0] != ">" {
			continue
		}
		s, err := strconv.ParseFloat(fields[4], 64)
		if err != nil {
			continue
		}
		ms = append(ms, s*1000)
	}
	if len(ms) < 100 {
		return 0, 0, fmt.Errorf("only %d latencies in dnsperf -v output", len(ms))
	}
	slices.Sort(ms)
	return ms[len(ms)/2], ms[len(ms)*99/100], nil
}

var pinAllowed *bool

// canPin reports whether chrt -r works here (root or CAP_SYS_NICE).
func canPin() bool {
	if pinAllowed == nil {
		ok := exec.Command("chrt", "-r", "10", "true").Run() == nil
		pinAllowed = &ok
	}
	return *pinAllowed
}

// pinned runs cmd on one CPU, at SCHED_RR priority 10 where allowed.
func pinned(cpu string, cmd *exec.Cmd) *exec.Cmd {
	args := append([]string{"-c", cpu}, cmd.Args...)
	if canPin() {
		args = append([]string{"-r", "10", "taskset"}, args...)
		return exec.Command("chrt", args...)
	}
	return exec.Command("taskset", args...)
}

func freeUDPPort() (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			pc.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port with both TCP and UDP")
}

// processCPU is the user+system CPU time of a process (and of its threads).
func processCPU(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const clockTicks = 100 // USER_HZ
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

func processRSS(pid int) (int64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kib << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
