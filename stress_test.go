package serviceentry

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/source/manifest"
	"github.com/coredns-serviceentry/serviceentry/internal/table"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
)

// Stress entries: entry k at generation g declares a-k and b-k with
// 10.g.k/256.k%256 and fd00::g:k:1, fd00::g:k:2, so that any answer tells
// which generation of which entry it came from.
func stressEntry(k, g int) *entry.Entry {
	addrs := []netip.Addr{
		netip.AddrFrom4([4]byte{10, byte(g), byte(k >> 8), byte(k)}),
		netip.MustParseAddr(fmt.Sprintf("fd00::%x:%x:1", g, k)),
		netip.MustParseAddr(fmt.Sprintf("fd00::%x:%x:2", g, k)),
	}
	return &entry.Entry{Key: entry.ServiceEntryKey(fmt.Sprintf("ns/e%d", k)),
		Hosts: []entry.Host{entry.NewHost(fmt.Sprintf("a-%d.stress.internal", k), addrs...),
			entry.NewHost(fmt.Sprintf("b-%d.stress.internal", k), addrs...)}}
}

// generationOf checks that an answer is whole (its IPv4 and IPv6 of one
// generation of entry k) and returns that generation.
func generationOf(ans *table.Answer, k int) (int, error) {
	if ans.A().Len() != 1 || ans.AAAA().Len() != 2 {
		return 0, fmt.Errorf("answer of entry %d has %d A and %d AAAA records", k, ans.A().Len(), ans.AAAA().Len())
	}
	v4 := ans.A().At(0)
	g := int(v4[1])
	if int(v4[2])<<8|int(v4[3]) != k {
		return 0, fmt.Errorf("entry %d answers %v", k, v4)
	}
	for i := range ans.AAAA().Len() {
		if want := net.ParseIP(fmt.Sprintf("fd00::%x:%x:%d", g, k, i+1)); !ans.AAAA().At(i).Equal(want) {
			return 0, fmt.Errorf("entry %d: half-applied answer: %v", k, table.AddressesOf(ans))
		}
	}
	return g, nil
}

// TestStressStore: writers apply thousands of adds, updates and deletes while
// readers query table snapshots and the handler. Every answer seen must be
// whole, both names of an entry must come from the same generation in one
// snapshot (an entry is never half-applied), and the final table must equal a
// fresh build of the final entries.
func TestStressStore(t *testing.T) {
	const keys, writers, readers, opsPerWriter = 400, 4, 6, 3000
	st := newStore(false)
	st.MarkSynced()
	se := (&ServiceEntry{Zones: []string{"stress.internal."}, TTL: 30}).attach(st)

	final := make([]*entry.Entry, keys) // written by writer k%writers only
	var stop atomic.Bool
	var readerErr atomic.Value
	var observed atomic.Int64
	var wg sync.WaitGroup
	for r := range readers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 7))
			for !stop.Load() {
				k := rng.IntN(keys)
				tbl := st.table()
				a := lookupIn(tbl, fmt.Sprintf("a-%d.stress.internal", k))
				b := lookupIn(tbl, fmt.Sprintf("b-%d.stress.internal", k))
				if (a == nil) != (b == nil) {
					readerErr.Store(fmt.Errorf("entry %d half-applied: a %v, b %v", k, a, b))
					return
				}
				if a != nil {
					ga, errA := generationOf(a, k)
					gb, errB := generationOf(b, k)
					if errA != nil || errB != nil || ga != gb {
						readerErr.Store(fmt.Errorf("entry %d: generations %d and %d (%v %v)", k, ga, gb, errA, errB))
						return
					}
					observed.Add(1)
				}
				if rng.IntN(8) == 0 { // and through the handler, which builds replies from shared answers
					m := new(dns.Msg).SetQuestion(fmt.Sprintf("A-%d.Stress.Internal.", k), dns.TypeAAAA)
					rec := dnstest.NewRecorder(&test.ResponseWriter{})
					if _, err := se.ServeDNS(context.Background(), rec, m); err != nil {
						readerErr.Store(err)
						return
					}
					if n := len(rec.Msg.Answer); n != 0 && n != 2 {
						readerErr.Store(fmt.Errorf("entry %d: %d AAAA records", k, n))
						return
					}
				}
			}
		})
	}
	var writersWG sync.WaitGroup
	for w := range writers {
		writersWG.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			for op := range opsPerWriter {
				k := w + writers*rng.IntN(keys/writers)
				var e *entry.Entry
				if rng.IntN(4) != 0 {
					e = stressEntry(k, op%250+1)
				}
				st.Upsert(entry.ServiceEntryKey(fmt.Sprintf("ns/e%d", k)), e)
				final[k] = e
			}
		})
	}
	writersWG.Wait()
	stop.Store(true)
	wg.Wait()
	if err, _ := readerErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d whole answers observed during %d changes", observed.Load(), writers*opsPerWriter)

	fresh := newStore(false)
	all := make(map[entry.Key]*entry.Entry)
	for _, e := range final {
		if e != nil {
			all[e.Key] = e
		}
	}
	fresh.ReplaceAll(all, nil)
	fresh.MarkSynced()
	assertSameStores(t, fresh, st)
}

// TestStressLegacy: the same churn with auto-allocated addresses, faster than
// the recomputation gap (coalesced recomputations under way): no snapshot ever
// gives one IPv4 to two hosts, and once the churn stops the table settles on
// exactly the allocation a fresh build of the final entries gives.
func TestStressLegacy(t *testing.T) {
	entries := legacyParsed(t, 300, entry.Options{AutoAllocate: entry.AutoAllocateLegacy})
	st := newStore(true)
	st.minReallocGap = 5 * time.Millisecond
	st.MarkSynced()
	defer st.close()
	var stop atomic.Bool
	var readerErr atomic.Value
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for !stop.Load() {
				tbl := st.table()
				owner := make(map[string]string)
				for _, e := range entries {
					name := e.Hosts[0].Name
					if ans := lookupIn(tbl, name); ans != nil {
						ip := ans.A().At(0).String()
						if other, dup := owner[ip]; dup {
							readerErr.Store(fmt.Errorf("%s and %s share %s in one table", other, name, ip))
							return
						}
						owner[ip] = name
					}
				}
			}
		})
	}
	present := churnLegacy(st, entries, 5, 3000)
	stop.Store(true)
	wg.Wait()
	if err, _ := readerErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	fresh := newStore(true)
	fresh.ReplaceAll(present, nil)
	fresh.MarkSynced()
	eventuallyWithin(t, 5*time.Second, "the allocation settles on the fresh one", func() bool {
		return sameStores(fresh, st) == ""
	})
}

// TestStressManifests: files rewritten (atomically, as ConfigMap volumes and
// editors that rename do) under a watching source while readers query: every
// snapshot holds whole entries, both names of an entry of one generation, and
// the final table equals a fresh parse of the final files.
func TestStressManifests(t *testing.T) {
	const files, perFile = 8, 10
	dir := t.TempDir()
	write := func(f, g int) {
		var b strings.Builder
		for i := range perFile {
			k := f*perFile + i
			fmt.Fprintf(&b, "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e%d, namespace: ns}\n"+
				"spec: {hosts: [a-%d.stress.internal, b-%d.stress.internal], addresses: [10.%d.%d.%d, 'fd00::%x:%x:1', 'fd00::%x:%x:2']}\n",
				k, k, k, g, k>>8, k&0xff, g, k, g, k)
		}
		path := filepath.Join(dir, fmt.Sprintf("f%d.yaml", f))
		if err := os.WriteFile(path+".tmp", []byte(b.String()), 0o644); err != nil {
			t.Error(err)
			return
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Error(err)
		}
	}
	for f := range files {
		write(f, 1)
	}
	st := newStore(false)
	counted := &countingSink{store: st}
	startManifestsInto(t, counted, dir)

	var stop atomic.Bool
	var readerErr atomic.Value
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			tbl := st.table()
			for k := range files * perFile {
				a, b := lookupIn(tbl, fmt.Sprintf("a-%d.stress.internal", k)), lookupIn(tbl, fmt.Sprintf("b-%d.stress.internal", k))
				if a == nil || b == nil {
					readerErr.Store(fmt.Errorf("entry %d missing while its file is rewritten", k))
					return
				}
				ga, errA := generationOf(a, k)
				gb, errB := generationOf(b, k)
				if errA != nil || errB != nil || ga != gb {
					readerErr.Store(fmt.Errorf("entry %d: generations %d/%d (%v %v)", k, ga, gb, errA, errB))
					return
				}
			}
		}
	})
	// Rewrite generations both faster than the settle interval (not read
	// until a later one is stable) and slower (read one by one).
	for g := 2; g < 2+12; g++ {
		for f := range files {
			write(f, g*11%250+1)
		}
		if g%2 == 0 {
			time.Sleep(manifest.Settle / 4)
		} else {
			time.Sleep(3 * manifest.Settle)
		}
	}
	stop.Store(true)
	wg.Wait()
	if err, _ := readerErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for f := range files {
		data, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("f%d.yaml", f)))
		if err != nil {
			t.Fatal(err)
		}
		want.Write(data)
	}
	fresh := storeFrom(t, entry.Options{}, want.String())
	eventually(t, "the source settles on the final files", func() bool {
		return sameStores(fresh, st) == ""
	})
	t.Logf("%d tables published", counted.replaced.Load())
}

func assertSameStores(t *testing.T, want, got *store) {
	t.Helper()
	if diff := sameStores(want, got); diff != "" {
		t.Fatal(diff)
	}
}

// sameStores compares the tables of two stores name by name; "" when they
// answer alike.
func sameStores(want, got *store) string {
	if w, g := want.table().Hosts, got.table().Hosts; w != g {
		return fmt.Sprintf("%d names, want %d", g, w)
	}
	for name, ans := range servedNames(want) {
		if g := lookupIn(got.table(), name); !sameAnswer(g, ans) {
			return fmt.Sprintf("%s: got %v, want %v", name, g, ans)
		}
	}
	return ""
}

// countingSink is a store that counts the full sets of entries a source
// hands it.
type countingSink struct {
	*store
	replaced atomic.Int64
}

func (c *countingSink) ReplaceAll(all map[entry.Key]*entry.Entry, workloads map[entry.Key]*entry.Workload) {
	c.replaced.Add(1)
	c.store.ReplaceAll(all, workloads)
}
