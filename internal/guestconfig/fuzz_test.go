package guestconfig

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// parseSeeds are the command lines of TestParseNetwork and what
// TestCmdline renders.
var parseSeeds = []string{
	"console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.0:vm1:eth0:off:172.16.0.1 root=/dev/vda",
	"ip=10.0.0.5::10.0.0.1:16:box:eth0:off:1.1.1.1:8.8.8.8",
	"ip=192.168.1.9:192.168.1.1",
	"ip=dhcp ip=10.1.2.3:::255.255.255.252::ens3",
	"ip=5.6.7.8::5.6.7.1:255.255.255.0:b::off",
	"console=ttyS0",
	"ip=dhcp",
	"ip=10.0.0.2::10.0.0.1:255.0.255.0:x",
	"ip=10.0.0.2::10.0.0.1:33:x",
	"ip=10.0.0.2::10.0.0.1:24:x:eth0:dhcp",
	"ip=10.0.0.2::fe80::1:24",
	"ip=10.0.0.2::10.0.0.1:24:x:eth0:off:notanip",
	"console=ttyS0 reboot=k panic=1 root=/dev/vda rw ip=172.16.0.5::172.16.0.1:255.255.255.0:testbox:eth0:off:172.16.0.1",
	"console=ttyS0 reboot=k panic=1 root=/dev/vda rw ip=172.16.0.5:::255.255.255.252:testbox:eth0",
	"ip=10.0.0.2:::0", "ip=10.0.0.2:::0.0.0.0", "ip=200.0.0.1:", "ip=1.2.3.4::::::::fd00::53",
}

// sameNetwork compares networks as the guest sees them: no device is eth0
// and no resolvers is no resolvers, however spelled.
func sameNetwork(a, b Network) bool {
	norm := func(n Network) Network {
		if n.Device == "" {
			n.Device = "eth0"
		}
		if len(n.DNS) == 0 {
			n.DNS = nil
		}
		return n
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

// FuzzParseNetwork: whatever the command line, ParseNetwork returns an IPv4
// client or an error, and a network it returns that validates renders an
// ip= argument that parses back to the same network.
func FuzzParseNetwork(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmdline string) {
		n, err := ParseNetwork(cmdline)
		if err != nil {
			return
		}
		if !n.Client.Is4() || n.PrefixLen < 0 || n.PrefixLen > 32 || len(n.DNS) > maxDNS {
			t.Fatalf("ParseNetwork(%q) = %+v, want an IPv4 client, a prefix of 0-32 and at most %d resolvers", cmdline, n, maxDNS)
		}
		if n.Validate() != nil {
			return
		}
		arg := n.Arg()
		back, err := ParseNetwork(arg)
		if err != nil || !sameNetwork(back, n) {
			t.Fatalf("ParseNetwork(%q) = %+v, %v; want %+v (from %q)", arg, back, err, n, cmdline)
		}
	})
}

// FuzzCmdline: a Config that validates renders a printable-ASCII line of at
// most MaxCmdline bytes whose arguments are the base arguments, root=, the
// mode and ip=, each exactly once, and whose ip= parses back to the same
// network.
func FuzzCmdline(f *testing.F) {
	f.Add("console=ttyS0 reboot=k  panic=1", "/dev/vda", false, "172.16.0.5", "", "172.16.0.1", 24, "testbox", "eth0", "off", "172.16.0.1", "")
	f.Add("console=ttyS0", "/dev/vda", true, "172.16.0.5", "", "172.16.0.1", 24, "testbox", "eth0", "off", "172.16.0.1", "9.9.9.9")
	f.Add("console=ttyS0", "LABEL=root", false, "172.16.0.5", "", "", 30, "testbox", "", "", "", "")
	f.Add("a", "UUID=0b4e-11", false, "192.168.9.9", "192.168.9.1", "192.168.9.254", 23, "", "ens3", "none", "192.168.9.1", "192.168.9.2")
	f.Add("console=ttyS0 ip=dhcp", "/dev/vda", false, "10.1.2.3", "", "", 8, "a", "eth0", "", "", "")
	f.Add("a=\x1b[2J", "/dev/vda", false, "10.1.2.3", "", "", 8, "a", "eth0", "", "", "")
	f.Add("", "/dev/vda x", false, "10.1.2.3", "", "", 8, "a", "et\fh0", "static", "", "")
	f.Add("--", "/dev/vda", false, "10.1.2.3", "", "", 32, "a", "eth0", "", "", "")
	f.Fuzz(func(t *testing.T, base, root string, ro bool, client, server, gateway string, prefix int, hostname, device, autoconf, dns0, dns1 string) {
		addr := func(s string) netip.Addr {
			a, _ := netip.ParseAddr(s)
			return a
		}
		n := Network{Client: addr(client), Server: addr(server), Gateway: addr(gateway), PrefixLen: prefix,
			Hostname: hostname, Device: device, Autoconf: autoconf}
		for _, d := range []string{dns0, dns1} {
			if d != "" {
				n.DNS = append(n.DNS, addr(d))
			}
		}
		c := Config{BaseArgs: base, Root: root, ReadOnlyRoot: ro, Network: n}
		line, err := c.Cmdline()
		if err != nil {
			return
		}
		if len(line) > MaxCmdline {
			t.Fatalf("Cmdline(%+v) is %d bytes, more than %d", c, len(line), MaxCmdline)
		}
		if i := strings.IndexFunc(line, func(r rune) bool { return r < 0x20 || r > 0x7e }); i >= 0 {
			t.Fatalf("Cmdline(%+v) = %q: byte %d is not printable ASCII", c, line, i)
		}
		if slices.Contains(strings.Fields(base), "--") {
			t.Fatalf("Cmdline(%+v) = %q: the kernel hands root= and ip= after \"--\" to init", c, line)
		}
		mode := "rw"
		if ro {
			mode = "ro"
		}
		want := append(strings.Fields(base), "root="+root, mode, n.Arg())
		if got := strings.Split(line, " "); !slices.Equal(got, want) {
			t.Fatalf("Cmdline(%+v) = %q: arguments %q, want %q", c, line, got, want)
		}
		back, err := ParseNetwork(line)
		if err != nil || !sameNetwork(back, n) {
			t.Fatalf("ParseNetwork(Cmdline(%+v) = %q) = %+v, %v; want %+v", c, line, back, err, n)
		}
	})
}
