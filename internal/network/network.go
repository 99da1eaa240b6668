// Package network manages the host bridge and the per-VM TAP devices with iproute2.
package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/banger/banger/internal/runner"
)

// Defaults used when Manager fields are zero.
const (
	DefaultBridge = "banger0"
	// TAPPrefix starts every TAP name TAPName returns, so leftovers can be found by ListTAPs.
	TAPPrefix = "bgtap-"
	// maxIfName is IFNAMSIZ (16) minus the terminating NUL.
	maxIfName = 15
)

// DefaultSubnet is the guest subnet used when Manager.Subnet is zero.
var DefaultSubnet = netip.MustParsePrefix("172.30.0.0/24")

// Manager creates the bridge and TAP devices guests attach to.
type Manager struct {
	R      runner.Runner // nil means runner.Default
	Bridge string        // empty means DefaultBridge
	Subnet netip.Prefix  // zero means DefaultSubnet; must be IPv4

	// bridgeMu serializes EnsureBridge: its check-then-add must not race
	// with a concurrent create.
	bridgeMu sync.Mutex
}

func (m *Manager) runner() runner.Runner {
	if m.R == nil {
		return runner.Default
	}
	return m.R
}

// BridgeName returns the bridge device name in use.
func (m *Manager) BridgeName() string {
	if m.Bridge == "" {
		return DefaultBridge
	}
	return m.Bridge
}

// GuestSubnet returns the guest subnet in use, masked.
func (m *Manager) GuestSubnet() netip.Prefix {
	if !m.Subnet.IsValid() {
		return DefaultSubnet
	}
	return m.Subnet.Masked()
}

// Gateway returns the bridge's address: the first host address of the subnet.
func (m *Manager) Gateway() netip.Addr {
	return m.GuestSubnet().Addr().Next()
}

// link is the part of `ip -j -d link show` output banger reads.
type link struct {
	Name     string   `json:"ifname"`
	Flags    []string `json:"flags"`
	Master   string   `json:"master"`
	LinkInfo struct {
		Kind string `json:"info_kind"`
		Data struct {
			Type  string `json:"type"`
			User  string `json:"user"`
			Group string `json:"group"`
		} `json:"info_data"`
	} `json:"linkinfo"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
	} `json:"addr_info"`
}

func (l *link) up() bool { return slices.Contains(l.Flags, "UP") }

func (l *link) isTAP() bool { return l.LinkInfo.Kind == "tun" && l.LinkInfo.Data.Type == "tap" }

// notExist reports whether err is iproute2 saying the device does not exist.
func notExist(err error) bool {
	s := err.Error()
	return strings.Contains(s, "does not exist") || strings.Contains(s, "Cannot find device")
}

// getLink returns the named link, or nil when it does not exist.
func (m *Manager) getLink(ctx context.Context, name string) (*link, error) {
	out, err := m.runner().Run(ctx, "ip", "-j", "-d", "addr", "show", "dev", name)
	if err != nil {
		if notExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var links []link
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("parsing ip output for %s: %w", name, err)
	}
	if len(links) == 0 {
		return nil, nil
	}
	return &links[0], nil
}

// EnsureBridge creates the bridge if needed, gives it the gateway address and brings it up.
// Each step is skipped when already done.
func (m *Manager) EnsureBridge(ctx context.Context) error {
	br := m.BridgeName()
	subnet := m.GuestSubnet()
	if !subnet.Addr().Is4() || subnet.Bits() > 30 {
		return fmt.Errorf("ensuring bridge %s: subnet %s is not an IPv4 /30 or larger: configure another subnet", br, subnet)
	}
	m.bridgeMu.Lock()
	defer m.bridgeMu.Unlock()
	r := m.runner()
	l, err := m.getLink(ctx, br)
	if err != nil {
		return fmt.Errorf("ensuring bridge %s: %w", br, err)
	}
	if l != nil && l.LinkInfo.Kind != "bridge" {
		return fmt.Errorf("ensuring bridge %s: a %q device of that name exists: remove it or configure another bridge name", br, l.LinkInfo.Kind)
	}
	gw := m.Gateway()
	hasAddr := false
	if l != nil {
		for _, a := range l.AddrInfo {
			if a.Family == "inet" && a.Local == gw.String() && a.PrefixLen == subnet.Bits() {
				hasAddr = true
			}
		}
	}
	// Refuse a taken subnet before making anything.
	if !hasAddr {
		if err := m.checkSubnetFree(ctx, br, subnet); err != nil {
			return err
		}
	}
	if l == nil {
		if _, err := r.RunPrivileged(ctx, "ip", "link", "add", "name", br, "type", "bridge"); err != nil {
			return fmt.Errorf("creating bridge %s: %w", br, err)
		}
		slog.Info("created bridge", "bridge", br)
		if l, err = m.getLink(ctx, br); err != nil || l == nil {
			return fmt.Errorf("ensuring bridge %s: reading it back: %w", br, err)
		}
	}
	if !hasAddr {
		cidr := netip.PrefixFrom(gw, subnet.Bits()).String()
		if _, err := r.RunPrivileged(ctx, "ip", "addr", "add", cidr, "dev", br); err != nil {
			return fmt.Errorf("adding address %s to bridge %s: %w", cidr, br, err)
		}
	}
	if !l.up() {
		if _, err := r.RunPrivileged(ctx, "ip", "link", "set", "dev", br, "up"); err != nil {
			return fmt.Errorf("bringing up bridge %s: %w", br, err)
		}
	}
	return nil
}

// checkSubnetFree refuses a subnet that another interface's IPv4 address
// overlaps: another banger owner's bridge (root's and each user's default
// subnets differ, but two uids can map to the same one), a VPN or the LAN.
func (m *Manager) checkSubnetFree(ctx context.Context, br string, subnet netip.Prefix) error {
	out, err := m.runner().Run(ctx, "ip", "-j", "addr", "show")
	if err != nil {
		return fmt.Errorf("ensuring bridge %s: listing addresses: %w", br, err)
	}
	var links []link
	if err := json.Unmarshal(out, &links); err != nil {
		return fmt.Errorf("ensuring bridge %s: parsing ip output: %w", br, err)
	}
	for _, l := range links {
		if l.Name == br {
			continue
		}
		for _, a := range l.AddrInfo {
			p, err := netip.ParsePrefix(fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
			if a.Family != "inet" || err != nil {
				continue
			}
			if p.Masked().Overlaps(subnet) {
				return fmt.Errorf("ensuring bridge %s: subnet %s overlaps %s on %s (another banger user's bridge, or a network of this host): set subnet in banger's config.toml to a free range, for example %s",
					br, subnet, p, l.Name, suggestSubnet(subnet))
			}
		}
	}
	return nil
}

// suggestSubnet proposes the next /24 after subnet inside 172.30.0.0/16.
func suggestSubnet(subnet netip.Prefix) string {
	b := subnet.Addr().As4()
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, b[2] + 1, 0}), 24).String()
}

// DeleteBridge removes the bridge; a bridge that is already gone is not an error.
func (m *Manager) DeleteBridge(ctx context.Context) error {
	return m.deleteLink(ctx, "bridge", m.BridgeName())
}

// CreateTAP creates a persistent TAP device that uid/gid may open (a negative uid or gid
// leaves it unrestricted), attaches it to the bridge and brings it up. An existing TAP of
// that name is reused when its owner matches.
func (m *Manager) CreateTAP(ctx context.Context, name string, uid, gid int) error {
	if err := validIfName(name); err != nil {
		return fmt.Errorf("creating tap %s: %w", name, err)
	}
	br := m.BridgeName()
	r := m.runner()
	l, err := m.getLink(ctx, name)
	if err != nil {
		return fmt.Errorf("creating tap %s: %w", name, err)
	}
	if l != nil {
		if !l.isTAP() {
			return fmt.Errorf("creating tap %s: a %q device of that name exists: remove it with 'ip link del %s'", name, l.LinkInfo.Kind, name)
		}
		if !ownerMatches(l.LinkInfo.Data.User, uid, userName) || !ownerMatches(l.LinkInfo.Data.Group, gid, groupName) {
			return fmt.Errorf("creating tap %s: it exists owned by %s:%s, not %d:%d: remove it with 'ip link del %s'",
				name, l.LinkInfo.Data.User, l.LinkInfo.Data.Group, uid, gid, name)
		}
		if l.Master == br && l.up() {
			return nil
		}
	} else {
		args := []string{"tuntap", "add", "dev", name, "mode", "tap"}
		if uid >= 0 {
			args = append(args, "user", strconv.Itoa(uid))
		}
		if gid >= 0 {
			args = append(args, "group", strconv.Itoa(gid))
		}
		if _, err := r.RunPrivileged(ctx, "ip", args...); err != nil {
			return fmt.Errorf("creating tap %s: %w", name, err)
		}
	}
	if _, err := r.RunPrivileged(ctx, "ip", "link", "set", "dev", name, "master", br, "up"); err != nil {
		if l == nil {
			// Do not leave a half-configured device of our own making behind.
			if _, derr := r.RunPrivileged(ctx, "ip", "link", "del", "dev", name); derr != nil {
				slog.Warn("removing half-created tap", "tap", name, "err", derr)
			}
		}
		return fmt.Errorf("attaching tap %s to bridge %s: %w", name, br, err)
	}
	return nil
}

// SetTAPUp brings a TAP device's link up or down. A TAP that is down
// carries no frame either way, while the hypervisor keeps it open.
func (m *Manager) SetTAPUp(ctx context.Context, name string, up bool) error {
	if err := validIfName(name); err != nil {
		return fmt.Errorf("setting tap %s: %w", name, err)
	}
	state := "down"
	if up {
		state = "up"
	}
	if _, err := m.runner().RunPrivileged(ctx, "ip", "link", "set", "dev", name, state); err != nil {
		return fmt.Errorf("setting tap %s %s: %w", name, state, err)
	}
	return nil
}

// DeleteTAP removes a TAP device; one that is already gone is not an error.
func (m *Manager) DeleteTAP(ctx context.Context, name string) error {
	return m.deleteLink(ctx, "tap", name)
}

func (m *Manager) deleteLink(ctx context.Context, what, name string) error {
	if _, err := m.runner().RunPrivileged(ctx, "ip", "link", "del", "dev", name); err != nil {
		if notExist(err) {
			return nil
		}
		return fmt.Errorf("deleting %s %s: %w", what, name, err)
	}
	return nil
}

// ListTAPs returns the names of the TAP devices whose name starts with
// prefix and that uid may open (any owner when uid is negative), sorted.
// Devices of another owner are never listed: a daemon must not adopt or
// remove what another daemon made.
func (m *Manager) ListTAPs(ctx context.Context, prefix string, uid int) ([]string, error) {
	out, err := m.runner().Run(ctx, "ip", "-j", "-d", "link", "show")
	if err != nil {
		return nil, fmt.Errorf("listing tap devices: %w", err)
	}
	var links []link
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("listing tap devices: parsing ip output: %w", err)
	}
	var names []string
	for _, l := range links {
		if l.isTAP() && strings.HasPrefix(l.Name, prefix) && ownerMatches(l.LinkInfo.Data.User, uid, userName) {
			names = append(names, l.Name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// MAC returns a locally administered unicast MAC address derived from a guest IP:
// 02:ba followed by the four bytes of the IPv4 address (the last four of an IPv6 one).
func MAC(ip netip.Addr) string {
	b := ip.As16()
	return fmt.Sprintf("02:ba:%02x:%02x:%02x:%02x", b[12], b[13], b[14], b[15])
}

func validIfName(name string) error {
	if name == "" || len(name) > maxIfName || strings.ContainsAny(name, "/: \t\n") || name == "." || name == ".." {
		return errors.New("invalid interface name: use at most 15 characters without '/', ':' or spaces")
	}
	return nil
}

// ownerMatches reports whether ip's owner field (a name, or a number when the id has
// no name) is id. A negative id matches any owner.
func ownerMatches(field string, id int, name func(id string) (string, error)) bool {
	if id < 0 {
		return true
	}
	if field == strconv.Itoa(id) {
		return true
	}
	n, err := name(strconv.Itoa(id))
	return err == nil && n == field
}

func userName(id string) (string, error) {
	u, err := user.LookupId(id)
	if err != nil {
		return "", err
	}
	return u.Username, nil
}

func groupName(id string) (string, error) {
	g, err := user.LookupGroupId(id)
	if err != nil {
		return "", err
	}
	return g.Name, nil
}
