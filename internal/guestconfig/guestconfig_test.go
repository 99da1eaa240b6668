package guestconfig

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func a(s string) netip.Addr { return netip.MustParseAddr(s) }

func baseConfig() Config {
	return Config{
		BaseArgs: "console=ttyS0 reboot=k  panic=1",
		Root:     "/dev/vda",
		Network: Network{Client: a("172.16.0.5"), Gateway: a("172.16.0.1"), PrefixLen: 24,
			Hostname: "testbox", Device: "eth0", Autoconf: "off", DNS: []netip.Addr{a("172.16.0.1")}},
	}
}

func TestCmdline(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(c *Config)
		want    string
		wantErr string
	}{
		{
			name: "default",
			edit: func(c *Config) {},
			want: "console=ttyS0 reboot=k panic=1 root=/dev/vda rw ip=172.16.0.5::172.16.0.1:255.255.255.0:testbox:eth0:off:172.16.0.1",
		},
		{
			name: "read-only root, two resolvers",
			edit: func(c *Config) {
				c.ReadOnlyRoot = true
				c.Network.DNS = append(c.Network.DNS, a("9.9.9.9"))
			},
			want: "console=ttyS0 reboot=k panic=1 root=/dev/vda ro ip=172.16.0.5::172.16.0.1:255.255.255.0:testbox:eth0:off:172.16.0.1:9.9.9.9",
		},
		{
			name: "no gateway, no resolver: trailing fields dropped",
			edit: func(c *Config) {
				c.Network.Gateway, c.Network.DNS, c.Network.Autoconf = netip.Addr{}, nil, ""
				c.Network.PrefixLen = 30
			},
			want: "console=ttyS0 reboot=k panic=1 root=/dev/vda rw ip=172.16.0.5:::255.255.255.252:testbox:eth0",
		},
		{
			name: "machine id",
			edit: func(c *Config) { c.MachineID = "0123456789abcdef0123456789abcdef" },
			want: "console=ttyS0 reboot=k panic=1 root=/dev/vda rw ip=172.16.0.5::172.16.0.1:255.255.255.0:testbox:eth0:off:172.16.0.1 banger.machine_id=0123456789abcdef0123456789abcdef",
		},
		{name: "machine id upper case", edit: func(c *Config) { c.MachineID = "0123456789ABCDEF0123456789ABCDEF" }, wantErr: "machine id"},
		{name: "machine id all zero", edit: func(c *Config) { c.MachineID = strings.Repeat("0", 32) }, wantErr: "machine id"},
		{name: "machine id short", edit: func(c *Config) { c.MachineID = "0123" }, wantErr: "machine id"},
		{name: "base args set the machine id", edit: func(c *Config) { c.BaseArgs += " banger.machine_id=0123456789abcdef0123456789abcdef" }, wantErr: "banger writes itself"},
		{name: "hostname not a label", edit: func(c *Config) { c.Network.Hostname = "bad_name" }, wantErr: "not a DNS label"},
		{name: "gateway outside subnet", edit: func(c *Config) { c.Network.Gateway = a("10.0.0.1") }, wantErr: "outside 172.16.0.0/24"},
		{name: "gateway is client", edit: func(c *Config) { c.Network.Gateway = c.Network.Client }, wantErr: "both"},
		{name: "ipv6 client", edit: func(c *Config) { c.Network.Client = a("fd00::2") }, wantErr: "not IPv4"},
		{name: "no client", edit: func(c *Config) { c.Network.Client = netip.Addr{} }, wantErr: "not IPv4"},
		{name: "prefix 0", edit: func(c *Config) { c.Network.PrefixLen = 0 }, wantErr: "out of range"},
		{name: "three resolvers", edit: func(c *Config) { c.Network.DNS = []netip.Addr{a("1.1.1.1"), a("1.0.0.1"), a("8.8.8.8")} }, wantErr: "at most 2"},
		{name: "ipv6 resolver", edit: func(c *Config) { c.Network.DNS = []netip.Addr{a("fd00::53")} }, wantErr: "resolver fd00::53 is not IPv4"},
		{name: "bad root", edit: func(c *Config) { c.Root = "vda" }, wantErr: "root \"vda\""},
		{name: "base args set ip", edit: func(c *Config) { c.BaseArgs += " ip=dhcp" }, wantErr: "banger writes itself"},
		{name: "base args set rw", edit: func(c *Config) { c.BaseArgs += " rw" }, wantErr: "banger writes itself"},
		{name: "control byte in base args", edit: func(c *Config) { c.BaseArgs += " a=\x1b[2J" }, wantErr: "not printable ASCII"},
		{name: "non-ASCII base args", edit: func(c *Config) { c.BaseArgs += " a=é" }, wantErr: "not printable ASCII"},
		{name: "quote in base args", edit: func(c *Config) { c.BaseArgs += ` a="b` }, wantErr: "quote"},
		{name: "too long", edit: func(c *Config) { c.BaseArgs += " x=" + strings.Repeat("a", MaxCmdline) }, wantErr: "more than the 2047"},
		// Found by FuzzHostCmdline: the guest's /init refuses it.
		{name: "empty label", edit: func(c *Config) { c.Root = "LABEL=" }, wantErr: "names no label or UUID"},
		{name: "space in root", edit: func(c *Config) { c.Root = "/dev/vda init=/bin/sh" }, wantErr: "has a space"},
		{name: "quote in root", edit: func(c *Config) { c.Root = `LABEL="a` }, wantErr: "has a space, a quote"},
		{name: "form feed in device", edit: func(c *Config) { c.Network.Device = "et\fh0" }, wantErr: "device name"},
		// Found by FuzzCmdline: the device was written into ip= unchecked.
		{name: "non-ASCII device", edit: func(c *Config) { c.Network.Device = "\xb0" }, wantErr: "device name"},
		{name: "base args end the kernel's arguments", edit: func(c *Config) { c.BaseArgs += " --" }, wantErr: `"--" would hand root= and ip= to init`},
		{name: "autoconf dhcp", edit: func(c *Config) { c.Network.Autoconf = "dhcp" }, wantErr: "not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := baseConfig()
			tt.edit(&c)
			got, err := c.Cmdline()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Cmdline() = %q, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Cmdline() = %q, %v\nwant %q", got, err, tt.want)
			}
		})
	}
}

// TestRoundTrip checks that what the daemon writes is what the guest reads.
func TestRoundTrip(t *testing.T) {
	for _, n := range []Network{
		baseConfig().Network,
		{Client: a("10.1.2.3"), PrefixLen: 8, Hostname: "a", Device: "eth0"},
		{Client: a("192.168.9.9"), Server: a("192.168.9.1"), Gateway: a("192.168.9.254"), PrefixLen: 23, Device: "ens3", Autoconf: "none",
			DNS: []netip.Addr{a("192.168.9.1"), a("192.168.9.2")}},
	} {
		c := Config{BaseArgs: "console=ttyS0", Root: "/dev/vda", Network: n}
		line, err := c.Cmdline()
		if err != nil {
			t.Fatalf("Cmdline(%+v): %v", n, err)
		}
		got, err := ParseNetwork(line)
		if err != nil {
			t.Fatalf("ParseNetwork(%q): %v", line, err)
		}
		if !reflect.DeepEqual(got, n) {
			t.Errorf("round trip of %q:\n got %+v\nwant %+v", line, got, n)
		}
	}
}

func TestParseNetwork(t *testing.T) {
	tests := []struct {
		cmdline string
		want    Network
		wantErr bool
	}{
		{
			cmdline: "console=ttyS0 ip=172.16.0.2::172.16.0.1:255.255.255.0:vm1:eth0:off:172.16.0.1 root=/dev/vda",
			want: Network{Client: a("172.16.0.2"), Gateway: a("172.16.0.1"), PrefixLen: 24, Hostname: "vm1",
				Device: "eth0", Autoconf: "off", DNS: []netip.Addr{a("172.16.0.1")}},
		},
		{
			cmdline: "ip=10.0.0.5::10.0.0.1:16:box:eth0:off:1.1.1.1:8.8.8.8",
			want: Network{Client: a("10.0.0.5"), Gateway: a("10.0.0.1"), PrefixLen: 16, Hostname: "box",
				Device: "eth0", Autoconf: "off", DNS: []netip.Addr{a("1.1.1.1"), a("8.8.8.8")}},
		},
		{cmdline: "ip=192.168.1.9:192.168.1.1", want: Network{Client: a("192.168.1.9"), Server: a("192.168.1.1"), PrefixLen: 24, Device: "eth0"}},
		{cmdline: "ip=dhcp ip=10.1.2.3:::255.255.255.252::ens3", want: Network{Client: a("10.1.2.3"), PrefixLen: 30, Device: "ens3"}},
		{cmdline: "ip=5.6.7.8::5.6.7.1:255.255.255.0:b::off", want: Network{Client: a("5.6.7.8"), Gateway: a("5.6.7.1"), PrefixLen: 24, Hostname: "b", Device: "eth0", Autoconf: "off"}},
		{cmdline: "console=ttyS0", wantErr: true},
		{cmdline: "ip=dhcp", wantErr: true},
		{cmdline: "ip=10.0.0.2::10.0.0.1:255.0.255.0:x", wantErr: true},
		{cmdline: "ip=10.0.0.2::10.0.0.1:33:x", wantErr: true},
		{cmdline: "ip=10.0.0.2::10.0.0.1:24:x:eth0:dhcp", wantErr: true},
		{cmdline: "ip=10.0.0.2::fe80::1:24", wantErr: true},
		{cmdline: "ip=10.0.0.2::10.0.0.1:24:x:eth0:off:notanip", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseNetwork(tt.cmdline)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseNetwork(%q) error = %v, want error %v", tt.cmdline, err, tt.wantErr)
			continue
		}
		if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseNetwork(%q) = %+v, want %+v", tt.cmdline, got, tt.want)
		}
	}
}
