// Package passthrough is the query mix of the pass-through benchmarks
// (bench/load's -mode passthrough and test/integration's
// BenchmarkPassThroughChain): what the pods of a cluster ask, none of it a
// ServiceEntry host, so that every query is one the plugin hands on.
package passthrough

import (
	"bytes"
	"fmt"
	"math/rand/v2"
)

// Namespaces is how many namespaces the asking pods are in: team-0 … team-19.
const Namespaces = 20

// APIs is how many external names of each vendor the mix asks.
const APIs = 200

// External is the external name of api at vendor.
func External(api, vendor int) string { return fmt.Sprintf("api-%d.vendor-%d.com", api, vendor) }

// Queries is a dnsperf query file of about 4 MiB: what pods of Namespaces
// namespaces with ndots:5 and the search list <ns>.svc.cluster.local
// svc.cluster.local cluster.local ask, A and AAAA, none of it a ServiceEntry
// host: a Service of their namespace by its short name (found at the first
// expansion), one of another namespace by <svc>.<ns> (at the second), and an
// external name (every expansion, then the name itself). Services are
// svc-0 … svc-<services-1> in each namespace, external names those of
// vendors 0 … vendors-1; seed fixes the draw.
func Queries(seed uint64, services, vendors int) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	var b bytes.Buffer
	for b.Len() < 4<<20 {
		ns := fmt.Sprintf("team-%d", r.IntN(Namespaces))
		var names []string
		switch p := r.IntN(3); p {
		case 0:
			names = []string{fmt.Sprintf("svc-%d.%s.svc.cluster.local", r.IntN(services), ns)}
		case 1:
			other := fmt.Sprintf("svc-%d.team-%d", r.IntN(services), r.IntN(Namespaces))
			names = []string{other + "." + ns + ".svc.cluster.local", other + ".svc.cluster.local"}
		default:
			ext := External(r.IntN(APIs), r.IntN(vendors))
			names = []string{ext + "." + ns + ".svc.cluster.local", ext + ".svc.cluster.local", ext + ".cluster.local", ext}
		}
		for _, name := range names {
			fmt.Fprintf(&b, "%s A\n%s AAAA\n", name, name)
		}
	}
	return b.Bytes()
}
