package network

import (
	"net/netip"
	"strconv"
	"strings"
)

// Names are the host-wide names that one bangerd owner uses: its bridge,
// guest subnet, TAP device prefixes and nftables table. They are derived
// from the owner's uid, so root's daemon and each user's never share a
// device, a subnet or a table, and never touch each other's.
type Names struct {
	// Bridge is the host bridge the owner's guests join.
	Bridge string
	// Subnet is the owner's guest subnet; the bridge takes its first address.
	Subnet netip.Prefix
	// TAPPrefix starts the TAP device of each VM.
	TAPPrefix string
	// PoolPrefix starts the idle TAP devices of the pool.
	PoolPrefix string
	// Table names banger's nftables tables (ip, bridge and inet families).
	Table string
}

// NamesFor returns the names of uid's daemon. Root keeps the names banger
// always used (banger0, 172.30.0.0/24, bgtap-, tap-pool-, table banger); a
// user with uid U gets bangerU, 172.30.(U mod 255 + 1).0/24, bgtU-, bgpU- and
// table banger_uU. Two users whose uids collide modulo 255 get the same
// subnet: the second daemon refuses to use a subnet another bridge holds and
// says to set 'subnet' in its config.
func NamesFor(uid int) Names {
	if uid <= 0 {
		return Names{Bridge: DefaultBridge, Subnet: DefaultSubnet, TAPPrefix: TAPPrefix, PoolPrefix: PoolPrefix, Table: "banger"}
	}
	id := strconv.Itoa(uid)
	if len(id) > 6 {
		// Keep room for a VM id in a 15-byte interface name.
		id = strconv.FormatUint(uint64(uid), 36)
	}
	third := byte(uid%255 + 1)
	return Names{
		Bridge:     "banger" + id,
		Subnet:     netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, third, 0}), 24),
		TAPPrefix:  "bgt" + id + "-",
		PoolPrefix: "bgp" + id + "-",
		Table:      "banger_u" + id,
	}
}

// TAPName returns the TAP device name of a VM: TAPPrefix followed by as
// much of the VM id as fits in an interface name (15 bytes), with characters
// ip rejects dropped.
func (n Names) TAPName(vmID string) string {
	var b strings.Builder
	b.WriteString(n.TAPPrefix)
	for _, c := range vmID {
		if b.Len() == maxIfName {
			break
		}
		if c < 0x80 && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b.WriteRune(c)
		}
	}
	return b.String()
}

// Gateway is the bridge's address: the first host address of the subnet.
func (n Names) Gateway() netip.Addr { return n.Subnet.Masked().Addr().Next() }
