// Package netsetup configures a guest's network in userspace from the kernel ip= argument (the kernel cannot: its NIC driver is a module loaded later).
package netsetup

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
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

// ipBinary is the guest's ip command.
func ipBinary() string {
	for _, p := range []string{"/usr/sbin/ip", "/usr/bin/ip", "/sbin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "ip"
}

// reconfigureBatch is the ip -batch script that moves a configured
// interface to c with MAC address mac: the link goes down while its address
// changes (a MAC change while up is not taken by every driver), every old
// address goes, and the route comes back with the link.
func reconfigureBatch(c guestconfig.Network, mac string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "link set dev %s down\n", c.Device)
	if mac != "" {
		fmt.Fprintf(&b, "link set dev %s address %s\n", c.Device, mac)
	}
	fmt.Fprintf(&b, "addr flush dev %s\n", c.Device)
	fmt.Fprintf(&b, "addr add %s dev %s\n", c.Prefix(), c.Device)
	fmt.Fprintf(&b, "link set dev %s up\n", c.Device)
	if c.Gateway.IsValid() {
		fmt.Fprintf(&b, "route replace default via %s dev %s\n", c.Gateway, c.Device)
	}
	return b.String()
}

// Commands is read-locked while a guest program of banger runs a command
// and waits for it. An init that reaps every child (the minimal image's
// PID 1) write-locks it to reap, so that it never takes an exit status
// that exec.Cmd.Wait is waiting for ("waitid: no child processes").
var Commands sync.RWMutex

// Reconfigure moves a running guest's interface to c (address, MAC, route,
// hostname, resolvers): what a guest restored from another machine's
// snapshot needs. It runs one ip process.
func Reconfigure(ctx context.Context, c guestconfig.Network, mac string) error {
	if err := c.Validate(); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, ipBinary(), "-batch", "-")
	cmd.Stdin = strings.NewReader(reconfigureBatch(c, mac))
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	Commands.RLock()
	out, err := cmd.CombinedOutput()
	Commands.RUnlock()
	if err != nil {
		return fmt.Errorf("configuring network %s: ip -batch: %w: %s", c.Device, err, clip(strings.TrimSpace(string(out)), 500))
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

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
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
