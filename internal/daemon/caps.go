package daemon

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/dns"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/opencode"
	"github.com/banger/banger/internal/store"
)

// newCapabilities lists the daemon's capabilities in the order they are
// prepared; they are released in reverse.
func (d *Daemon) newCapabilities() capabilities {
	return capabilities{
		&diskCap{d: d},
		&opencodeCap{d: d},
		&tapCap{d: d},
		&dnsCap{
			gateway:   d.net.Gateway,
			served:    d.guestDNSServed,
			upstreams: d.dnsUpstreams,
		},
		&natCap{d: d},
		&isolationCap{d: d},
		&hostKeysCap{d: d},
	}
}

// diskCap gives each VM a copy-on-write clone of its image's rootfs, grown
// to the asked size, and its own /root disk cloned from the image's
// work-seed. A stop keeps both; a delete removes them.
type diskCap struct {
	noCapability
	d *Daemon
}

func (*diskCap) Name() string { return "disks" }

func (c *diskCap) Create(ctx context.Context, vm *store.VM, p *createPlan) error {
	if err := os.MkdirAll(vm.Dir, 0o700); err != nil {
		return err
	}
	root := filepath.Join(vm.Dir, "rootfs.ext4")
	if _, err := disk.Clone(p.image.Rootfs, root); err != nil {
		return err
	}
	if size, _ := disk.Size(root); p.diskSize > size {
		if err := disk.Grow(ctx, c.d.r, root, p.diskSize); err != nil {
			return err
		}
	}
	seed, err := c.d.seedFor(ctx, p.bundle, p.image)
	if err != nil {
		return err
	}
	_, err = disk.Clone(seed, filepath.Join(vm.Dir, "work.ext4"))
	return err
}

func (*diskCap) Destroy(_ context.Context, vm *store.VM) error {
	return os.RemoveAll(vm.Dir)
}

// tapCap gives each running VM a TAP device on the bridge (a pooled one when
// the pool has one ready) and the guest its static address.
type tapCap struct {
	noCapability
	d *Daemon
}

func (*tapCap) Name() string { return "network device" }

func (c *tapCap) Prepare(ctx context.Context, vm *store.VM, g *guestconfig.Config) error {
	d := c.d
	if err := d.net.EnsureBridge(ctx); err != nil {
		return err
	}
	vm.TAP = d.names.TAPName(vm.ID)
	if tap := d.pool.Take(); tap != "" {
		vm.TAP = tap
		d.pool.Refill(d.ctx)
	}
	// Idempotent: for a pooled device this re-checks that it still exists
	// and is attached to the bridge.
	if err := d.net.CreateTAP(ctx, vm.TAP, os.Getuid(), os.Getgid()); err != nil {
		return err
	}
	if err := d.store.UpdateVM(ctx, vm); err != nil {
		return err
	}
	ip, err := netip.ParseAddr(vm.IP)
	if err != nil {
		return fmt.Errorf("address of %s on record: %w", vm.Name, err)
	}
	g.Network.Client = ip
	g.Network.Gateway = d.net.Gateway()
	g.Network.PrefixLen = d.net.Subnet.Bits()
	g.Network.Hostname = vm.Name
	g.Network.Device = "eth0"
	g.Network.Autoconf = "off"
	return nil
}

func (c *tapCap) Release(ctx context.Context, vm *store.VM) error {
	err := c.d.net.DeleteTAP(ctx, vm.TAP)
	c.d.pool.Refill(c.d.ctx)
	return err
}

// Reconcile removes TAP devices no live hypervisor uses, then brings up the
// bridge and the pool, adopting idle pool devices.
func (c *tapCap) Reconcile(ctx context.Context, vms []store.VM) error {
	d := c.d
	inUse := map[string]bool{}
	for _, vm := range vms {
		if vm.PID != 0 {
			inUse[vm.TAP] = true
		}
	}
	taps, err := d.net.ListTAPs(ctx, d.names.TAPPrefix, d.uid)
	if err != nil {
		d.log.Warn("listing tap devices", "err", err)
	}
	for _, t := range taps {
		if !inUse[t] {
			d.log.Info("removing orphan tap device", "tap", t)
			d.net.DeleteTAP(ctx, t)
		}
	}
	if err := d.net.EnsureBridge(ctx); err != nil {
		return fmt.Errorf("bridge not ready, VMs cannot start until it is: %w", err)
	}
	// With the pool off, Adopt removes leftover pool devices.
	if err := d.pool.Adopt(ctx, inUse); err != nil {
		return fmt.Errorf("adopting tap pool: %w", err)
	}
	d.pool.Refill(d.ctx)
	return nil
}

// dnsCap tells the guest which resolver to use: banger's own DNS server on
// the bridge when it serves there (so guests resolve each other by name),
// else the host's upstream resolvers that a guest can reach.
type dnsCap struct {
	noCapability
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

// guestDNSServed reports whether banger's DNS answers guests on the
// gateway's port 53: bound there, or bound on another port of the gateway
// with the redirect in place.
func (d *Daemon) guestDNSServed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.guestDNS
}

// dnsUpstreams are the resolvers banger forwards to: the configured ones, or
// the host's.
func (d *Daemon) dnsUpstreams() ([]string, error) {
	if d.cfg.DNSUpstreamsSet() {
		var out []string
		for _, u := range d.cfg.DNSUpstreams {
			if _, _, err := net.SplitHostPort(u); err != nil {
				u = net.JoinHostPort(u, "53")
			}
			out = append(out, u)
		}
		return out, nil
	}
	return dns.DefaultUpstreams()
}

// natCap masquerades the outbound traffic of VMs with NAT on, through rules
// in banger's own nftables table.
type natCap struct {
	noCapability
	d *Daemon
}

func (*natCap) Name() string { return "nat" }

func (c *natCap) Prepare(ctx context.Context, vm *store.VM, _ *guestconfig.Config) error {
	if !vm.NAT {
		return nil
	}
	return c.d.applyNAT(ctx, vm)
}

func (c *natCap) Release(ctx context.Context, vm *store.VM) error {
	if !vm.NAT && doctor.RequireTools(doctor.OpNAT) != nil {
		return nil // no nft: there can be no rule to remove
	}
	return c.d.nat.Disable(ctx, vm.ID)
}

// Reconcile makes banger's table hold exactly the rules of the running VMs
// that have NAT on.
func (c *natCap) Reconcile(ctx context.Context, vms []store.VM) error {
	want := map[string]netip.Addr{}
	for _, vm := range vms {
		if vm.NAT && vm.PID != 0 && (vm.State == StateRunning || vm.State == StateStarting) {
			if ip, err := netip.ParseAddr(vm.IP); err == nil {
				want[vm.ID] = ip
			}
		}
	}
	if len(want) == 0 && doctor.RequireTools(doctor.OpNAT) != nil {
		return nil // no nft and nothing needs it
	}
	if err := c.d.nat.Reconcile(ctx, want); err != nil {
		return err
	}
	if len(want) > 0 {
		if _, err := c.d.nat.EnsureForwarding(ctx); err != nil {
			return err
		}
	}
	return nil
}

// hostKeysCap pins each guest's SSH host keys, as reported by its agent, in
// banger's known_hosts under NAME.vm, and unpins them on delete.
type hostKeysCap struct {
	noCapability
	d *Daemon
}

func (*hostKeysCap) Name() string { return "host keys" }

func (c *hostKeysCap) Ready(_ context.Context, vm *store.VM, h *agent.Health) error {
	return c.d.pinHostKeys(vm.Name, h.SSHHostKeys)
}

func (c *hostKeysCap) Destroy(_ context.Context, vm *store.VM) error {
	return c.d.unpinHostKeys(vm.Name)
}

// Reconcile drops pins of names no VM has any more.
func (c *hostKeysCap) Reconcile(_ context.Context, vms []store.VM) error {
	names := map[string]bool{}
	for _, vm := range vms {
		names[vm.Name+".vm"] = true
	}
	return c.d.prunePins(names)
}

// isolationCap keeps guests off each other's private ports (the opencode
// server's 4096 by default) with banger's nftables bridge table; the host
// still reaches them. The table is shared by all VMs, so it is set up when
// the daemon starts.
type isolationCap struct {
	noCapability
	d *Daemon
}

func (*isolationCap) Name() string { return "guest isolation" }

// Prepare puts the tables back at every boot, in case something flushed
// the host's ruleset since the daemon started. The nft call (~15 ms here)
// runs beside the boot, off the create's critical path: the tables are in
// place long before the guest's userland runs.
func (c *isolationCap) Prepare(_ context.Context, vm *store.VM, _ *guestconfig.Config) error {
	if len(c.d.isolation.Ports) == 0 || doctor.RequireTools(doctor.OpIsolation) != nil {
		return nil // off, or no nft: doctor and the start-up log say so
	}
	name := vm.Name
	c.d.goTracked(func() {
		if err := c.d.isolation.Ensure(c.d.ctx); err != nil {
			c.d.log.Warn("re-applying guest isolation", "vm", name, "err", err)
		}
	})
	return nil
}

func (c *isolationCap) Reconcile(ctx context.Context, _ []store.VM) error {
	m := c.d.isolation
	if len(m.Ports) > 0 {
		if err := doctor.RequireTools(doctor.OpIsolation); err != nil {
			return fmt.Errorf("guests can reach each other's ports %v: %w", m.Ports, err)
		}
	} else if doctor.RequireTools(doctor.OpIsolation) != nil {
		return nil // off, and no nft to remove a table with
	}
	return m.Ensure(ctx)
}

// opencodeCap gives each VM's opencode server (docker image, port 4096) its
// own password: the server runs commands for whoever talks to it, and every
// local user of the host can reach the guest. For images whose opencode
// unit reads opencode.EnvFile, the password is written there, into
// the VM's own root disk (no mount: debugfs), and kept beside the disks for
// GET /v1/vms/{name}/opencode. The unit does not start without the file,
// so a server never runs open by mistake. Clients use basic auth, user
// "opencode".
type opencodeCap struct {
	noCapability
	d *Daemon
}

// opencodePasswordFile holds the password in the VM's directory.
const opencodePasswordFile = "opencode-password"

func (*opencodeCap) Name() string { return "opencode password" }

func (c *opencodeCap) Create(ctx context.Context, vm *store.VM, p *createPlan) error {
	root := filepath.Join(vm.Dir, "rootfs.ext4")
	unit, err := ext4.ReadFile(ctx, c.d.r, root, opencode.SystemdUnit)
	if err != nil {
		return err
	}
	if !strings.Contains(string(unit), "EnvironmentFile="+opencode.EnvFile) {
		if len(unit) > 0 {
			c.d.log.Info("the image's opencode server takes no per-VM password; rebuild the image to get one", "vm", vm.Name, "image", p.image.Name)
		}
		return nil
	}
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	pw := base64.RawURLEncoding.EncodeToString(b)
	env := []byte("# Written by bangerd: the opencode server's basic-auth password (user opencode).\nOPENCODE_SERVER_PASSWORD=" + pw + "\n")
	if err := ext4.PutFile(ctx, c.d.r, root, opencode.EnvFile, env, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(vm.Dir, opencodePasswordFile), []byte(pw+"\n"), 0o600)
}

// opencodePassword returns vm's opencode password, or "" when its image
// runs no opencode server that takes one.
func opencodePassword(vm *store.VM) string {
	b, err := os.ReadFile(filepath.Join(vm.Dir, opencodePasswordFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
