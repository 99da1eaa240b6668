package peer

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Sizes and offsets of include/uapi/linux/inet_diag.h.
const (
	nlmsgHeaderLen = 16
	sockIDLen      = 48 // struct inet_diag_sockid
	diagReqLen     = 8 + sockIDLen
	diagMsgLen     = 4 + sockIDLen + 20 // struct inet_diag_msg
	diagMsgUID     = 4 + sockIDLen + 12
)

// diagUID asks sock_diag for the socket whose local end is remote and
// whose peer is local: the client end of the server's connection.
func diagUID(local, remote netip.AddrPort) (int, error) {
	family := unix.AF_INET6
	if remote.Addr().Is4() {
		// The kernel's IPv4 lookup also finds IPv6 sockets talking
		// through v4-mapped addresses.
		family = unix.AF_INET
	}
	return diagLookup(family, local, remote)
}

func diagLookup(family int, local, remote netip.AddrPort) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return -1, fmt.Errorf("opening sock_diag netlink socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return -1, fmt.Errorf("setting sock_diag timeout: %w", err)
	}
	req := diagRequest(family, remote, local)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return -1, fmt.Errorf("asking sock_diag for %s: %w", remote, err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return -1, fmt.Errorf("reading sock_diag's answer for %s: %w", remote, err)
	}
	return parseDiagReply(buf[:n], remote, local)
}

// diagRequest encodes an exact SOCK_DIAG_BY_FAMILY lookup of the TCP socket
// whose local end is src and whose remote end is dst.
func diagRequest(family int, src, dst netip.AddrPort) []byte {
	b := make([]byte, nlmsgHeaderLen+diagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(b[8:], 1) // sequence
	r := b[nlmsgHeaderLen:]
	r[0] = byte(family)
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], ^uint32(0)) // every state; the exact lookup ignores it
	putSockID(r[8:], family, src, dst)
	return b
}

func putSockID(id []byte, family int, src, dst netip.AddrPort) {
	binary.BigEndian.PutUint16(id[0:], src.Port())
	binary.BigEndian.PutUint16(id[2:], dst.Port())
	putAddr(id[4:20], family, src.Addr())
	putAddr(id[20:36], family, dst.Addr())
	// idiag_if stays 0; the cookie is INET_DIAG_NOCOOKIE.
	binary.NativeEndian.PutUint32(id[40:], ^uint32(0))
	binary.NativeEndian.PutUint32(id[44:], ^uint32(0))
}

func putAddr(dst []byte, family int, a netip.Addr) {
	if family == unix.AF_INET {
		v4 := a.As4()
		copy(dst, v4[:])
		return
	}
	v6 := a.As16() // an IPv4 address becomes v4-mapped
	copy(dst, v6[:])
}

// parseDiagReply reads the answer to an exact lookup of the socket at src
// talking to dst: its owner, or ErrNotLocal.
func parseDiagReply(b []byte, src, dst netip.AddrPort) (int, error) {
	ne := binary.NativeEndian
	if len(b) < nlmsgHeaderLen {
		return -1, fmt.Errorf("reading sock_diag's answer for %s: %d bytes is too short", src, len(b))
	}
	n := int(ne.Uint32(b[0:]))
	if n < nlmsgHeaderLen || n > len(b) {
		return -1, fmt.Errorf("reading sock_diag's answer for %s: bad message length %d", src, n)
	}
	body := b[nlmsgHeaderLen:n]
	switch typ := ne.Uint16(b[4:]); typ {
	case unix.NLMSG_ERROR:
		if len(body) < 4 {
			return -1, fmt.Errorf("reading sock_diag's answer for %s: short error message", src)
		}
		errno := unix.Errno(-int32(ne.Uint32(body)))
		if errno == unix.ENOENT {
			return -1, ErrNotLocal
		}
		return -1, fmt.Errorf("asking sock_diag for %s: %w", src, errno)
	case unix.SOCK_DIAG_BY_FAMILY:
		if len(body) < diagMsgLen {
			return -1, fmt.Errorf("reading sock_diag's answer for %s: %d-byte message is too short", src, len(body))
		}
		id := body[4 : 4+sockIDLen]
		if binary.BigEndian.Uint16(id[0:]) != src.Port() || binary.BigEndian.Uint16(id[2:]) != dst.Port() {
			return -1, fmt.Errorf("reading sock_diag's answer for %s: it describes another socket", src)
		}
		if !owned(int(body[1])) {
			return -1, ErrNotLocal
		}
		return int(ne.Uint32(body[diagMsgUID:])), nil
	default:
		return -1, fmt.Errorf("reading sock_diag's answer for %s: unexpected message type %d", src, typ)
	}
}
