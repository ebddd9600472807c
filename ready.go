package serviceentry

// Ready implements ready.Readiness: the plugin is ready once its source has
// completed a full read and the table built from it is published.
func (se *ServiceEntry) Ready() bool { return se.table() != nil }
