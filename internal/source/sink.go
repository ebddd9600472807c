// Package source holds what every source of entries shares: the Sink they
// deliver to. The sources themselves are its subpackages (kube, manifest).
package source

import "github.com/coredns-serviceentry/serviceentry/internal/entry"

// Sink is where a source delivers what it reads: the plugin's store. A source
// calls it from its own goroutines; nothing a source reads goes anywhere else.
type Sink interface {
	// Upsert sets the entry stored under key; nil removes it.
	Upsert(key entry.Key, e *entry.Entry)
	// ReplaceEntries makes the sink hold exactly the entries of all (none
	// nil) among those of namespaces ("" among them: every namespace), as
	// one change, and returns the keys it removed: a relist. It keeps no
	// reference to all.
	ReplaceEntries(namespaces []string, all map[entry.Key]*entry.Entry) []entry.Key
	// ReplaceAll makes the sink hold exactly the entries all and the
	// workloads, as one change.
	ReplaceAll(all map[entry.Key]*entry.Entry, workloads map[entry.Key]*entry.Workload)
	// SetWorkloads sets the workloads stored under the keys of changes (nil
	// removes one) as one change.
	SetWorkloads(changes map[entry.Key]*entry.Workload)
	// ReplaceWorkloads makes the sink hold exactly all of the workloads of
	// kind in namespaces ("" among them: every namespace), as one change: a
	// relist.
	ReplaceWorkloads(kind entry.Kind, namespaces []string, all map[entry.Key]*entry.Workload)
	// BeginFullRead starts a new full read: changes are gathered, and what
	// was published keeps answering, until MarkSynced.
	BeginFullRead()
	// MarkSynced says a full read is complete: from now on changes are
	// published.
	MarkSynced()
	// Skipped reports the items the conversion of an object left out; the
	// sink logs and counts them. object names it with its kind
	// ("ServiceEntry ns/name", "Pod ns/name"). Sources call it when a
	// problem first appears, not again on every update or relist.
	Skipped(object string, skips []entry.Skip)
	// Rejected counts a whole object or file left out for reason; the source
	// logs it with what only it knows (a file and document number).
	Rejected(reason string)
}
