package entry

// Port is one valid port of a ServiceEntry, as SRV names it:
// _<name>._<proto>.<host>.
type Port struct {
	Name   string // an RFC 1123 label, lower case as Istio requires
	Number uint16
	UDP    bool // protocol UDP; every other is served as _tcp
}

// Proto is the port's protocol label in SRV names.
func (p Port) Proto() string {
	if p.UDP {
		return "udp"
	}
	return "tcp"
}
