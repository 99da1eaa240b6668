package initrd

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/banger/banger/internal/guestconfig"
)

// FuzzParseCmdline: whatever /proc/cmdline holds, ParseCmdline returns an
// error or a command line /init can act on: a root it knows how to find, a
// file system type, an absolute init and a wait that is not negative.
func FuzzParseCmdline(f *testing.F) {
	for _, s := range []string{
		"root=/dev/vda",
		"console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw ip=10.0.0.2::10.0.0.1:255.255.255.0:vm:eth0:off:1.1.1.1\n",
		"root=/dev/vdb rootfstype=ext2 rootflags=noatime,data=ordered ro init=/usr/bin/agent rootwait",
		"root=/dev/vda rw ro", "root=/dev/vdz root=/dev/vda", "root=LABEL=rootfs rootwait=2.5",
		`root=UUID=0b4e-11 init="/sbin/my init"`, "root=/dev/vda -- init=/bin/sh rw", "console=ttyS0",
		"root=vda", "root=PARTUUID=1234", "root=LABEL=", "root=/dev/vda rootwait=soon",
		"root=/dev/vda init=sbin/init", "root=/dev/vda rootfstype=", `a="x y" "b c" d=""`,
		"root=/dev/vda rootwait=1e300", "root=/dev/vda rootwait=NaN", "root=/dev/vda rootwait=inf",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCmdline(s)
		if err != nil {
			return
		}
		switch {
		case !strings.HasPrefix(c.Root, "/dev/") && !strings.HasPrefix(c.Root, "LABEL=") && !strings.HasPrefix(c.Root, "UUID="),
			c.Root == "LABEL=" || c.Root == "UUID=":
			t.Fatalf("ParseCmdline(%q) root = %q, want a /dev/ path, LABEL=<label> or UUID=<uuid>", s, c.Root)
		case c.FSType == "":
			t.Fatalf("ParseCmdline(%q) has no file system type", s)
		case !strings.HasPrefix(c.Init, "/"):
			t.Fatalf("ParseCmdline(%q) init = %q, want an absolute path", s, c.Init)
		case c.RootWait < 0:
			t.Fatalf("ParseCmdline(%q) root wait = %v, want at least 0", s, c.RootWait)
		}
	})
}

// FuzzHostCmdline: a command line that the host's guestconfig accepts, with
// base arguments /init does not read, boots: /init finds the root and mode
// the host wrote, whatever else the base arguments hold.
func FuzzHostCmdline(f *testing.F) {
	f.Add("console=ttyS0 reboot=k panic=1 pci=off", "/dev/vda", false, "172.16.0.5", 24)
	f.Add("console=ttyS0", "LABEL=rootfs", true, "10.0.0.2", 8)
	f.Add("quiet a=b=c", "UUID=0b4e1f2a-3344-5566-7788-99aabbccddee", false, "192.168.1.9", 30)
	f.Add("console=ttyS0 --", "/dev/vda", false, "172.16.0.5", 24)
	f.Add("", "LABEL=", false, "172.16.0.5", 24)
	f.Fuzz(func(t *testing.T, base, root string, ro bool, client string, prefix int) {
		addr, _ := netip.ParseAddr(client)
		c := guestconfig.Config{BaseArgs: base, Root: root, ReadOnlyRoot: ro,
			Network: guestconfig.Network{Client: addr, PrefixLen: prefix, Device: "eth0", Autoconf: "off"}}
		line, err := c.Cmdline()
		if err != nil {
			return
		}
		for _, arg := range strings.Fields(base) {
			switch k, _, _ := strings.Cut(arg, "="); k {
			case "init", "rootfstype", "rootflags", "rootwait":
				return // /init reads these: a bad one is the bundle's to fix
			}
		}
		got, err := ParseCmdline(line)
		if err != nil || got.Root != root || got.ReadOnly != ro {
			t.Fatalf("ParseCmdline(%q) = root %q, read-only %v, %v; want %q, %v", line, got.Root, got.ReadOnly, err, root, ro)
		}
	})
}
