package serviceentry

import (
	"context"

	"github.com/coredns/coredns/plugin/pkg/upstream"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// maxChase bounds how many aliases of ours one query follows through the
// server again: an endpoint host that is itself a ServiceEntry host of an
// alias could otherwise send a query round in a loop.
const maxChase = 8

// chaseDepth is the context key counting the aliases a query has followed.
type chaseDepth struct{}

// chase appends to m, whose last record is a CNAME to target, the target's
// records as the whole server answers them for this client (CoreDNS's
// upstream lookup, as the kubernetes plugin resolves an ExternalName): a stub
// resolver expects the chain resolved. The target's NXDOMAIN or NODATA, with
// its SOA, becomes the reply's. When the server cannot be asked (no server
// in the context, or too many aliases followed) the CNAME goes alone, for the
// resolver to follow.
func (se *ServiceEntry) chase(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, m *dns.Msg, target string) {
	depth, _ := ctx.Value(chaseDepth{}).(int)
	if depth >= maxChase {
		return
	}
	ctx = context.WithValue(ctx, chaseDepth{}, depth+1)
	resp, err := upstream.New().Lookup(ctx, request.Request{W: w, Req: r}, target, r.Question[0].Qtype)
	if err != nil || resp == nil {
		return
	}
	m.Answer = append(m.Answer, resp.Answer...)
	if resp.Rcode == dns.RcodeNameError || len(resp.Answer) == 0 {
		m.Rcode = resp.Rcode
		m.Ns = resp.Ns
	}
}
