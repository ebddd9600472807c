package serviceentry

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
)

// A headless entry (entry.Entry.Headless) answers with the addresses of its
// endpoints, as Istio's name table does (BuildNameTable,
// pkg/dns/server/name_table.go): those of the workloads its selector picks
// in its own namespace, else those of spec.endpoints. The store keeps the
// workloads by namespace and the selecting entries by namespace, so that a
// workload's change dirties only the hosts of the entries that select it,
// before or after the change.

// SetWorkloads sets the workloads stored under the keys of changes (nil
// removes one) and publishes once.
func (s *store) SetWorkloads(changes map[entry.Key]*entry.Workload) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, w := range changes {
		s.setWorkloadLocked(key, w)
	}
	s.publishLocked()
}

// ReplaceWorkloads makes the store hold exactly all of the workloads of kind
// in namespace ("" for every namespace), and publishes once.
func (s *store) ReplaceWorkloads(kind entry.Kind, namespace string, all map[entry.Key]*entry.Workload) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replaceWorkloadsLocked(func(k entry.Key) bool { return k.Kind == kind }, namespace, all)
	s.publishLocked()
}

// replaceWorkloadsLocked removes the workloads of namespace ("" for all)
// that of says are replaced and all does not hold, then sets all.
func (s *store) replaceWorkloadsLocked(of func(entry.Key) bool, namespace string, all map[entry.Key]*entry.Workload) {
	for ns, held := range s.workloads {
		if namespace != "" && ns != namespace {
			continue
		}
		for key := range held {
			if _, kept := all[key]; !kept && of(key) {
				s.setWorkloadLocked(key, nil)
			}
		}
	}
	for key, w := range all {
		s.setWorkloadLocked(key, w)
	}
}

// setWorkloadLocked stores w under key (nil removes it). Only a workload with
// addresses is kept: one without can never be answered with, and a pod
// becoming ready arrives as a change like any other.
func (s *store) setWorkloadLocked(key entry.Key, w *entry.Workload) {
	ns, _, _ := strings.Cut(key.Name, "/")
	if w != nil && len(w.Addrs) == 0 {
		w = nil
	}
	held := s.workloads[ns]
	old := held[key]
	if old == nil && w == nil {
		return
	}
	if old == nil || w == nil || old.Labels != w.Labels || !slices.Equal(old.Addrs, w.Addrs) {
		for _, e := range s.selectors[ns] {
			if old != nil && old.Labels.Selects(e.Selector) || w != nil && w.Labels.Selects(e.Selector) {
				s.touchHeadless(e)
			}
		}
	}
	if w == nil {
		delete(held, key)
		if len(held) == 0 {
			delete(s.workloads, ns)
		}
		return
	}
	if held == nil {
		held = make(map[entry.Key]*entry.Workload)
		s.workloads[ns] = held
	}
	held[key] = w
}

// selectFor records a headless entry with a selector; unselect forgets it.
// Either way its cached addresses go.
func (s *store) selectFor(e *entry.Entry) {
	if !e.Headless {
		return
	}
	delete(s.endpoints, e)
	if e.Selector != nil {
		s.selectors[e.Namespace] = append(s.selectors[e.Namespace], e)
	}
}

func (s *store) unselect(e *entry.Entry) {
	if !e.Headless {
		return
	}
	delete(s.endpoints, e)
	if e.Selector == nil {
		return
	}
	rest := slices.DeleteFunc(s.selectors[e.Namespace], func(x *entry.Entry) bool { return x == e })
	if len(rest) == 0 {
		delete(s.selectors, e.Namespace)
	} else {
		s.selectors[e.Namespace] = rest
	}
}

// touchHeadless drops e's cached addresses and rebuilds its hosts at the
// next publish.
func (s *store) touchHeadless(e *entry.Entry) {
	delete(s.endpoints, e)
	for _, h := range e.Hosts {
		s.dirty[h.Name] = true
	}
}

// headlessAddrs returns the addresses of a headless entry's endpoints:
// those of the workloads its selector picks in its namespace (Istio's
// ServiceEntry controller selects workloads of the entry's namespace only),
// pods before WorkloadEntries and each kind by name, or, without a selector,
// the IPs of spec.endpoints in order; without duplicates. Istio ignores
// spec.endpoints when there is a selector.
func (s *store) headlessAddrs(e *entry.Entry) []netip.Addr {
	if addrs, ok := s.endpoints[e]; ok {
		return addrs
	}
	var addrs []netip.Addr
	if e.Selector == nil {
		for _, ep := range e.Endpoints {
			if ep.IP.IsValid() {
				addrs = append(addrs, ep.IP)
			}
		}
	} else {
		var picked []*entry.Workload
		for _, w := range s.workloads[e.Namespace] {
			if w.Labels.Selects(e.Selector) {
				picked = append(picked, w)
			}
		}
		slices.SortFunc(picked, func(a, b *entry.Workload) int {
			return cmp.Or(cmp.Compare(b.Key.Kind, a.Key.Kind), cmp.Compare(a.Key.Name, b.Key.Name))
		})
		seen := make(map[netip.Addr]bool, len(picked))
		for _, w := range picked {
			for _, ip := range w.Addrs {
				if !seen[ip] {
					seen[ip] = true
					addrs = append(addrs, ip)
				}
			}
		}
	}
	s.endpoints[e] = addrs
	return addrs
}
