// Package netsetup configures a guest's network in userspace from the kernel ip= argument (the kernel cannot: its NIC driver is a module loaded later).
package netsetup

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/guestconfig"
)

// resolvConf is the /etc/resolv.conf content for c.
func resolvConf(c guestconfig.Network) string {
	var b strings.Builder
	b.WriteString("# Written by banger-vsock-agent net-setup from the kernel ip= argument.\n")
	for _, d := range c.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	return b.String()
}

// hostsWithName returns /etc/hosts content that maps 127.0.1.1 to name.
func hostsWithName(old, name string) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(old, "\n"), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "127.0.1.1") {
			continue
		}
		lines = append(lines, l)
	}
	if name != "" {
		lines = append(lines, "127.0.1.1\t"+name)
	}
	return strings.Join(lines, "\n") + "\n"
}

// Apply configures the guest network from the ip= argument of cmdline:
// links, address and default route (over rtnetlink), hostname,
// /etc/hosts and /etc/resolv.conf.
func Apply(cmdline string) error {
	c, err := guestconfig.ParseNetwork(cmdline)
	if err != nil {
		return err
	}
	// The NIC's driver is a module the initramfs loaded; give it a moment.
	dev := filepath.Join("/sys/class/net", c.Device)
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(dev); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := configure(c); err != nil {
		return fmt.Errorf("configuring network %s: %w", c.Device, err)
	}
	if c.Hostname != "" {
		if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
			return fmt.Errorf("setting hostname %s: %w", c.Hostname, err)
		}
		if err := writeFile("/etc/hostname", c.Hostname+"\n"); err != nil {
			return err
		}
		old, _ := os.ReadFile("/etc/hosts")
		if len(old) == 0 {
			old = []byte("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
		}
		if err := writeFile("/etc/hosts", hostsWithName(string(old), c.Hostname)); err != nil {
			return err
		}
	}
	if err := writeFile("/etc/resolv.conf", resolvConf(c)); err != nil {
		return err
	}
	slog.Info("network configured", "device", c.Device, "address", c.Prefix(), "gateway", c.Gateway, "hostname", c.Hostname, "dns", c.DNS)
	return nil
}

// writeFile replaces path atomically (a symlink, such as a resolver's
// resolv.conf link, is replaced by a file).
func writeFile(path, content string) error {
	tmp := path + ".banger-tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
