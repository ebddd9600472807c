package entry

// LegacyHost is one host of one ServiceEntry as the v1 allocator sees it. host
// is exactly as written in the ServiceEntry (Istio hashes it as is); the same
// namespace/host in two entries takes two slots and shares one address, so the
// entry's name is part of the identity. name is the host as the table keys it.
type LegacyHost struct {
	Namespace string
	Host      string
	Created   int64 // the entry's, in Unix seconds
	Entry     string
	Name      string
	V6        bool // serve the IPv6 address too ("autoallocate legacy dualstack")
}
