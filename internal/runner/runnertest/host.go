package runnertest

import (
	"errors"
	"fmt"
	"net/netip"
)

// Host returns a runner that answers as a host where bridge is up with
// gateway (an address with its prefix, such as 172.30.0.1/24) and nothing
// else of banger's exists: no other links, no nftables tables, images
// without an opencode unit. Every other ip, nft and sysctl command
// succeeds, and so do e2fsck and resize2fs (disk.Grow's checks). It is the host of tests that drive the VM engine without root.
func Host(bridge, gateway string) *Runner {
	gw := netip.MustParsePrefix(gateway)
	dev := fmt.Sprintf(`[{"ifname":%q,"flags":["UP"],"linkinfo":{"info_kind":"bridge"},"addr_info":[{"family":"inet","local":%q,"prefixlen":%d}]}]`,
		bridge, gw.Addr().String(), gw.Bits())
	r := &Runner{}
	r.On("ip -j -d addr show dev", func(argv []string) ([]byte, error) {
		if name := argv[len(argv)-1]; name != bridge {
			return nil, fmt.Errorf("ip: exit status 1: Device %q does not exist", name)
		}
		return []byte(dev), nil
	})
	r.Reply("ip -j -d link show", Reply{Out: "[]"})
	r.Reply("ip -j addr show", Reply{Out: "[]"})
	r.OK("ip", "nft", "sysctl", "e2fsck", "resize2fs")
	r.Reply("nft -j list table", Reply{Err: errors.New("nft: exit status 1: Error: No such file or directory")})
	r.Reply("debugfs", Reply{Out: ""})
	return r
}
