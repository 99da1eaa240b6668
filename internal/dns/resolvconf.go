package dns

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Resolver configuration files.
const (
	// ResolvConf is the system resolver configuration.
	ResolvConf = "/etc/resolv.conf"
	// ResolvedUpstreamConf is systemd-resolved's list of the real upstream
	// resolvers (ResolvConf then usually points at its 127.0.0.53 stub).
	ResolvedUpstreamConf = "/run/systemd/resolve/resolv.conf"
	// ResolvedStubConf exists while systemd-resolved manages the stub.
	ResolvedStubConf = "/run/systemd/resolve/stub-resolv.conf"
)

// resolvConfs are the files DefaultUpstreams tries, best first (tests change it).
var resolvConfs = []string{ResolvedUpstreamConf, ResolvConf}

// defaultResolvConf is the first of resolvConfs that exists.
func defaultResolvConf() string {
	for _, p := range resolvConfs {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return resolvConfs[len(resolvConfs)-1]
}

// DefaultUpstreams reads the host's upstream resolvers, preferring
// systemd-resolved's upstream list over /etc/resolv.conf.
func DefaultUpstreams() ([]string, error) {
	return UpstreamsFromResolvConf(defaultResolvConf())
}

// UpstreamsFromResolvConf returns the "ip:53" address of every valid
// nameserver line of a resolv.conf file, in order and without duplicates.
func UpstreamsFromResolvConf(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading resolver config %s: %w", path, err)
	}
	return parseResolvConf(data), nil
}

func parseResolvConf(data []byte) []string {
	var out []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		ip, err := netip.ParseAddr(f[1])
		if err != nil {
			continue // glibc ignores bad entries too.
		}
		addr := net.JoinHostPort(ip.Unmap().String(), "53")
		if !seen[addr] {
			seen[addr] = true
			out = append(out, addr)
		}
	}
	return out
}

// ResolvedActive reports whether systemd-resolved runs and manages the
// host's resolver, so split DNS for the zone can be set up with resolvectl.
func ResolvedActive() bool {
	return resolvedActive("/")
}

func resolvedActive(root string) bool {
	if _, err := os.Stat(filepath.Join(root, ResolvedStubConf)); err != nil {
		return false
	}
	// The stub file can outlive the daemon in /run; look for the process.
	comms, _ := filepath.Glob(filepath.Join(root, "proc/[0-9]*/comm"))
	for _, c := range comms {
		if b, err := os.ReadFile(c); err == nil && strings.TrimSpace(string(b)) == "systemd-resolve" {
			return true // comm is cut to 15 bytes: "systemd-resolved" reads "systemd-resolve".
		}
	}
	return false
}

// SplitDNSCommands returns the resolvectl argv lists that send the host's
// queries for vm. to listenIP through iface (the bridge), and keep
// systemd-resolved from using that link for any other name.
func SplitDNSCommands(iface, listenIP string) [][]string {
	return [][]string{
		{"resolvectl", "dns", iface, listenIP},
		{"resolvectl", "domain", iface, "~vm"},
		{"resolvectl", "default-route", iface, "false"},
	}
}
