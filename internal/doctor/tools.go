package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/banger/banger/internal/runner"
)

// Tool is a host program banger runs, with the Debian package providing it.
type Tool struct {
	Bin     string
	Package string
	// For lists the operations that need the tool.
	For []string
	// RootFor lists the operations of For that run the tool as root:
	// through 'sudo -n' for an ordinary user.
	RootFor []string
	// Why says what banger does with it as root (README, 'banger sudoers').
	Why string
	// Probe is a harmless argument list (a version flag) that checks sudo
	// runs the tool without a password.
	Probe []string
}

// Operations that need host tools.
const (
	OpCreate       = "vm create"
	OpQEMU         = "vm create with qemu"
	OpDiskSize     = "vm create --disk-size"
	OpSSH          = "vm ssh"
	OpNAT          = "vm --nat"
	OpRuntimeBuild = "runtime build"
	OpWorkSeed     = "work-seed refresh"
	OpIsolation    = "guest isolation"
	OpDNSRedirect  = "dns for an unprivileged bangerd"
	OpSplitDNS     = "systemd-resolved split dns"
)

// Tools is every host tool banger uses.
var Tools = []Tool{
	{Bin: "ip", Package: "iproute2", For: []string{OpCreate}, RootFor: []string{OpCreate}, Probe: []string{"-V"},
		Why: "creates the bridge and each VM's TAP device, attaches them, removes them"},
	{Bin: "qemu-system-x86_64", Package: "qemu-system-x86", For: []string{OpQEMU}},
	// Every create grows the VM's /root disk from its work-seed's size.
	{Bin: "e2fsck", Package: "e2fsprogs", For: []string{OpCreate, OpDiskSize, OpRuntimeBuild}},
	{Bin: "resize2fs", Package: "e2fsprogs", For: []string{OpCreate, OpDiskSize}},
	{Bin: "debugfs", Package: "e2fsprogs", For: []string{OpCreate, OpRuntimeBuild, OpWorkSeed}},
	{Bin: "ssh", Package: "openssh-client", For: []string{OpSSH}},
	{Bin: "nft", Package: "nftables", For: []string{OpNAT, OpIsolation, OpDNSRedirect}, RootFor: []string{OpNAT, OpIsolation, OpDNSRedirect}, Probe: []string{"--version"},
		Why: "keeps banger's own nftables tables: NAT, egress policies, guest isolation, the DNS redirect of an unprivileged bangerd"},
	{Bin: "sysctl", Package: "procps", For: []string{OpNAT}, RootFor: []string{OpNAT}, Probe: []string{"--version"},
		Why: "sets net.ipv4.ip_forward=1 when the first NAT guest starts"},
	{Bin: "resolvectl", Package: "systemd-resolved", For: []string{OpSplitDNS}, RootFor: []string{OpSplitDNS}, Probe: []string{"--version"},
		Why: "routes ~vm to banger's DNS on the bridge, on hosts that run systemd-resolved"},
	{Bin: "debootstrap", Package: "debootstrap", For: []string{OpRuntimeBuild}, RootFor: []string{OpRuntimeBuild}, Probe: []string{"--version"},
		Why: "image builds: installs Debian into a directory"},
	{Bin: "chroot", Package: "coreutils", For: []string{OpRuntimeBuild}, RootFor: []string{OpRuntimeBuild}, Probe: []string{"--version"},
		Why: "image builds: locks root's password and runs depmod inside the image"},
	{Bin: "apt-get", Package: "apt", For: []string{OpRuntimeBuild}},
	{Bin: "dpkg", Package: "dpkg", For: []string{OpRuntimeBuild}},
	{Bin: "cp", Package: "coreutils", For: []string{OpRuntimeBuild}, RootFor: []string{OpRuntimeBuild}, Probe: []string{"--version"},
		Why: "image builds: copies root-owned image trees"},
	{Bin: "rm", Package: "coreutils", For: []string{OpRuntimeBuild}, RootFor: []string{OpRuntimeBuild}, Probe: []string{"--version"},
		Why: "image builds: removes root-owned build directories"},
	{Bin: "mkdir", Package: "coreutils", For: []string{OpRuntimeBuild}, RootFor: []string{OpRuntimeBuild}, Probe: []string{"--version"},
		Why: "image builds: makes directories in root-owned trees"},
	{Bin: "mv", Package: "coreutils", For: []string{OpRuntimeBuild}, RootFor: []string{OpRuntimeBuild}, Probe: []string{"--version"},
		Why: "image builds: moves a finished debootstrap tree into the shared cache"},
	{Bin: "find", Package: "findutils", For: []string{OpRuntimeBuild}, RootFor: []string{OpRuntimeBuild}, Probe: []string{"--version"},
		Why: "image builds: drops apt's downloaded packages from a tree"},
	{Bin: "umount", Package: "mount", For: []string{OpRuntimeBuild}, RootFor: []string{OpRuntimeBuild}, Probe: []string{"--version"},
		Why: "image builds: unmounts what a crashed debootstrap left mounted"},
	{Bin: "mkfs.ext4", Package: "e2fsprogs", For: []string{OpRuntimeBuild, OpWorkSeed}, RootFor: []string{OpRuntimeBuild}, Probe: []string{"-V"},
		Why: "image builds: fills an ext4 image from a root-owned tree"},
	{Bin: "depmod", Package: "kmod", For: []string{OpRuntimeBuild}, RootFor: []string{OpRuntimeBuild}, Probe: []string{"--version"},
		Why: "image builds: indexes the kernel modules installed into the docker image"},
	{Bin: "npm", Package: "npm", For: []string{OpRuntimeBuild}},
}

// LookPath finds binaries; tests replace it.
var LookPath = runner.LookPath

// toolsFor lists the tools op needs, each binary once.
func toolsFor(op string) []Tool {
	var out []Tool
	for _, t := range Tools {
		if slices.Contains(t.For, op) && !slices.ContainsFunc(out, func(o Tool) bool { return o.Bin == t.Bin }) {
			out = append(out, t)
		}
	}
	return out
}

// MissingTools returns the tools that op needs and that are not installed.
func MissingTools(op string) []Tool {
	var out []Tool
	for _, t := range toolsFor(op) {
		if _, err := LookPath(t.Bin); err != nil {
			out = append(out, t)
		}
	}
	return out
}

// Packages returns the Debian packages of tools, each once, sorted.
func Packages(tools []Tool) []string {
	var out []string
	for _, t := range tools {
		if !slices.Contains(out, t.Package) {
			out = append(out, t.Package)
		}
	}
	sort.Strings(out)
	return out
}

// RequireTools returns an error naming every missing tool that op needs and
// the apt-get command that installs them, or nil.
func RequireTools(op string) error {
	missing := MissingTools(op)
	if len(missing) == 0 {
		return nil
	}
	var bins []string
	for _, t := range missing {
		bins = append(bins, t.Bin)
	}
	return fmt.Errorf("%s needs %s, which is not installed: run 'apt-get install %s' (see 'banger doctor')",
		op, strings.Join(bins, ", "), strings.Join(Packages(missing), " "))
}

func privileged(ops []string) []Tool {
	var out []Tool
	for _, op := range ops {
		for _, t := range toolsFor(op) {
			if slices.Contains(t.RootFor, op) && !slices.ContainsFunc(out, func(o Tool) bool { return o.Bin == t.Bin }) {
				out = append(out, t)
			}
		}
	}
	return out
}

// Probes are the sudo probes (runner.CheckPrivileged) of the privileged
// tools that ops need and that are installed.
func Probes(ops ...string) [][]string {
	var out [][]string
	for _, t := range privileged(ops) {
		if _, err := LookPath(t.Bin); err == nil {
			out = append(out, append([]string{t.Bin}, t.Probe...))
		}
	}
	return out
}

// Require checks that every tool ops need is installed and that the
// privileged ones can run through sudo without a prompt. It runs nothing
// else, so a refusal changes nothing.
func Require(ctx context.Context, r runner.Runner, ops ...string) error {
	for _, op := range ops {
		if err := RequireTools(op); err != nil {
			return err
		}
	}
	if err := runner.CheckPrivileged(ctx, r, Probes(ops...)...); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(ops, ", "), err)
	}
	return nil
}

// Sudoers returns a sudoers rule that lets user run, without a password,
// exactly the privileged tools ops need, by the absolute paths banger runs
// them with. Tools that are not installed are left out.
func Sudoers(user string, ops ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# banger: the commands bangerd and banger run as root for %s, through 'sudo -n'.\n", user)
	fmt.Fprintf(&b, "# Install: banger sudoers | sudo tee /etc/sudoers.d/zz-banger-%s >/dev/null && sudo chmod 0440 /etc/sudoers.d/zz-banger-%s\n", user, user)
	b.WriteString("# (sudo uses the last rule that matches: the zz- name sorts after other drop-ins.)\n")
	var paths []string
	for _, op := range ops {
		for _, t := range toolsFor(op) {
			if !slices.Contains(t.RootFor, op) {
				continue
			}
			p, err := LookPath(t.Bin)
			if err != nil || slices.Contains(paths, p) {
				continue
			}
			fmt.Fprintf(&b, "#   %s: %s\n", p, t.Why)
			paths = append(paths, p)
		}
	}
	if len(paths) == 0 {
		b.WriteString("# (none of them is installed: see 'banger doctor')\n")
		return b.String()
	}
	fmt.Fprintf(&b, "%s ALL=(root) NOPASSWD: %s\n", user, strings.Join(paths, ", "))
	return b.String()
}

// TUNDevice is where hypervisors open TAP devices.
var TUNDevice = "/dev/net/tun"

// RequireTUN checks that this user can open the TUN device, as qemu and
// firecracker must to use a VM's TAP device. Debian's udev makes it 0666;
// hosts without udev may leave it root's.
func RequireTUN() error {
	f, err := os.OpenFile(TUNDevice, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("%s is not open to your user (%w), so the hypervisor cannot use the VM's TAP device: run 'sudo chmod 0666 %s' (Debian's udev rules set this mode; is udev running?)", TUNDevice, err, TUNDevice)
		}
		return fmt.Errorf("opening %s: %w (load the tun module: sudo modprobe tun)", TUNDevice, err)
	}
	f.Close()
	return nil
}
