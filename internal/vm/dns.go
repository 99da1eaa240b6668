package vm

import (
	"context"
	"net/netip"

	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/store"
)

// dnsCap tells the guest which resolver to use: banger's own DNS server on
// the bridge when it answers there on port 53 (so guests resolve each other
// by name), else the host's upstream resolvers that a guest can reach.
type dnsCap struct {
	NoCapability
	gateway   func() netip.Addr
	served    func() bool              // banger's DNS answers on the gateway's port 53
	upstreams func() ([]string, error) // the host's resolvers, "ip:port"
}

func (*dnsCap) Name() string { return "dns" }

func (c *dnsCap) Prepare(_ context.Context, _ *store.VM, g *guestconfig.Config) error {
	g.Network.DNS = c.resolvers()
	return nil
}

// resolvers picks at most two resolvers the guest can reach on port 53.
func (c *dnsCap) resolvers() []netip.Addr {
	if c.served() {
		return []netip.Addr{c.gateway()}
	}
	ups, _ := c.upstreams()
	var out []netip.Addr
	for _, u := range ups {
		ap, err := netip.ParseAddrPort(u)
		if err != nil || ap.Port() != 53 || !ap.Addr().Is4() || ap.Addr().IsLoopback() || ap.Addr().IsUnspecified() {
			continue
		}
		out = append(out, ap.Addr())
		if len(out) == 2 {
			break
		}
	}
	return out
}

// ServesGateway reports whether DNS answers on gw's port 53, given the
// addresses the server is bound to and the port a redirect sends port 53
// to (0: none).
func ServesGateway(bound []string, gw netip.Addr, redirect int) bool {
	for _, a := range bound {
		ap, err := netip.ParseAddrPort(a)
		if err != nil || !(ap.Addr() == gw || ap.Addr().IsUnspecified()) {
			continue
		}
		if ap.Port() == 53 || (redirect != 0 && int(ap.Port()) == redirect) {
			return true
		}
	}
	return false
}
