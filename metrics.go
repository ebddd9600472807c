package serviceentry

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/coredns-serviceentry/serviceentry/internal/entry"
	"github.com/coredns-serviceentry/serviceentry/internal/reach"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// The table counters are process-wide, as CoreDNS's own are: they only ever
// grow, so a reload does not make them wrong. What a source skipped is
// counted by the source (skipTally) and reported with its instances' labels.
var (
	tableUpdates = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "table_updates_total",
		Help:      "Tables published after a change of the source.",
	})
	tableUpdateDuration = promauto.NewHistogram(prometheus.HistogramOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "table_update_duration_seconds",
		Help:      "Time to build and publish a table after a change of the source.",
		Buckets:   prometheus.ExponentialBuckets(0.00001, 4, 10),
	})
	answersTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "answers_total",
		Help:      "Served names answered by the plugin, by the class of the client: what it routes (mesh, declared_only, outside).",
	}, []string{"server", "zones", "class"})
	responsesTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "responses_total",
		Help: "Queries for names the plugin looked up, by what it did: answered, searchpath (an expansion answered), " +
			"nodata, nxdomain, passed_on (handed to the next plugin).",
	}, []string{"server", "zones", "result"})
)

// result is what the plugin did with a query for a name it looked up.
type result int

const (
	resultAnswered   result = iota // records for the name asked
	resultSearchpath               // records for a search-path expansion, after its CNAME
	resultNoData                   // NOERROR without records
	resultNXDomain                 // the name does not exist (a zone the plugin is the authority of)
	resultPassedOn                 // handed to the next plugin, which answers
	results
)

var resultNames = [results]string{"answered", "searchpath", "nodata", "nxdomain", "passed_on"}

// resultOf is what a reply the plugin wrote says of the name asked.
func resultOf(m *dns.Msg) result {
	switch {
	case m.Rcode == dns.RcodeNameError:
		return resultNXDomain
	case len(m.Answer) == 0:
		return resultNoData
	}
	return resultAnswered
}

// queryCounters holds one server's counters, one per class of client and
// one per result, so that counting a query is an atomic add or two: looking
// a series up by its label values hashes three strings on every query.
type queryCounters struct {
	server   string
	byClass  [reach.Mesh + 1]prometheus.Counter
	byResult [results]prometheus.Counter
}

// answer counts a served name answered for a client of class, with what the
// reply says.
func (c *queryCounters) answer(class reach.Class, r result) {
	c.byClass[class].Inc()
	c.byResult[r].Inc()
}

// counted returns the counters of the server that asked. An instance answers
// for the servers of its block (one per address it listens on), so the list
// is short and a server's counters are added to it once, copy on write.
func (se *ServiceEntry) counted(ctx context.Context) *queryCounters {
	server := metrics.WithServer(ctx)
	if list := se.counters.Load(); list != nil {
		for _, c := range *list {
			if c.server == server {
				return c
			}
		}
	}
	se.countersMu.Lock()
	defer se.countersMu.Unlock()
	var list []*queryCounters
	if old := se.counters.Load(); old != nil {
		list = *old
		for _, c := range list {
			if c.server == server {
				return c
			}
		}
	}
	c := &queryCounters{server: server}
	for class := range c.byClass {
		c.byClass[class] = answersTotal.WithLabelValues(server, se.zonesLabel, reach.Class(class).String())
	}
	for r := range c.byResult {
		c.byResult[r] = responsesTotal.WithLabelValues(server, se.zonesLabel, resultNames[r])
	}
	list = append(slices.Clip(list), c)
	se.counters.Store(&list)
	return c
}

// skipTally counts, by reason, the items one source left out. A source's
// count is reported with the server and zones of the instances answering from
// it (a reload that keeps the source keeps counting; a new source starts from
// zero, which Prometheus reads as a counter reset).
type skipTally struct {
	mu sync.Mutex
	n  map[string]uint64
}

// report logs and counts what the conversion of one object left out.
// Sources call it when a problem first appears in an entry (an add, or a
// change that brings a new problem), never per query or per relist.
func (t *skipTally) report(object string, skips []entry.Skip) {
	for _, s := range skips {
		t.add(s.Reason)
		log.Warningf("%s: skipped %q: %s", object, s.Item, s.Reason)
	}
}

// add counts one item left out for reason; the caller logs it.
func (t *skipTally) add(reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == nil {
		t.n = make(map[string]uint64)
	}
	t.n[reason]++
}

// counts returns a copy of the counts by reason.
func (t *skipTally) counts() map[string]uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.n)
}

func observeTableUpdate(start time.Time) {
	tableUpdates.Inc()
	tableUpdateDuration.Observe(time.Since(start).Seconds())
}

// The gauges describe what one plugin instance serves, so they carry CoreDNS's
// server and zones labels and are read from the instances running when
// Prometheus scrapes: an instance that stops (a reload, a removed block)
// leaves no stale series behind.
var (
	instanceLabels = []string{"server", "zones"}
	syncedDesc     = prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "synced"),
		"1 when the table is served (the source completed a full read), else 0.", instanceLabels, nil)
	entriesDesc = prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "entries"),
		"ServiceEntries read from the source that take part in the table.", instanceLabels, nil)
	hostsDesc = prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "hosts"),
		"Names (exact and wildcard) the plugin answers for.", instanceLabels, nil)
	lastUpdateDesc = prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "last_update_timestamp_seconds"),
		"Unix time of the last table update.", instanceLabels, nil)
	skippedDesc = prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "skipped_items_total"),
		"Hosts, addresses, ports, objects and manifests the source left out because they are invalid, by reason.",
		append(slices.Clone(instanceLabels), "reason"), nil)
	legacyUnallocatedDesc = prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "legacy_unallocated_hosts"),
		"Hosts eligible for legacy auto-allocation left without an address (Istio's range is full).", instanceLabels, nil)
	clientPodsDesc = prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "client_pods"),
		"Pods read to tell what each client routes, by class (mesh, declared_only, outside).",
		append(slices.Clone(instanceLabels), "class"), nil)
)

func init() { prometheus.MustRegister(instanceCollector{running}) }

// instanceCollector reports the gauges of every running plugin instance.
type instanceCollector struct{ sources *sourceRegistry }

func (c instanceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{syncedDesc, entriesDesc, hostsDesc, lastUpdateDesc, legacyUnallocatedDesc, skippedDesc, clientPodsDesc} {
		ch <- d
	}
}

func (c instanceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c.sources.users() {
		for _, server := range u.servers {
			labels := []string{server, u.zones}
			if st := u.handler.store.Load(); st != nil {
				for reason, n := range st.skipped.counts() {
					ch <- prometheus.MustNewConstMetric(skippedDesc, prometheus.CounterValue, float64(n), server, u.zones, reason)
				}
				if st.clients != nil {
					classes := st.clients.Classes()
					for _, class := range []reach.Class{reach.Mesh, reach.DeclaredOnly, reach.Outside} {
						ch <- prometheus.MustNewConstMetric(clientPodsDesc, prometheus.GaugeValue, float64(classes[class]), server, u.zones, class.String())
					}
				}
			}
			tbl := u.handler.table()
			if tbl == nil {
				ch <- prometheus.MustNewConstMetric(syncedDesc, prometheus.GaugeValue, 0, labels...)
				continue
			}
			ch <- prometheus.MustNewConstMetric(syncedDesc, prometheus.GaugeValue, 1, labels...)
			ch <- prometheus.MustNewConstMetric(entriesDesc, prometheus.GaugeValue, float64(tbl.Entries), labels...)
			ch <- prometheus.MustNewConstMetric(hostsDesc, prometheus.GaugeValue, float64(tbl.Hosts), labels...)
			ch <- prometheus.MustNewConstMetric(lastUpdateDesc, prometheus.GaugeValue, float64(tbl.Published.UnixNano())/1e9, labels...)
			ch <- prometheus.MustNewConstMetric(legacyUnallocatedDesc, prometheus.GaugeValue, float64(tbl.LegacyUnallocated), labels...)
		}
	}
}
