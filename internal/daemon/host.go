package daemon

import (
	"errors"
	"net"
	"net/netip"
	"slices"

	"github.com/banger/banger/internal/dns"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/vm"
)

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
	srv := d.dns
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
	d.cleanup(srv.Close)
	d.log.Info("serving the vm. zone", "addrs", srv.BoundAddrs())

	ctx := d.engine.Context()
	redirect := 0
	if d.dnsRedirect != nil && slices.Contains(srv.BoundAddrs(), netip.AddrPortFrom(gw, uint16(port)).String()) {
		if err := doctor.Require(ctx, d.r, doctor.OpDNSRedirect); err != nil {
			d.log.Warn("guests and the host cannot reach .vm DNS on the bridge's port 53", "err", err)
		} else if err := d.dnsRedirect.Ensure(ctx); err != nil {
			d.log.Warn("guests and the host cannot reach .vm DNS on the bridge's port 53", "err", err)
		} else {
			redirect = port
			d.log.Info("redirecting the bridge's DNS port 53", "to", port, "table", "ip "+d.dnsRedirect.Table)
		}
	}
	d.mu.Lock()
	d.guestDNS = vm.ServesGateway(srv.BoundAddrs(), gw, redirect)
	d.mu.Unlock()

	if d.cfg.ResolvedSplitDNS && dns.ResolvedActive() {
		if err := doctor.Require(ctx, d.r, doctor.OpSplitDNS); err != nil {
			d.log.Warn("setting up systemd-resolved split DNS for ~vm", "err", err)
			return
		}
		for _, argv := range dns.SplitDNSCommands(d.net.BridgeName(), gw.String()) {
			if _, err := d.r.RunPrivileged(ctx, argv[0], argv[1:]...); err != nil {
				d.log.Warn("setting up systemd-resolved split DNS for ~vm", "err", err)
				break
			}
		}
	}
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
	ip, err := d.store.VMIP(d.engine.Context(), name)
	if err != nil || ip == "" {
		return netip.Addr{}, false
	}
	addr, err := netip.ParseAddr(ip)
	return addr, err == nil
}
