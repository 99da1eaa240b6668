// Package peer finds which local user owns the other end of a TCP connection, so a loopback server can tell its callers apart.
package peer

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrNotLocal means no socket of this network namespace is the other end of
// the connection: the peer is on another host, or it has gone.
var ErrNotLocal = errors.New("the other end is not a socket of this host")

// UID returns the uid that owns the socket at the other end of a TCP
// connection, given the connection's two ends as its server sees them:
// local is the server's address, remote the client's. It asks the kernel
// through sock_diag netlink (one exact lookup, cheap however many sockets
// exist) and falls back to reading /proc/net/tcp and tcp6 where netlink
// is not available. A peer socket in a state that carries no owner (for
// example TIME_WAIT, which the kernel reports as uid 0) is ErrNotLocal,
// never an owner.
func UID(local, remote netip.AddrPort) (int, error) {
	local, remote = unmap(local), unmap(remote)
	if !local.IsValid() || !remote.IsValid() {
		return -1, fmt.Errorf("finding the owner of %s: invalid address", remote)
	}
	uid, err := diagUID(local, remote)
	if err == nil || errors.Is(err, ErrNotLocal) {
		return uid, err
	}
	puid, perr := procUID("/proc/net", local, remote)
	if perr != nil && !errors.Is(perr, ErrNotLocal) {
		return -1, errors.Join(err, perr)
	}
	return puid, perr
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// TCP states (include/net/tcp_states.h).
const (
	stateEstablished = 1
	stateFinWait1    = 4
	stateFinWait2    = 5
	stateCloseWait   = 8
	stateLastAck     = 9
	stateClosing     = 11
)

// owned reports whether a socket in TCP state st is a full socket whose uid
// means something: the client end of a connection the server still holds
// is in one of these. TIME_WAIT and request sockets report uid 0.
func owned(st int) bool {
	switch st {
	case stateEstablished, stateFinWait1, stateFinWait2, stateCloseWait, stateLastAck, stateClosing:
		return true
	}
	return false
}
