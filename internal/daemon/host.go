package daemon

import (
	"context"
	"net"
	"net/netip"

	"github.com/banger/banger/internal/dns"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/store"
)

// setupHost brings up what VMs share on the host: the bridge, banger's NAT
// table, the TAP pool and the DNS server. Each part that fails is logged and
// reported by 'banger doctor'; the daemon still serves.
func (d *Daemon) setupHost(ctx context.Context, inUseTAPs map[string]bool) {
	defer d.startDNS()
	if err := d.net.EnsureBridge(ctx); err != nil {
		d.log.Warn("bridge not ready; VMs cannot start until it is", "err", err)
		return
	}
	if err := d.reconcileNAT(ctx); err != nil {
		d.log.Warn("reconciling NAT rules", "err", err)
	}
	// With the pool off, Adopt removes leftover pool devices.
	if err := d.pool.Adopt(ctx, inUseTAPs); err != nil {
		d.log.Warn("adopting tap pool", "err", err)
	}
	d.pool.Refill(d.ctx)
}

// reconcileNAT makes banger's nftables table hold exactly the rules of the
// running VMs that have NAT on.
func (d *Daemon) reconcileNAT(ctx context.Context) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	want := map[string]netip.Addr{}
	for _, vm := range vms {
		if vm.NAT && (vm.State == StateRunning || vm.State == StateStarting) {
			if ip, err := netip.ParseAddr(vm.IP); err == nil {
				want[vm.ID] = ip
			}
		}
	}
	if len(want) == 0 && doctor.RequireTools(doctor.OpNAT) != nil {
		return nil // no nft and nothing needs it
	}
	if err := d.nat.Reconcile(ctx, want); err != nil {
		return err
	}
	if len(want) > 0 {
		if _, err := d.nat.EnsureForwarding(ctx); err != nil {
			return err
		}
	}
	return nil
}

// applyNAT adds or removes vm's NAT rules to match vm.NAT.
func (d *Daemon) applyNAT(ctx context.Context, vm *store.VM) error {
	if !vm.NAT {
		return d.nat.Disable(ctx, vm.ID)
	}
	ip, err := netip.ParseAddr(vm.IP)
	if err != nil {
		return err
	}
	if err := d.nat.Enable(ctx, vm.ID, ip); err != nil {
		return err
	}
	if changed, err := d.nat.EnsureForwarding(ctx); err != nil {
		return err
	} else if changed {
		d.log.Info("enabled net.ipv4.ip_forward for NAT guests")
	}
	return nil
}

// releaseNetwork removes vm's TAP and NAT rules (after its hypervisor ended).
func (d *Daemon) releaseNetwork(ctx context.Context, vm *store.VM) error {
	if err := d.nat.Disable(ctx, vm.ID); err != nil {
		d.log.Warn("removing NAT rules", "vm", vm.Name, "err", err)
	}
	err := d.net.DeleteTAP(ctx, vm.TAP)
	d.pool.Refill(d.ctx)
	return err
}

// startDNS serves the .vm zone on the configured addresses and the bridge.
func (d *Daemon) startDNS() {
	addrs := append([]string(nil), d.cfg.DNSListen...)
	if len(addrs) == 0 {
		return
	}
	gw := d.net.Gateway().String()
	if d.cfg.DNSOnBridge && d.bridgeUp() {
		port := "53"
		if _, p, err := net.SplitHostPort(addrs[0]); err == nil {
			port = p
		}
		addrs = append(addrs, net.JoinHostPort(gw, port))
	}
	srv := &dns.Server{Addrs: addrs, Lookup: d.lookupName, Log: d.log.With("component", "dns")}
	if d.cfg.DNSUpstreamsSet() {
		srv.Upstreams = append([]string{}, d.cfg.DNSUpstreams...)
	}
	if err := srv.Start(); err != nil {
		d.log.Warn("DNS server for .vm not started", "err", err)
		return
	}
	d.dns = srv
	d.log.Info("serving the vm. zone", "addrs", srv.BoundAddrs())
	if d.cfg.ResolvedSplitDNS && dns.ResolvedActive() {
		for _, argv := range dns.SplitDNSCommands(d.net.BridgeName(), gw) {
			if _, err := d.r.RunPrivileged(d.ctx, argv[0], argv[1:]...); err != nil {
				d.log.Warn("setting up systemd-resolved split DNS for ~vm", "err", err)
				break
			}
		}
	}
}

// bridgeUp reports whether the bridge exists with its gateway address.
func (d *Daemon) bridgeUp() bool {
	ifc, err := net.InterfaceByName(d.net.BridgeName())
	if err != nil {
		return false
	}
	addrs, _ := ifc.Addrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == d.net.Gateway() {
			return true
		}
	}
	return false
}

// lookupName answers <name>.vm with the VM's address.
func (d *Daemon) lookupName(name string) (netip.Addr, bool) {
	vms, err := d.store.ListVMs(d.ctx)
	if err != nil {
		return netip.Addr{}, false
	}
	for _, vm := range vms {
		if vm.Name == name {
			ip, err := netip.ParseAddr(vm.IP)
			return ip, err == nil
		}
	}
	return netip.Addr{}, false
}
