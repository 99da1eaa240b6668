package vm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/store"
)

// folders makes host folders for mounts: src (read-write) and docs (to
// mount read-only, reached through a symlink).
func folders(t *testing.T) (src, docs, link string) {
	dir := t.TempDir()
	src, docs = filepath.Join(dir, "src"), filepath.Join(dir, "docs")
	os.Mkdir(src, 0o755)
	os.Mkdir(docs, 0o755)
	link = filepath.Join(dir, "docs-link")
	if err := os.Symlink(docs, link); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// A root bangerd refuses read-write folders owned by root.
		os.Chown(src, 65534, 65534)
	}
	return src, docs, link
}

func (h *testHost) createOpts(e *Engine, o CreateOptions) (*store.VM, error) {
	h.t.Helper()
	p, err := e.Plan(context.Background(), o)
	if err != nil {
		return nil, err
	}
	return e.Create(p, nil)
}

// serving lists the sockets the fake file server serves, sorted.
func (h *testHost) serving() []string {
	var out []string
	for _, sh := range h.shares.Serving() {
		out = append(out, sh.Socket)
	}
	sort.Strings(out)
	return out
}

// guestMountsOf returns what the running guest of v has mounted.
func (h *testHost) guestMountsOf(v *store.VM) []agent.Mount {
	for _, i := range h.fake.Running() {
		if i.Spec().ID == v.ID {
			return i.Mounts()
		}
	}
	return nil
}

// TestMountsLifecycle: host folders are served and mounted at create,
// gone at stop, back at start, adopted by a restarted bangerd, and leave
// nothing at delete.
func TestMountsLifecycle(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	src, docs, link := folders(t)
	v, err := h.createOpts(e, CreateOptions{Name: "box", Image: "minimal", Mounts: []store.Mount{
		{Host: src, Guest: "/root/src"},
		{Host: link, Guest: "/srv/docs", ReadOnly: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	wantRecord := []store.Mount{{Host: src, Guest: "/root/src"}, {Host: docs, Guest: "/srv/docs", ReadOnly: true}}
	if got, _ := e.Get(context.Background(), "box"); !reflect.DeepEqual(got.Mounts, wantRecord) {
		t.Errorf("recorded mounts = %+v, want %+v (symlinks resolved)", got.Mounts, wantRecord)
	}
	sockets := []string{filepath.Join(v.RuntimeDir, "fs0.sock"), filepath.Join(v.RuntimeDir, "fs1.sock")}
	wantGuest := []agent.Mount{{Tag: "banger0", Path: "/root/src"}, {Tag: "banger1", Path: "/srv/docs", ReadOnly: true}}
	check := func(when string) {
		t.Helper()
		if got := h.serving(); !slices.Equal(got, sockets) {
			t.Errorf("%s: serving %q, want %q", when, got, sockets)
		}
		if got := h.guestMountsOf(v); !reflect.DeepEqual(got, wantGuest) {
			t.Errorf("%s: guest mounts %+v, want %+v", when, got, wantGuest)
		}
		var shares []hypervisor.Share
		for _, i := range h.fake.Running() {
			shares = i.Spec().Shares
		}
		if want := []hypervisor.Share{{Tag: "banger0", Socket: sockets[0]}, {Tag: "banger1", Socket: sockets[1]}}; !reflect.DeepEqual(shares, want) {
			t.Errorf("%s: hypervisor shares %+v, want %+v", when, shares, want)
		}
	}
	check("after create")

	if _, err := e.Stop("box"); err != nil {
		t.Fatal(err)
	}
	if got := h.serving(); len(got) != 0 {
		t.Errorf("after stop: serving %q, want nothing", got)
	}
	for _, s := range sockets {
		if _, err := os.Stat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after stop: %s is left", s)
		}
	}
	if _, err := e.Start("box", nil); err != nil {
		t.Fatal(err)
	}
	check("after start")

	// A restarted bangerd adopts the servers: nothing is started again.
	e.Close()
	e2 := h.engine()
	if err := e2.Adopt(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e2.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	check("after a bangerd restart")

	if err := e2.Delete("box"); err != nil {
		t.Fatal(err)
	}
	if got := h.serving(); len(got) != 0 {
		t.Errorf("after delete: serving %q, want nothing", got)
	}
	if _, err := os.Stat(v.RuntimeDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after delete: runtime dir %s is left", v.RuntimeDir)
	}
}

// TestMountsReconcileStopsLeftovers: servers of a VM that is not running
// (bangerd died before it could stop them) are stopped at daemon start.
func TestMountsReconcileStopsLeftovers(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	src, _, _ := folders(t)
	v, err := h.createOpts(e, CreateOptions{Name: "box", Image: "minimal", Mounts: []store.Mount{{Host: src, Guest: "/root/src"}}})
	if err != nil {
		t.Fatal(err)
	}
	// The guest powers off while no bangerd watches.
	e.Close()
	for _, i := range h.fake.Running() {
		i.PowerOff()
	}
	e2 := h.engine()
	e2.Adopt(context.Background())
	e2.Reconcile(context.Background())
	if got := h.serving(); len(got) != 0 {
		t.Errorf("after reconcile: serving %q, want nothing", got)
	}
	if got, _ := e2.Get(context.Background(), v.Name); got.State != StateStopped {
		t.Errorf("state = %s, want stopped", got.State)
	}
}

// TestMountsFailures: a file server that cannot start undoes the create; a
// host folder removed while the VM was stopped is a clear error at start.
func TestMountsFailures(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	src, _, _ := folders(t)
	h.shares.FailStart = errors.New("virtiofsd exploded")
	_, err := h.createOpts(e, CreateOptions{Name: "box", Image: "minimal", Mounts: []store.Mount{{Host: src, Guest: "/root/src"}}})
	if err == nil || !strings.Contains(err.Error(), "virtiofsd exploded") {
		t.Fatalf("create with a failing file server = %v, want its error", err)
	}
	if vms, _ := e.List(context.Background()); len(vms) != 0 || len(h.fake.Running()) != 0 || len(h.serving()) != 0 {
		t.Errorf("a failed create left %d VMs, %d guests, serving %q", len(vms), len(h.fake.Running()), h.serving())
	}
	h.shares.FailStart = nil

	// A server that exits once the hypervisor connects fails the boot.
	h.shares.DieOnConnect = true
	_, err = h.createOpts(e, CreateOptions{Name: "box", Image: "minimal", Mounts: []store.Mount{{Host: src, Guest: "/root/src"}}})
	if err == nil || !strings.Contains(err.Error(), "the file server of host folder "+src+" exited") {
		t.Fatalf("create with a server that dies = %v, want it named", err)
	}
	if v, err := e.Get(context.Background(), "box"); err != nil || v.State != StateError || len(h.fake.Running()) != 0 || len(h.serving()) != 0 {
		t.Errorf("after the failed boot: %+v, %v, %d guests, serving %q; want the VM in error and nothing running", v, err, len(h.fake.Running()), h.serving())
	}
	if err := e.Delete("box"); err != nil {
		t.Fatal(err)
	}
	h.shares.DieOnConnect = false

	if _, err := h.createOpts(e, CreateOptions{Name: "box", Image: "minimal", Mounts: []store.Mount{{Host: src, Guest: "/root/src"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Stop("box"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(src); err != nil {
		t.Fatal(err)
	}
	_, err = e.Start("box", nil)
	if err == nil || !strings.Contains(err.Error(), "host folder "+src+" is gone") {
		t.Errorf("start with its folder gone = %v, want a clear error", err)
	}
	if len(h.fake.Running()) != 0 || len(h.serving()) != 0 {
		t.Errorf("a refused start left %d guests, serving %q", len(h.fake.Running()), h.serving())
	}
}

func TestMountsRefused(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	src, docs, _ := folders(t)
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	locked := filepath.Join(t.TempDir(), "locked")
	os.Mkdir(locked, 0o500) // readable, not writable
	if os.Geteuid() == 0 {
		os.Chown(locked, 65534, 65534)
	}
	private := filepath.Join(h.dir, "data")
	os.MkdirAll(private, 0o700)
	m := func(host, guest string) store.Mount { return store.Mount{Host: host, Guest: guest} }
	many := []store.Mount{}
	for i := 0; i <= agent.MaxMounts; i++ {
		d := filepath.Join(t.TempDir(), "m")
		os.Mkdir(d, 0o755)
		many = append(many, store.Mount{Host: d, Guest: "/srv/" + string(rune('a'+i)), ReadOnly: true})
	}
	tests := []struct {
		name   string
		mounts []store.Mount
		want   string
	}{
		{"relative host folder", []store.Mount{m("src", "/root/src")}, "not an absolute path"},
		{"unclean host folder", []store.Mount{m(src+"/", "/root/src")}, "not clean: write " + src},
		{"missing host folder", []store.Mount{m(src+"-nope", "/root/src")}, "create it first"},
		{"a file", []store.Mount{m(file, "/root/src")}, "not a directory"},
		{"the host's root", []store.Mount{{Host: "/", Guest: "/srv/host", ReadOnly: true}}, "the host's whole filesystem"},
		{"banger's own files inside", []store.Mount{{Host: filepath.Dir(h.dir), Guest: "/srv/x", ReadOnly: true}}, "banger's own files"},
		{"inside banger's own files", []store.Mount{{Host: private, Guest: "/srv/x", ReadOnly: true}}, "banger's own files"},
		{"the bundle", []store.Mount{{Host: h.bundle.Dir(), Guest: "/srv/x", ReadOnly: true}}, "banger's own files"},
		{"not writable", []store.Mount{m(locked, "/root/src")}, "cannot read and write"},
		{"twice", []store.Mount{m(src, "/root/a"), m(src, "/root/b")}, "given twice"},
		{"bad guest folder", []store.Mount{m(src, "/etc/src")}, "inside /etc"},
		{"guest root", []store.Mount{m(src, "/root")}, "would hide"},
		{"overlapping guest folders", []store.Mount{m(src, "/srv"), {Host: docs, Guest: "/srv/docs", ReadOnly: true}}, "overlap"},
		{"too many", many, "at most 8"},
	}
	if os.Geteuid() == 0 {
		rootOwned := t.TempDir()
		tests = append(tests, struct {
			name   string
			mounts []store.Mount
			want   string
		}{"root-owned read-write under a root bangerd", []store.Mount{m(rootOwned, "/root/src")}, "owned by root"})
	}
	for _, tt := range tests {
		_, err := e.Plan(context.Background(), CreateOptions{Name: "x", Image: "minimal", Mounts: tt.mounts})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Plan(%s) = %v, want ErrInvalid with %q", tt.name, err, tt.want)
		}
	}
	// Read-only makes the unwritable folder fine.
	if _, err := e.Plan(context.Background(), CreateOptions{Name: "x", Image: "minimal", Mounts: []store.Mount{{Host: locked, Guest: "/srv/locked", ReadOnly: true}}}); err != nil {
		t.Errorf("Plan(an unwritable folder, read-only) = %v, want nil", err)
	}
	if vms, _ := e.List(context.Background()); len(vms) != 0 || len(h.serving()) != 0 || len(h.r.Calls()) != 0 {
		t.Errorf("refused plans changed something: %d VMs, serving %q, commands %q", len(vms), h.serving(), h.r.Calls())
	}
}

// TestMountsNeedQEMU: firecracker has no shared filesystem device, so
// hypervisor = auto boots a VM with host folders on qemu, and an explicit
// firecracker is refused.
func TestMountsNeedQEMU(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	src, _, _ := folders(t)
	o := CreateOptions{Name: "x", Image: "minimal", Mounts: []store.Mount{{Host: src, Guest: "/root/src"}}}
	e.cfg.Hypervisor = "auto" // the fake firecracker is available, so auto picks it
	p, err := e.Plan(context.Background(), o)
	if err != nil || p.backend.Name() != "qemu" {
		t.Errorf("Plan(auto, mounts) = %v, %v; want qemu", p, err)
	}
	if p, err := e.Plan(context.Background(), CreateOptions{Name: "x", Image: "minimal"}); err != nil || p.backend.Name() != "firecracker" {
		t.Errorf("Plan(auto, no mounts) = %v, %v; want firecracker", p, err)
	}
	e.cfg.Hypervisor = "firecracker"
	if _, err := e.Plan(context.Background(), o); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "host folders need qemu") {
		t.Errorf("Plan(firecracker, mounts) = %v, want a refusal saying host folders need qemu", err)
	}
}
