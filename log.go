package serviceentry

import clog "github.com/coredns/coredns/plugin/pkg/log"

var log = clog.NewWithPlugin(pluginName)

// reportSkips logs what one change of one ServiceEntry left out and counts it.
// It runs when the source converts the entry, never per query.
func reportSkips(key string, skips []skip) {
	for _, s := range skips {
		skippedItems.WithLabelValues(s.reason).Inc()
		log.Warningf("ServiceEntry %s: skipped %q: %s", key, s.item, s.reason)
	}
}
