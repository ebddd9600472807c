package serviceentry

import (
	"math/rand/v2"
	"testing"
	"time"
)

// storeFrom builds a synced store from ServiceEntry manifests, as the
// manifests source would.
func storeFrom(t testing.TB, opts convertOptions, yamlDocs string) *store {
	t.Helper()
	entries, err := parseManifests([]byte(yamlDocs), opts)
	if err != nil {
		t.Fatalf("parsing test manifests: %v", err)
	}
	st := newStore(opts.autoAllocate == autoAllocateLegacy)
	all := make(map[string]*entry, len(entries))
	for _, e := range entries {
		all[e.key] = e
	}
	st.replaceAll(all)
	st.markSynced()
	return st
}

// startManifests runs a manifests source over paths into a new store, stopped
// when the test ends.
func startManifests(t *testing.T, paths ...string) (*store, *manifestSource) {
	t.Helper()
	st := newStore(false)
	src := newManifestSource(paths, convertOptions{}, st)
	if err := src.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.stop)
	return st, src
}

// eventuallyWithin polls cond until it holds or timeout passes.
func eventuallyWithin(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// churnLegacy adds and removes random entries ops times (a third of the
// changes to a present entry remove it) and returns the entries left.
func churnLegacy(st *store, entries []*entry, seed uint64, ops int) map[string]*entry {
	r := rand.New(rand.NewPCG(seed, seed))
	present := make(map[string]*entry)
	for range ops {
		e := entries[r.IntN(len(entries))]
		if present[e.key] != nil && r.IntN(3) == 0 {
			st.upsert(e.key, nil)
			delete(present, e.key)
		} else {
			st.upsert(e.key, e)
			present[e.key] = e
		}
	}
	return present
}
