package daemon

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"

	"github.com/banger/banger/internal/dns"
	"github.com/banger/banger/internal/doctor"
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

// startDNS serves the .vm zone on the bridge address (for guests and the
// host) and the configured extra addresses. A bangerd that cannot bind port
// 53 (not root) binds another port of the bridge address and banger's own
// nftables table redirects port 53 there. An address that cannot be bound
// is logged and left out; the others are served.
func (d *Daemon) startDNS() {
	addrs := append([]string(nil), d.cfg.DNSListen...)
	gw := d.net.Gateway()
	port := d.cfg.BridgeDNSPort(d.uid)
	if d.cfg.DNSOnBridge && d.bridgeUp() {
		addrs = append(addrs, netip.AddrPortFrom(gw, uint16(port)).String())
	}
	if len(addrs) == 0 {
		return
	}
	srv := &dns.Server{Lookup: d.lookupName, Log: d.log.With("component", "dns")}
	if d.cfg.DNSUpstreamsSet() {
		srv.Upstreams = append([]string{}, d.cfg.DNSUpstreams...)
	}
	for len(addrs) > 0 {
		srv.Addrs = addrs
		err := srv.Start()
		if err == nil {
			break
		}
		var le *dns.ListenError
		if !errors.As(err, &le) {
			d.log.Warn("DNS server for .vm not started", "err", err)
			return
		}
		d.log.Warn("DNS server for .vm: leaving out an address it cannot listen on (port 53 needs root; see dns_listen and dns_port)", "addr", le.Addr, "err", le.Err)
		addrs = slices.DeleteFunc(addrs, func(a string) bool { return a == le.Addr })
	}
	if len(addrs) == 0 {
		d.log.Warn("DNS server for .vm not started: no address could be bound")
		return
	}
	d.dns = srv
	d.log.Info("serving the vm. zone", "addrs", srv.BoundAddrs())

	redirect := 0
	if d.dnsRedirect != nil && slices.Contains(srv.BoundAddrs(), netip.AddrPortFrom(gw, uint16(port)).String()) {
		if err := doctor.Require(d.ctx, d.r, doctor.OpDNSRedirect); err != nil {
			d.log.Warn("guests and the host cannot reach .vm DNS on the bridge's port 53", "err", err)
		} else if err := d.dnsRedirect.Ensure(d.ctx); err != nil {
			d.log.Warn("guests and the host cannot reach .vm DNS on the bridge's port 53", "err", err)
		} else {
			redirect = port
			d.log.Info("redirecting the bridge's DNS port 53", "to", port, "table", "ip "+d.dnsRedirect.Table)
		}
	}
	d.mu.Lock()
	d.guestDNS = servesGateway(srv.BoundAddrs(), gw, redirect)
	d.mu.Unlock()

	if d.cfg.ResolvedSplitDNS && dns.ResolvedActive() {
		if err := doctor.Require(d.ctx, d.r, doctor.OpSplitDNS); err != nil {
			d.log.Warn("setting up systemd-resolved split DNS for ~vm", "err", err)
			return
		}
		for _, argv := range dns.SplitDNSCommands(d.net.BridgeName(), gw.String()) {
			if _, err := d.r.RunPrivileged(d.ctx, argv[0], argv[1:]...); err != nil {
				d.log.Warn("setting up systemd-resolved split DNS for ~vm", "err", err)
				break
			}
		}
	}
}

// servesGateway reports whether DNS answers on gw's port 53, given the
// addresses the server is bound to and the port the redirect sends port 53
// to (0: none).
func servesGateway(bound []string, gw netip.Addr, redirect int) bool {
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
