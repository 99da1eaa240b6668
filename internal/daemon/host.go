package daemon

import (
	"context"
	"net"
	"net/netip"

	"github.com/banger/banger/internal/dns"
	"github.com/banger/banger/internal/store"
)

// setupHost brings up what VMs share on the host: the bridge, banger's NAT
// table, the TAP pool and the DNS server, through the capabilities'
// Reconcile hooks. Each part that fails is logged and reported by 'banger
// doctor'; the daemon still serves.
func (d *Daemon) setupHost(ctx context.Context) {
	defer d.startDNS()
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		d.log.Warn("listing VMs to reconcile the host", "err", err)
		return
	}
	if err := d.caps.reconcile(ctx, vms); err != nil {
		d.log.Warn("reconciling the host", "err", err)
	}
	if err := d.reconcileImages(ctx); err != nil {
		d.log.Warn("reconciling image files", "err", err)
	}
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

// release runs every capability's Release hook for vm, after its
// hypervisor ended: its TAP device and NAT rules go.
func (d *Daemon) release(ctx context.Context, vm *store.VM) error {
	return d.caps.release(ctx, vm)
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
