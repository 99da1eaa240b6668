package vm

import (
	"log/slog"
	"net/netip"
	"os"

	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/egress"
	"github.com/banger/banger/internal/isolation"
	"github.com/banger/banger/internal/nat"
	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/portfwd"
	"github.com/banger/banger/internal/runner"
)

// Host is what the standard capabilities work with: the owner's network
// devices and tables, its resolver and its known_hosts.
type Host struct {
	Runner runner.Runner
	Log    *slog.Logger
	Net    *network.Manager
	Pool   *network.Pool
	Names  network.Names
	NAT    *nat.Manager
	// Egress enforces NAT VMs' egress policies; nil enforces none.
	Egress    *egress.Manager
	Isolation *isolation.Manager
	Known     *KnownHosts
	Images    *Images
	// DNSServed reports whether banger's DNS answers guests on the bridge
	// address's port 53; Upstreams are the host's resolvers.
	DNSServed func() bool
	Upstreams func() ([]string, error)
	// Shares serves host folders (VirtiofsShares); nil serves none.
	Shares ShareServer
	// PortLimits bound each published port's relay (zero: portfwd's
	// defaults).
	PortLimits portfwd.Limits
}

// NewCapabilities returns the standard capabilities in the order they are
// prepared (they are released in reverse); e runs their background work.
func NewCapabilities(e *Engine, h Host) []Capability {
	if h.Log == nil {
		h.Log = slog.Default()
	}
	refill := func() {
		if h.Pool != nil {
			h.Pool.Refill(e.Context())
		}
	}
	ports := &portsCap{dial: e.cfg.Dial, limits: h.PortLimits, log: h.Log.With("capability", "published ports"), refuse: guestPeer(h.Net)}
	// The relays live in bangerd: they end with the engine (a restarted
	// bangerd listens again, Reconcile).
	e.Go(func() {
		<-e.Context().Done()
		ports.closeAll()
	})
	return []Capability{
		&diskCap{images: h.Images, disks: e.disks},
		&opencodeCap{r: h.Runner, log: h.Log},
		&tapCap{net: h.Net, pool: h.Pool, names: h.Names, uid: os.Getuid(), gid: os.Getgid(), refill: refill, log: h.Log.With("capability", "network device")},
		&dnsCap{gateway: func() netip.Addr { return h.Net.Gateway() }, served: h.DNSServed, upstreams: h.Upstreams},
		&natCap{nat: h.NAT, log: h.Log, haveNFT: haveTools(doctor.OpNAT)},
		&egressCap{m: h.Egress, served: h.DNSServed, haveNFT: haveTools(doctor.OpNAT)},
		&isolationCap{iso: h.Isolation, haveNFT: haveTools(doctor.OpIsolation), spawn: e.Go, ctx: e.Context, log: h.Log},
		&hostKeysCap{known: h.Known},
		&mountsCap{server: h.Shares, agent: e.agentFor, ctx: e.Context, log: h.Log.With("capability", "host folders")},
		// Last prepared, first released: a stop closes the published
		// ports before anything else goes.
		ports,
	}
}

// guestPeer reports whether an address is one of the owner's guests (the
// guests' subnet, less the bridge's own address, which is the host's):
// published ports turn them away, as guest isolation would.
func guestPeer(m *network.Manager) func(netip.Addr) bool {
	if m == nil {
		return nil
	}
	return func(a netip.Addr) bool {
		return m.GuestSubnet().Contains(a) && a != m.Gateway()
	}
}

// SetCapabilities sets the engine's capabilities; call it once, before use.
func (e *Engine) SetCapabilities(cs []Capability) { e.caps = cs }
