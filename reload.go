package serviceentry

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
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
	// the order they started; the metrics and successor read them without
	// the lock, so the slice is replaced, never changed, under mu.
	registered atomic.Pointer[[]*user]
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
	view    string // the block's view, where view plugins share servers and zones
}

// sameBlock reports whether u and v are the same block of two loads of the
// Corefile.
func (u *user) sameBlock(v *user) bool {
	return u.zones == v.zones && u.view == v.view && slices.Equal(u.servers, v.servers)
}

// acquire makes u's handler answer from the source configured by key,
// building and starting the source if no live instance runs it yet, and
// returns its store. A registered handler always has its store.
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
	u.handler.attach(shared.store)
	r.setBlocksLocked(append(slices.Clone(r.blocks()), u))
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

// releaseLocked drops the holdings of the instances gone reports. A server
// of an old instance may still be handed a query after the reload has
// returned: beyond CoreDNS's grace time for stopping it, and, if it was
// replaced before it began serving, for good (see successor). So a handler of
// an instance that stopped normally lets go of its store at once only when a
// live block takes its place and answers for it; one without keeps its store
// until the next acquire or release (see retired).
func (r *sourceRegistry) releaseLocked(gone func(*instance) bool, detach bool) {
	var released []*user
	r.setBlocksLocked(slices.DeleteFunc(slices.Clone(r.blocks()), func(u *user) bool {
		if gone(u.inst) {
			released = append(released, u)
			return true
		}
		return false
	}))
	for _, u := range released {
		if detach || r.successor(u) != nil {
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

// successor returns the live handler of the block u stood for, nil if none:
// the oldest registered one with the same servers, zones and view. The
// releasing instance is out of the list by then, so the oldest is the
// serving instance's, never one still starting (whose source may not be read
// yet, and whose reload may still fail).
//
// CoreDNS stops only the servers whose serving goroutines have begun
// (dnsserver.Server.Stop skips a listener whose Serve has not set its server
// yet, and miekg/dns's shutdown one not marked started), so a server of an
// instance replaced sooner reads its socket beside its successor's as long as
// the process lives. Its handlers, let go of their store, hand what they are
// asked to the live block, whose chain from the plugin on is the live
// configuration's. They ask from the query path: the list is read without
// the lock, which acquire holds while a source reads all its manifests.
func (r *sourceRegistry) successor(u *user) *ServiceEntry {
	if u == nil {
		return nil
	}
	for _, v := range r.blocks() {
		if v.sameBlock(u) {
			return v.handler
		}
	}
	return nil
}

// blocks returns the registered blocks; the slice is never changed.
func (r *sourceRegistry) blocks() []*user {
	if b := r.registered.Load(); b != nil {
		return *b
	}
	return nil
}

func (r *sourceRegistry) setBlocksLocked(b []*user) { r.registered.Store(&b) }

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
	seen := make(map[string]bool)
	var out []*user
	for _, u := range slices.Backward(r.blocks()) {
		id := fmt.Sprint(u.servers, u.zones)
		if !seen[id] {
			seen[id] = true
			out = append(out, u)
		}
	}
	return out
}
