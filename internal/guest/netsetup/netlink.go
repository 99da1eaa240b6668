package netsetup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/guestconfig"
)

// configure applies c's links, address and default route over rtnetlink,
// as "ip link set lo up", "ip link set DEV up", "ip addr replace ADDR/LEN
// dev DEV" and "ip route replace default via GW dev DEV" would, without
// running ip: under TCG each exec costs a few hundred milliseconds of boot.
func configure(c guestconfig.Network) error {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	dev, err := net.InterfaceByName(c.Device)
	if err != nil {
		return fmt.Errorf("finding %s: %w", c.Device, err)
	}
	s, err := openRTNL()
	if err != nil {
		return err
	}
	defer s.close()
	reqs := []request{
		{what: "setting lo up", msg: linkUpMsg(lo.Index)},
		{what: "setting " + c.Device + " up", msg: linkUpMsg(dev.Index)},
		{what: "adding address " + c.Prefix().String() + " to " + c.Device, msg: addrMsg(dev.Index, c.Prefix())},
	}
	if c.Gateway.IsValid() {
		reqs = append(reqs, request{what: "adding default route via " + c.Gateway.String(), msg: defaultRouteMsg(dev.Index, c.Gateway)})
	}
	return s.run(reqs)
}

// request is one rtnetlink request of a sequence.
type request struct {
	what string
	msg  []byte
	// gone is an error that means the request has nothing to do.
	gone unix.Errno
}

// run sends reqs in order, each once the previous one is acknowledged, and
// stops at the first that fails (an error naming what it did).
func (s *rtnl) run(reqs []request) error {
	for _, r := range reqs {
		if err := s.do(r.msg); err != nil && (r.gone == 0 || !errors.Is(err, r.gone)) {
			return fmt.Errorf("%s: %w", r.what, err)
		}
	}
	return nil
}

// reconfigure moves the configured interface c.Device to c's address and
// route and, unless mac is nil, to MAC address mac, over rtnetlink. The
// link stays up when its driver changes the MAC of a running link (virtio
// and veth do): "link set DEV address MAC", the other addresses removed,
// "addr add ADDR/LEN dev DEV", an EUI-64 IPv6 link-local address for the
// new MAC in place of the old one's, "route replace default via GW dev
// DEV". Taking the link down and up costs about 100 ms of a warm create
// under TCG. A driver that refuses (EBUSY), or a link-local address the
// kernel did not make from the MAC, gets the link down while the MAC
// changes, as "ip link set DEV down" ... "ip link set DEV up" would.
func reconfigure(c guestconfig.Network, mac net.HardwareAddr) error {
	return reconfigureLink(c, mac, true)
}

// reconfigureLink is reconfigure; live false takes the link down for any
// MAC change (the path a driver that refuses a live change takes).
func reconfigureLink(c guestconfig.Network, mac net.HardwareAddr, live bool) error {
	dev, err := net.InterfaceByName(c.Device)
	if err != nil {
		return fmt.Errorf("finding %s: %w", c.Device, err)
	}
	old, err := dev.Addrs()
	if err != nil {
		return fmt.Errorf("listing the addresses of %s: %w", c.Device, err)
	}
	s, err := openRTNL()
	if err != nil {
		return err
	}
	defer s.close()
	newMAC := mac != nil && !bytes.Equal(mac, dev.HardwareAddr)
	want := c.Prefix()
	var olds []netip.Prefix
	for _, a := range old {
		if p, ok := prefixOf(a); ok {
			olds = append(olds, p)
		}
	}
	if newMAC && live {
		for _, p := range olds {
			if isLinkLocal6(p) && p != eui64LinkLocal(dev.HardwareAddr) {
				live = false // made some other way: the kernel's own addrconf remakes it on up
			}
		}
	}
	var reqs []request
	down := false
	if newMAC && live {
		err := s.do(linkAddrMsg(dev.Index, mac))
		switch {
		case errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EOPNOTSUPP):
			live = false
		case err != nil:
			return fmt.Errorf("setting the MAC address of %s to %s: %w", c.Device, mac, err)
		}
	}
	if newMAC && !live {
		down = true
		reqs = append(reqs,
			request{what: "setting " + c.Device + " down", msg: linkMsg(dev.Index, false, nil)},
			request{what: "setting the MAC address of " + c.Device + " to " + mac.String(), msg: linkMsg(dev.Index, false, mac)})
	}
	have := false
	for _, p := range olds {
		switch {
		case p == want:
			have = true
			continue
		case isLinkLocal6(p) && !newMAC:
			continue // the MAC's own, which stays
		}
		// Removing a primary address removes its secondaries with it.
		reqs = append(reqs, request{what: "removing address " + p.String() + " from " + c.Device, msg: delAddrMsg(dev.Index, p), gone: unix.EADDRNOTAVAIL})
	}
	if !have {
		reqs = append(reqs, request{what: "adding address " + want.String() + " to " + c.Device, msg: addrMsg(dev.Index, want)})
	}
	if newMAC && !down && hasLinkLocal(olds) {
		ll := eui64LinkLocal(mac)
		reqs = append(reqs, request{what: "adding address " + ll.String() + " to " + c.Device, msg: addrMsg(dev.Index, ll)})
	}
	reqs = append(reqs, request{what: "setting " + c.Device + " up", msg: linkUpMsg(dev.Index)})
	if c.Gateway.IsValid() {
		reqs = append(reqs, request{what: "adding default route via " + c.Gateway.String(), msg: defaultRouteMsg(dev.Index, c.Gateway)})
	}
	return s.run(reqs)
}

// hasLinkLocal says whether ps has an IPv6 link-local address.
func hasLinkLocal(ps []netip.Prefix) bool {
	return slices.ContainsFunc(ps, isLinkLocal6)
}

// isLinkLocal6 says whether p is an IPv6 link-local address (fe80::/10;
// IPv4's 169.254/16 is link-local too, and is not what this is about).
func isLinkLocal6(p netip.Prefix) bool { return p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() }

// eui64LinkLocal is the IPv6 link-local address the kernel makes from an
// Ethernet MAC by default (addr_gen_mode eui64): fe80::/64 with the MAC's
// universal/local bit flipped and ff:fe in its middle.
func eui64LinkLocal(mac net.HardwareAddr) netip.Prefix {
	if len(mac) != 6 {
		return netip.Prefix{}
	}
	a := [16]byte{0: 0xfe, 1: 0x80, 8: mac[0] ^ 2, 9: mac[1], 10: mac[2], 11: 0xff, 12: 0xfe, 13: mac[3], 14: mac[4], 15: mac[5]}
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// prefixOf is the address and prefix length of an interface address.
func prefixOf(a net.Addr) (netip.Prefix, bool) {
	n, ok := a.(*net.IPNet)
	if !ok {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), bits), true
}

// Sizes of the rtnetlink structures (linux/netlink.h, rtnetlink.h,
// if_addr.h, if_link.h).
const (
	sizeofNlmsghdr  = 16
	sizeofIfinfomsg = 16
	sizeofIfaddrmsg = 8
	sizeofRtmsg     = 12
	sizeofRtattr    = 4
)

// message builds one netlink request: header, fixed body, attributes.
type message struct {
	b []byte
}

func newMessage(typ, flags uint16, body []byte) *message {
	m := &message{b: make([]byte, sizeofNlmsghdr, 128)}
	ne := binary.NativeEndian
	ne.PutUint16(m.b[4:], typ)
	ne.PutUint16(m.b[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	m.b = append(m.b, body...)
	return m
}

// attr appends an attribute, padded to four bytes.
func (m *message) attr(typ uint16, data []byte) *message {
	a := make([]byte, sizeofRtattr, sizeofRtattr+len(data)+3)
	binary.NativeEndian.PutUint16(a[0:], uint16(sizeofRtattr+len(data)))
	binary.NativeEndian.PutUint16(a[2:], typ)
	a = append(a, data...)
	for len(a)%4 != 0 {
		a = append(a, 0)
	}
	m.b = append(m.b, a...)
	return m
}

// bytes returns the message with its length filled in (sequence 0: the
// socket sets it when sending).
func (m *message) bytes() []byte {
	binary.NativeEndian.PutUint32(m.b[0:], uint32(len(m.b)))
	return m.b
}

// linkUpMsg is RTM_NEWLINK setting IFF_UP on the interface index.
func linkUpMsg(index int) []byte { return linkMsg(index, true, nil) }

// linkMsg is RTM_NEWLINK setting the interface index up or down and, when
// mac is not nil, giving it MAC address mac.
func linkMsg(index int, up bool, mac net.HardwareAddr) []byte {
	body := make([]byte, sizeofIfinfomsg)
	body[0] = unix.AF_UNSPEC
	ne := binary.NativeEndian
	ne.PutUint32(body[4:], uint32(index))
	if up {
		ne.PutUint32(body[8:], unix.IFF_UP) // flags
	}
	ne.PutUint32(body[12:], unix.IFF_UP) // change mask
	m := newMessage(unix.RTM_NEWLINK, 0, body)
	if mac != nil {
		m.attr(unix.IFLA_ADDRESS, mac)
	}
	return m.bytes()
}

// linkAddrMsg is RTM_NEWLINK giving the interface index MAC address mac
// and leaving its flags as they are.
func linkAddrMsg(index int, mac net.HardwareAddr) []byte {
	body := make([]byte, sizeofIfinfomsg)
	body[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(body[4:], uint32(index))
	return newMessage(unix.RTM_NEWLINK, 0, body).attr(unix.IFLA_ADDRESS, mac).bytes()
}

// delAddrMsg is RTM_DELADDR removing p (IPv4 or IPv6) from the interface
// index.
func delAddrMsg(index int, p netip.Prefix) []byte {
	return newMessage(unix.RTM_DELADDR, 0, ifaddrBody(index, p, unix.RT_SCOPE_UNIVERSE)).attr(unix.IFA_LOCAL, p.Addr().AsSlice()).bytes()
}

// addrMsg is RTM_NEWADDR creating or replacing p on the interface index:
// an IPv4 address of global scope, or an IPv6 link-local one (duplicate
// address detection then runs as for the kernel's own).
func addrMsg(index int, p netip.Prefix) []byte {
	if p.Addr().Is6() {
		return newMessage(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, ifaddrBody(index, p, unix.RT_SCOPE_LINK)).
			attr(unix.IFA_LOCAL, p.Addr().AsSlice()).bytes()
	}
	a := p.Addr().AsSlice()
	return newMessage(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, ifaddrBody(index, p, unix.RT_SCOPE_UNIVERSE)).
		attr(unix.IFA_LOCAL, a).attr(unix.IFA_ADDRESS, a).bytes()
}

// ifaddrBody is the ifaddrmsg of p (its family and prefix length) on the
// interface index, with scope.
func ifaddrBody(index int, p netip.Prefix, scope byte) []byte {
	body := make([]byte, sizeofIfaddrmsg)
	body[0] = unix.AF_INET
	if p.Addr().Is6() {
		body[0] = unix.AF_INET6
	}
	body[1] = byte(p.Bits())
	body[3] = scope
	binary.NativeEndian.PutUint32(body[4:], uint32(index))
	return body
}

// defaultRouteMsg is RTM_NEWROUTE creating or replacing the main table's
// default route via gw out of the interface index.
func defaultRouteMsg(index int, gw netip.Addr) []byte {
	body := make([]byte, sizeofRtmsg)
	body[0] = unix.AF_INET
	body[4] = unix.RT_TABLE_MAIN
	body[5] = unix.RTPROT_BOOT
	body[6] = unix.RT_SCOPE_UNIVERSE
	body[7] = unix.RTN_UNICAST
	g := gw.As4()
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(index))
	return newMessage(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, body).
		attr(unix.RTA_GATEWAY, g[:]).attr(unix.RTA_OIF, oif).bytes()
}

// rtnl is a NETLINK_ROUTE socket that sends one request at a time.
type rtnl struct {
	fd  int
	seq uint32
}

func openRTNL() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening rtnetlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding rtnetlink socket: %w", err)
	}
	return &rtnl{fd: fd}, nil
}

func (s *rtnl) close() { unix.Close(s.fd) }

// do sends msg and waits for the kernel's acknowledgement of it.
func (s *rtnl) do(msg []byte) error {
	s.seq++
	binary.NativeEndian.PutUint32(msg[8:], s.seq)
	if err := unix.Sendto(s.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sending rtnetlink request: %w", err)
	}
	buf := make([]byte, 16<<10)
	for {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading rtnetlink answer: %w", err)
		}
		done, err := ackOf(buf[:n], s.seq)
		if done {
			return err
		}
	}
}

// errBadLength is a netlink message whose length field does not fit.
var errBadLength = errors.New("bad message length")

// ackOf looks for the acknowledgement of request seq in the datagram b: it
// reports whether it was there, and the kernel's error for the request.
func ackOf(b []byte, seq uint32) (bool, error) {
	ne := binary.NativeEndian
	for len(b) >= sizeofNlmsghdr {
		l := int(ne.Uint32(b[0:]))
		if l < sizeofNlmsghdr || l > len(b) {
			return true, fmt.Errorf("reading rtnetlink answer: %w: %d of %d bytes", errBadLength, l, len(b))
		}
		typ, mseq := ne.Uint16(b[4:]), ne.Uint32(b[8:])
		if mseq == seq && typ == unix.NLMSG_ERROR {
			if l < sizeofNlmsghdr+4 {
				return true, errors.New("reading rtnetlink answer: short error message")
			}
			if errno := int32(ne.Uint32(b[sizeofNlmsghdr:])); errno != 0 {
				return true, unix.Errno(-errno)
			}
			return true, nil
		}
		next := (l + 3) &^ 3
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return false, nil
}
