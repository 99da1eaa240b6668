package doctor

import (
	"fmt"
	"os/exec"
	"sort"
	"strings"
)

// Tool is a host program banger runs, with the Debian package providing it.
type Tool struct {
	Bin     string
	Package string
	// For lists the operations that need the tool.
	For []string
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
)

// Tools is every host tool banger uses.
var Tools = []Tool{
	{"ip", "iproute2", []string{OpCreate}},
	{"qemu-system-x86_64", "qemu-system-x86", []string{OpQEMU}},
	{"e2fsck", "e2fsprogs", []string{OpDiskSize, OpRuntimeBuild}},
	{"resize2fs", "e2fsprogs", []string{OpDiskSize}},
	{"mkfs.ext4", "e2fsprogs", []string{OpRuntimeBuild, OpWorkSeed}},
	{"debugfs", "e2fsprogs", []string{OpCreate, OpRuntimeBuild, OpWorkSeed}},
	{"ssh", "openssh-client", []string{OpSSH}},
	{"nft", "nftables", []string{OpNAT, OpIsolation}},
	{"debootstrap", "debootstrap", []string{OpRuntimeBuild}},
	{"apt-get", "apt", []string{OpRuntimeBuild}},
	{"dpkg", "dpkg", []string{OpRuntimeBuild}},
	{"cp", "coreutils", []string{OpRuntimeBuild}},
	{"npm", "npm", []string{OpRuntimeBuild}},
}

// LookPath finds binaries; tests replace it.
var LookPath = exec.LookPath

// MissingTools returns the tools that op needs and that are not installed.
func MissingTools(op string) []Tool {
	var out []Tool
	for _, t := range Tools {
		for _, f := range t.For {
			if f == op {
				if _, err := LookPath(t.Bin); err != nil {
					out = append(out, t)
				}
				break
			}
		}
	}
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
	pkgs := map[string]bool{}
	for _, t := range missing {
		bins = append(bins, t.Bin)
		pkgs[t.Package] = true
	}
	var list []string
	for p := range pkgs {
		list = append(list, p)
	}
	sort.Strings(list)
	return fmt.Errorf("%s needs %s, which is not installed: run 'apt-get install %s' (see 'banger doctor')",
		op, strings.Join(bins, ", "), strings.Join(list, " "))
}
