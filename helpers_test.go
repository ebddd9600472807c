package serviceentry

import (
	"testing"
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
