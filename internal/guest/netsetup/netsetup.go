// Package netsetup configures a guest's network in userspace from the kernel ip= argument (the kernel cannot: its NIC driver is a module loaded later).
package netsetup

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// Commands is read-locked while a guest program of banger runs a command
// and waits for it. An init that reaps every child (the minimal image's
// PID 1) write-locks it to reap, so that it never takes an exit status
// that exec.Cmd.Wait is waiting for ("waitid: no child processes").
var Commands sync.RWMutex

// Reconfigure moves a running guest's interface to c (address, MAC, route,
// hostname, resolvers): what a guest restored from another machine's
// snapshot needs. It runs no command: under TCG an ip process alone costs
// a few hundred milliseconds of a warm create.
func Reconfigure(ctx context.Context, c guestconfig.Network, mac string) error {
	if err := c.Validate(); err != nil {
		return err
	}
	var hw net.HardwareAddr
	if mac != "" {
		var err error
		if hw, err = net.ParseMAC(mac); err != nil || len(hw) != 6 {
			return fmt.Errorf("configuring network %s: MAC address %q is not an Ethernet one", c.Device, mac)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := reconfigure(c, hw); err != nil {
		return fmt.Errorf("configuring network %s: %w", c.Device, err)
	}
	if c.Hostname != "" {
		if err := SetHostname(c.Hostname); err != nil {
			return err
		}
	}
	return writeFile("/etc/resolv.conf", resolvConf(c))
}

// SetHostname gives the guest its name: the kernel's, /etc/hostname and
// 127.0.1.1 in /etc/hosts.
func SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("setting hostname %s: %w", name, err)
	}
	if err := writeFile("/etc/hostname", name+"\n"); err != nil {
		return err
	}
	old, _ := os.ReadFile("/etc/hosts")
	if len(old) == 0 {
		old = []byte("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
	}
	return writeFile("/etc/hosts", hostsWithName(string(old), name))
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
		if err := SetHostname(c.Hostname); err != nil {
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
