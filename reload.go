package serviceentry

import (
	"fmt"
	"slices"
	"sync"
	"weak"
)

// A Corefile reload builds a new caddy instance, runs its OnStartup hooks, and
// only when it is serving runs the old instance's OnShutdown hooks; a reload
// that fails after our OnStartup never runs the new instance's OnShutdown, only
// the old instance's OnRestartFailed. Sources are therefore shared through
// running: a reload whose source configuration is unchanged takes over the
// running source and its table (no relist, no unsynced gap, no second copy of
// the entries), a changed one starts a new source while the old instance keeps
// answering, and a source stops when no live instance holds it. This is the
// plugin's one piece of process state besides its metrics: nothing else
// survives from one caddy instance to the next.
var running = &sourceRegistry{byKey: make(map[string]*sharedSource)}

// instance stands for one caddy instance (one load of the Corefile); all the
// serviceentry blocks of that load share it. Only its address matters, and
// pointers to zero-size values may all be equal, hence the byte.
type instance struct{ _ byte }

type instanceKey struct{}

// instanceOf returns c's instance, creating it for the first block.
func instanceOf(c interface {
	Get(key any) any
	Set(key, val any)
}) *instance {
	if inst, ok := c.Get(instanceKey{}).(*instance); ok {
		return inst
	}
	inst := new(instance)
	c.Set(instanceKey{}, inst)
	return inst
}

type sourceRegistry struct {
	mu    sync.Mutex
	byKey map[string]*sharedSource
	// registered are the plugin blocks answering from a shared source, in
	// the order they started; the metrics and successor read them.
	registered []*user
	// retired are the handlers of instances that shut down normally since
	// the last acquire or release, of blocks no live instance has (the
	// others hand their queries on: see successor). Should CoreDNS keep an
	// old instance's handlers reachable, as it did those of failed reloads
	// (see releaseAllBut), they would keep their store, and a replaced
	// source's table, with them; those still reachable let go at the next
	// acquire or release, when no packet can reach them any more. Weak
	// pointers: the list itself keeps nothing alive.
	retired []weak.Pointer[ServiceEntry]
}

// sharedSource is one running source and the instances holding it.
type sharedSource struct {
	store   *store
	src     entrySource
	holders map[*instance]bool
}

// user is one plugin block answering from a shared source.
type user struct {
	inst    *instance
	handler *ServiceEntry
	servers []string // CoreDNS's server label values of the block
	zones   string
}

// acquire returns the store of the source configured by key for u, building
// and starting the source if no live instance runs it yet.
func (r *sourceRegistry) acquire(u *user, key string, build func() (entrySource, *store, error)) (*store, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.detachRetiredLocked()
	shared := r.byKey[key]
	if shared == nil {
		src, st, err := build()
		if err != nil {
			return nil, err
		}
		if err := src.Start(); err != nil {
			src.Stop()
			st.close()
			return nil, err
		}
		shared = &sharedSource{store: st, src: src, holders: make(map[*instance]bool)}
		r.byKey[key] = shared
	}
	shared.holders[u.inst] = true
	r.registered = append(r.registered, u)
	return shared.store, nil
}

// release drops everything inst holds and stops the sources no live instance
// holds any more.
func (r *sourceRegistry) release(inst *instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.detachRetiredLocked()
	r.releaseLocked(func(i *instance) bool { return i == inst }, false)
}

// releaseAllBut drops everything held by instances other than inst: after a
// failed reload only the running instance (inst) is live. The failed
// instance's handlers never served, yet CoreDNS keeps some of them reachable
// (a replaced source's table would outlive it through a failed reload that
// had held it), so they let go of their store too.
func (r *sourceRegistry) releaseAllBut(inst *instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.detachRetiredLocked()
	r.releaseLocked(func(i *instance) bool { return i != inst }, true)
}

// releaseLocked drops the holdings of the instances gone reports. CoreDNS's
// old servers may still answer a packet or two after the reload has returned
// (and one replaced before it began serving, for good: see successor). So a
// handler of an instance that stopped normally lets go of its store at once
// only when a live block takes its place and answers for it; one without
// keeps its store until the next acquire or release (see retired).
func (r *sourceRegistry) releaseLocked(gone func(*instance) bool, detach bool) {
	var released []*user
	r.registered = slices.DeleteFunc(r.registered, func(u *user) bool {
		if gone(u.inst) {
			released = append(released, u)
			return true
		}
		return false
	})
	for _, u := range released {
		if detach || r.successorLocked(u) != nil {
			u.handler.store.Store(nil)
		} else {
			r.retired = append(r.retired, weak.Make(u.handler))
		}
	}
	for key, shared := range r.byKey {
		for inst := range shared.holders {
			if gone(inst) {
				delete(shared.holders, inst)
			}
		}
		if len(shared.holders) == 0 {
			shared.src.Stop()
			shared.store.close()
			delete(r.byKey, key)
		}
	}
}

// successor returns the live handler of the block u stood for: the newest
// registered one with u's servers and zones, nil if none. CoreDNS stops only
// the servers whose serving goroutines have begun (dnsserver.Server.Stop
// skips a listener whose Serve has not set its server yet, and Serve does not
// check for a stop), so a server of an instance replaced sooner reads its
// socket beside its successor's as long as the process lives. Its handlers,
// let go of their store, hand what they are asked to the live block, whose
// chain from the plugin on is the live configuration's.
func (r *sourceRegistry) successor(u *user) *ServiceEntry {
	if u == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.successorLocked(u)
}

func (r *sourceRegistry) successorLocked(u *user) *ServiceEntry {
	for _, v := range slices.Backward(r.registered) {
		if v.zones == u.zones && slices.Equal(v.servers, u.servers) {
			return v.handler
		}
	}
	return nil
}

func (r *sourceRegistry) detachRetiredLocked() {
	for _, w := range r.retired {
		if se := w.Value(); se != nil {
			se.store.Store(nil)
		}
	}
	r.retired = nil
}

// users returns the running plugin blocks, one per server and zones: while a
// reload overlaps two instances, the newer block stands for both.
func (r *sourceRegistry) users() []*user {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := make(map[string]bool)
	var out []*user
	for _, u := range slices.Backward(r.registered) {
		id := fmt.Sprint(u.servers, u.zones)
		if !seen[id] {
			seen[id] = true
			out = append(out, u)
		}
	}
	return out
}
