package serviceentry

import (
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	entriesRead = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "entries",
		Help:      "ServiceEntries read from the source that take part in the table.",
	})
	hostsServed = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "hosts",
		Help:      "Names (exact and wildcard) the plugin answers for.",
	})
	skippedItems = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "skipped_items_total",
		Help:      "Hosts, addresses and manifests left out because they are invalid, by reason.",
	}, []string{"reason"})
	rebuilds = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "table_updates_total",
		Help:      "Tables published after a change of the source.",
	})
	rebuildDuration = promauto.NewHistogram(prometheus.HistogramOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "table_update_duration_seconds",
		Help:      "Time to build and publish a table after a change of the source.",
		Buckets:   prometheus.ExponentialBuckets(0.00001, 4, 10),
	})
	lastUpdate = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "last_update_timestamp_seconds",
		Help:      "Unix time of the last successful table update.",
	})
	legacyUnallocated = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "legacy_unallocated_hosts",
		Help:      "Hosts eligible for legacy auto-allocation left without an address (Istio's range is full).",
	})
)

func observeRebuild(start time.Time, entries, hosts int) {
	rebuilds.Inc()
	rebuildDuration.Observe(time.Since(start).Seconds())
	entriesRead.Set(float64(entries))
	hostsServed.Set(float64(hosts))
	lastUpdate.SetToCurrentTime()
}
