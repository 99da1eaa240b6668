package doctor

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/hypervisor"
)

// fakeBackend is a hypervisor whose availability the test sets.
type fakeBackend struct {
	name string
	err  error
}

func (f fakeBackend) Name() string     { return f.name }
func (f fakeBackend) Available() error { return f.err }
func (f fakeBackend) Start(context.Context, hypervisor.Spec) (hypervisor.Instance, error) {
	return nil, errors.New("fake")
}
func (f fakeBackend) Attach(context.Context, hypervisor.Spec) (hypervisor.Instance, error) {
	return nil, errors.New("fake")
}

// withMissing makes LookPath fail for the named binaries.
func withMissing(t *testing.T, missing ...string) {
	old := LookPath
	t.Cleanup(func() { LookPath = old })
	LookPath = func(bin string) (string, error) {
		for _, m := range missing {
			if m == bin {
				return "", exec.ErrNotFound
			}
		}
		return "/usr/bin/" + bin, nil
	}
}

func TestRequireTools(t *testing.T) {
	for _, tc := range []struct {
		op      string
		missing []string
		want    string // "" means nil
	}{
		{OpCreate, nil, ""},
		{OpQEMU, []string{"qemu-system-x86_64"}, "run 'apt-get install qemu-system-x86'"},
		{OpDiskSize, []string{"e2fsck", "resize2fs"}, "needs e2fsck, resize2fs, which is not installed: run 'apt-get install e2fsprogs'"},
		{OpNAT, []string{"nft"}, "apt-get install nftables"},
		{OpSSH, []string{"nft"}, ""},
		{OpRuntimeBuild, []string{"debootstrap", "dpkg"}, "apt-get install debootstrap dpkg"},
	} {
		withMissing(t, tc.missing...)
		err := RequireTools(tc.op)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("RequireTools(%q) with %v missing = %v, want %q", tc.op, tc.missing, err, tc.want)
		}
	}
}

func TestReportWithoutQEMU(t *testing.T) {
	withMissing(t, "qemu-system-x86_64")
	cfg := config.Defaults()
	rep := Run(context.Background(), Inputs{
		Config:      cfg,
		Firecracker: fakeBackend{"firecracker", errors.New("firecracker not in PATH")},
		QEMU:        fakeBackend{"qemu", errors.New("qemu-system-x86_64 not found: apt-get install qemu-system-x86")},
		Env:         func(string) string { return "" },
		WorkDir:     t.TempDir(),
	})
	if rep.OK {
		t.Fatalf("report OK without qemu: %+v", rep)
	}
	var sawTool, sawSelected bool
	for _, c := range rep.Checks {
		if c.Name == "qemu-system-x86_64" {
			sawTool = c.Status == Fail && c.Required && strings.Contains(c.Fix, "apt-get install qemu-system-x86")
		}
		if c.Name == "selected" {
			sawSelected = c.Status == Fail
		}
	}
	if !sawTool || !sawSelected {
		t.Errorf("checks = %+v; want qemu-system-x86_64 and selected failing with the package named", rep.Checks)
	}
}

func TestPackagesOnce(t *testing.T) {
	withMissing(t, "debugfs", "mkfs.ext4", "e2fsck", "debootstrap")
	if got := strings.Join(Packages(MissingTools(OpRuntimeBuild)), " "); got != "debootstrap e2fsprogs" {
		t.Errorf("Packages(missing for %s) = %q, want each package once: %q", OpRuntimeBuild, got, "debootstrap e2fsprogs")
	}
	err := RequireTools(OpRuntimeBuild)
	if err == nil || strings.Count(err.Error(), "e2fsprogs") != 1 {
		t.Errorf("RequireTools(%s) = %v, want e2fsprogs named once", OpRuntimeBuild, err)
	}
}

func TestPrivileged(t *testing.T) {
	for _, tc := range []struct {
		ops  []string
		want string
	}{
		{[]string{OpCreate}, "ip"},
		{[]string{OpCreate, OpNAT}, "ip nft sysctl"},
		{VMOps, "ip nft sysctl"},
		{[]string{OpWorkSeed}, ""}, // a work-seed needs no root
		{[]string{OpSSH, OpDiskSize}, ""},
	} {
		if got := strings.Join(privilegedBins(tc.ops...), " "); got != tc.want {
			t.Errorf("privilegedBins(%v) = %q, want %q", tc.ops, got, tc.want)
		}
	}
	build := privilegedBins(OpRuntimeBuild)
	for _, want := range []string{"debootstrap", "chroot", "mkfs.ext4"} {
		if !strings.Contains(strings.Join(build, " "), want) {
			t.Errorf("privilegedBins(%s) = %v, want %s among them", OpRuntimeBuild, build, want)
		}
	}
}

func TestSudoers(t *testing.T) {
	withMissing(t, "resolvectl")
	got := Sudoers("dev", VMOps...)
	last := strings.Split(strings.TrimSpace(got), "\n")
	if want := "dev ALL=(root) NOPASSWD: /usr/bin/ip, /usr/bin/nft, /usr/bin/sysctl"; last[len(last)-1] != want {
		t.Errorf("Sudoers(dev) ends with %q, want %q\n%s", last[len(last)-1], want, got)
	}
	if !strings.Contains(got, "/usr/bin/nft: keeps banger's own nftables tables") {
		t.Errorf("Sudoers(dev) does not say why each command runs as root:\n%s", got)
	}
}

// TestEveryPrivilegedToolHasAProbe: sudo is checked by running each
// privileged tool harmlessly, so each needs a probe.
func TestEveryPrivilegedToolHasAProbe(t *testing.T) {
	for _, tool := range Tools {
		if len(tool.RootFor) > 0 && len(tool.Probe) == 0 {
			t.Errorf("%s runs as root for %v but has no sudo probe", tool.Bin, tool.RootFor)
		}
	}
	withMissing(t, "sysctl")
	got := Probes(OpCreate, OpNAT)
	if len(got) != 2 || strings.Join(got[0], " ") != "ip -V" || strings.Join(got[1], " ") != "nft --version" {
		t.Errorf("Probes(create, nat) with sysctl missing = %q, want ip -V and nft --version", got)
	}
}

func privilegedBins(ops ...string) []string {
	var out []string
	for _, t := range privileged(ops) {
		out = append(out, t.Bin)
	}
	return out
}
