package serviceentry

// Ready implements ready.Readiness: the plugin is ready once its source has
// completed a full read and the table built from it is published, and, when
// it tells clients apart by their pods, the first list of pods is in.
func (se *ServiceEntry) Ready() bool {
	st := se.store.Load()
	return st != nil && st.table() != nil && (st.clients == nil || st.clients.Synced())
}
