package netsetup

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/vmtest"
)

func TestResolvConf(t *testing.T) {
	c, err := guestconfig.ParseNetwork("ip=172.16.0.2::172.16.0.1:255.255.255.0:vm1:eth0:off:172.16.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := resolvConf(c), "nameserver 172.16.0.1\n"; !strings.HasSuffix(got, want) {
		t.Errorf("resolvConf() = %q, want it to end %q", got, want)
	}
}

// TestMessages pins the rtnetlink requests byte for byte (little-endian
// hosts: x86-64, the guests' architecture).
func TestMessages(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the expected bytes are little-endian")
	}
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"linkUpMsg(2)", linkUpMsg(2),
			// len 32, RTM_NEWLINK, REQUEST|ACK, seq 0, pid 0; ifinfomsg index 2, flags and change IFF_UP
			"20000000 1000 0500 00000000 00000000 00000000 02000000 01000000 01000000"},
		{"addrMsg(2, 172.16.0.2/24)", addrMsg(2, netip.MustParsePrefix("172.16.0.2/24")),
			// len 40, RTM_NEWADDR, REQUEST|ACK|REPLACE|CREATE; AF_INET /24 scope universe index 2; IFA_LOCAL, IFA_ADDRESS
			"28000000 1400 0505 00000000 00000000 02180000 02000000 0800 0200 ac100002 0800 0100 ac100002"},
		{"linkMsg(2, down, 02:ba:ac:1e:00:07)", linkMsg(2, false, net.HardwareAddr{2, 0xba, 0xac, 0x1e, 0, 7}),
			// len 44, RTM_NEWLINK, REQUEST|ACK; ifinfomsg index 2, flags 0, change IFF_UP; IFLA_ADDRESS (padded)
			"2c000000 1000 0500 00000000 00000000 00000000 02000000 00000000 01000000 0a00 0100 02baac1e0007 0000"},
		{"linkAddrMsg(2, 02:ba:ac:1e:00:07)", linkAddrMsg(2, net.HardwareAddr{2, 0xba, 0xac, 0x1e, 0, 7}),
			// len 44, RTM_NEWLINK, REQUEST|ACK; ifinfomsg index 2, flags and change 0 (left as they are); IFLA_ADDRESS (padded)
			"2c000000 1000 0500 00000000 00000000 00000000 02000000 00000000 00000000 0a00 0100 02baac1e0007 0000"},
		{"addrMsg(2, fe80::ba:acff:fe1e:7/64)", addrMsg(2, netip.MustParsePrefix("fe80::ba:acff:fe1e:7/64")),
			// len 44, RTM_NEWADDR, REQUEST|ACK|REPLACE|CREATE; AF_INET6 /64 flags 0 scope link index 2; IFA_LOCAL of 16 bytes
			"2c000000 1400 0505 00000000 00000000 0a4000fd 02000000 1400 0200 fe8000000000000000baacfffe1e0007"},
		{"delAddrMsg(2, 172.16.0.2/24)", delAddrMsg(2, netip.MustParsePrefix("172.16.0.2/24")),
			// len 32, RTM_DELADDR, REQUEST|ACK; AF_INET /24 index 2; IFA_LOCAL
			"20000000 1500 0500 00000000 00000000 02180000 02000000 0800 0200 ac100002"},
		{"delAddrMsg(2, fd00::2/64)", delAddrMsg(2, netip.MustParsePrefix("fd00::2/64")),
			// len 44, RTM_DELADDR; AF_INET6 /64 index 2; IFA_LOCAL of 16 bytes
			"2c000000 1500 0500 00000000 00000000 0a400000 02000000 1400 0200 fd000000000000000000000000000002"},
		{"defaultRouteMsg(2, 172.16.0.1)", defaultRouteMsg(2, netip.MustParseAddr("172.16.0.1")),
			// len 44, RTM_NEWROUTE, REQUEST|ACK|REPLACE|CREATE; AF_INET dst/0 main boot universe unicast; RTA_GATEWAY, RTA_OIF 2
			"2c000000 1800 0505 00000000 00000000 02000000 fe030001 00000000 0800 0500 ac100001 0800 0400 02000000"},
	}
	for _, tt := range tests {
		want, err := hex.DecodeString(strings.ReplaceAll(tt.want, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tt.got, want) {
			t.Errorf("%s = %x, want %x", tt.name, tt.got, want)
		}
	}
}

func TestAckOf(t *testing.T) {
	ack := func(seq uint32, errno int32) []byte {
		b := make([]byte, 36)
		ne := binary.NativeEndian
		ne.PutUint32(b[0:], 36)
		ne.PutUint16(b[4:], unix.NLMSG_ERROR)
		ne.PutUint32(b[8:], seq)
		ne.PutUint32(b[16:], uint32(errno))
		return b
	}
	tests := []struct {
		name     string
		b        []byte
		seq      uint32
		wantDone bool
		wantErr  error
	}{
		{"ack", ack(3, 0), 3, true, nil},
		{"error", ack(3, -int32(unix.EEXIST)), 3, true, unix.EEXIST},
		{"another request's ack", ack(2, 0), 3, false, nil},
		{"two messages", append(ack(2, 0), ack(3, -int32(unix.ENETUNREACH))...), 3, true, unix.ENETUNREACH},
		{"truncated", ack(3, 0)[:20], 3, true, errBadLength},
		{"empty", nil, 3, false, nil},
	}
	for _, tt := range tests {
		done, err := ackOf(tt.b, tt.seq)
		if done != tt.wantDone || !errors.Is(err, tt.wantErr) {
			t.Errorf("ackOf(%s) = %v, %v; want %v, %v", tt.name, done, err, tt.wantDone, tt.wantErr)
		}
	}
}

// TestConfigure applies a network to a veth inside a throwaway namespace
// over rtnetlink and reads it back with ip.
func TestConfigure(t *testing.T) {
	vmtest.RequireHost(t, "configuring a link in a network namespace", vmtest.Root(), vmtest.Tool("ip", "iproute2"))
	ns := vmtest.NewNS(t)
	if out, err := vmtest.Command("ip", "-n", ns.Name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v: %s", err, out)
	}
	if out, err := vmtest.Command("ip", "-n", ns.Name, "link", "set", "peer0", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set peer0 up: %v: %s", err, out)
	}
	c, err := guestconfig.ParseNetwork("ip=10.77.0.2::10.77.0.1:255.255.255.0:vm1:eth0:off:10.77.0.1")
	if err != nil {
		t.Fatal(err)
	}
	// Twice: a second boot replaces what the first set.
	for i := 0; i < 2; i++ {
		if err := ns.Do(func() error { return configure(c) }); err != nil {
			t.Fatalf("configure #%d: %v", i+1, err)
		}
	}
	for _, q := range []struct {
		args []string
		want string
	}{
		{[]string{"-4", "-o", "addr", "show", "dev", "eth0"}, "inet 10.77.0.2/24 scope global eth0"},
		{[]string{"link", "show", "eth0"}, "<BROADCAST,MULTICAST,UP,LOWER_UP>"},
		{[]string{"link", "show", "lo"}, ",UP,"},
		{[]string{"-4", "route", "show", "default"}, "default via 10.77.0.1 dev eth0 \n"},
	} {
		out, err := vmtest.Command("ip", append([]string{"-n", ns.Name}, q.args...)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), q.want) {
			t.Errorf("ip %s after configure = %q, %v; want it to contain %q", strings.Join(q.args, " "), out, err, q.want)
		}
	}
	bad := c
	bad.Device = "nosuch0"
	if err := ns.Do(func() error { return configure(bad) }); err == nil || !strings.Contains(err.Error(), "finding nosuch0") {
		t.Errorf("configure on a missing device = %v, want an error naming it", err)
	}
}

func TestHostsWithName(t *testing.T) {
	tests := []struct{ old, name, want string }{
		{"127.0.0.1\tlocalhost\n", "vm1", "127.0.0.1\tlocalhost\n127.0.1.1\tvm1\n"},
		{"127.0.0.1\tlocalhost\n127.0.1.1\told\n", "new", "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n"},
	}
	for _, tt := range tests {
		if got := hostsWithName(tt.old, tt.name); got != tt.want {
			t.Errorf("hostsWithName(%q, %q) = %q, want %q", tt.old, tt.name, got, tt.want)
		}
	}
}

// TestVsockLoopback serves over a real AF_VSOCK socket through the host's

// TestReconfigure moves a configured veth, with a secondary and an IPv6
// address besides, to a new address, MAC and route inside a throwaway
// namespace, and reads the result back with ip: with the link kept up
// (veth takes a live MAC change), and taken down as for a driver that
// refuses one.
func TestReconfigure(t *testing.T) {
	vmtest.RequireHost(t, "configuring a link in a network namespace", vmtest.Root(), vmtest.Tool("ip", "iproute2"))
	for _, live := range []bool{true, false} {
		t.Run(fmt.Sprintf("live=%v", live), func(t *testing.T) {
			ns := vmtest.NewNS(t)
			ip := func(args ...string) string {
				t.Helper()
				out, err := vmtest.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput()
				if err != nil {
					t.Fatalf("ip %v: %v: %s", args, err, out)
				}
				return string(out)
			}
			ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
			ip("link", "set", "peer0", "up")
			first, err := guestconfig.ParseNetwork("ip=10.77.0.2::10.77.0.1:255.255.255.0:tmpl:eth0:off:10.77.0.1")
			if err != nil {
				t.Fatal(err)
			}
			if err := ns.Do(func() error { return configure(first) }); err != nil {
				t.Fatalf("configure: %v", err)
			}
			ip("addr", "add", "10.77.0.9/24", "dev", "eth0")
			ip("addr", "add", "fd00::2/64", "dev", "eth0", "nodad")
			if !strings.Contains(ip("-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"), "inet6 fe80::") {
				t.Fatal("the veth has no link-local address to move")
			}
			next, err := guestconfig.ParseNetwork("ip=10.78.0.7::10.78.0.1:255.255.255.0:box7:eth0:off:10.78.0.1")
			if err != nil {
				t.Fatal(err)
			}
			mac, _ := net.ParseMAC("02:ba:ac:1e:00:07")
			// Twice: a second move to the same place changes nothing.
			for i := 0; i < 2; i++ {
				if err := ns.Do(func() error { return reconfigureLink(next, mac, live) }); err != nil {
					t.Fatalf("reconfigure #%d: %v", i+1, err)
				}
			}
			for _, q := range []struct {
				args      []string
				want, not string
			}{
				{[]string{"-4", "-o", "addr", "show", "dev", "eth0"}, "inet 10.78.0.7/24 scope global eth0", "10.77."},
				{[]string{"-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"}, "", "fd00::2"},
				{[]string{"link", "show", "eth0"}, "link/ether 02:ba:ac:1e:00:07", "NO-CARRIER,BROADCAST,MULTICAST>"},
				{[]string{"link", "show", "eth0"}, ",UP,", ""},
				{[]string{"-4", "route", "show", "default"}, "default via 10.78.0.1 dev eth0 \n", "10.77."},
			} {
				out := ip(q.args...)
				if !strings.Contains(out, q.want) || (q.not != "" && strings.Contains(out, q.not)) {
					t.Errorf("ip %s after reconfigure = %q; want it to contain %q and not %q", strings.Join(q.args, " "), out, q.want, q.not)
				}
			}
			// The old MAC's link-local address is gone, the new one's there.
			ll := strings.TrimSpace(ip("-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"))
			if !strings.Contains(ll, "inet6 fe80::ba:acff:fe1e:7/64 scope link") || strings.Count(ll, "\n") != 0 {
				t.Errorf("link-local addresses after reconfigure = %q, want only fe80::ba:acff:fe1e:7/64", ll)
			}
			bad := next
			bad.Device = "nosuch0"
			if err := ns.Do(func() error { return reconfigure(bad, nil) }); err == nil || !strings.Contains(err.Error(), "finding nosuch0") {
				t.Errorf("reconfigure on a missing device = %v, want an error naming it", err)
			}
		})
	}
}

func TestEUI64LinkLocal(t *testing.T) {
	for _, tt := range []struct{ mac, want string }{
		{"02:ba:ac:1e:00:07", "fe80::ba:acff:fe1e:7/64"},
		{"52:54:00:12:34:56", "fe80::5054:ff:fe12:3456/64"},
	} {
		mac, _ := net.ParseMAC(tt.mac)
		if got := eui64LinkLocal(mac).String(); got != tt.want {
			t.Errorf("eui64LinkLocal(%s) = %s, want %s", tt.mac, got, tt.want)
		}
	}
}

func TestReconfigureRefusesABadMAC(t *testing.T) {
	c, err := guestconfig.ParseNetwork("ip=10.78.0.7::10.78.0.1:255.255.255.0:box7:eth0:off:10.78.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, mac := range []string{"nonsense", "02:00:00:00:00:00:00:01", "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01"} {
		if err := Reconfigure(context.Background(), c, mac); err == nil || !strings.Contains(err.Error(), "not an Ethernet one") {
			t.Errorf("Reconfigure(MAC %q) = %v, want a refusal before any change", mac, err)
		}
	}
}
