package vm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/bundle/bundletest"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/hypervisortest"
	"github.com/banger/banger/internal/isolation"
	"github.com/banger/banger/internal/logfile"
	"github.com/banger/banger/internal/nat"
	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/runner/runnertest"
	"github.com/banger/banger/internal/store"
)

// testHost is what an engine under test runs on: a real store and bundle in
// a temporary directory, the fake hypervisor, and a recording runner that
// plays ip, nft and debugfs.
type testHost struct {
	consoleMax int64 // engine ConsoleLogMax; 0: the default
	memoryMiB  int   // engine MemoryMiB; 0: 512
	autoWarm   bool  // engine WarmAfterCreate
	t          *testing.T
	dir        string
	store      *store.Store
	bundle     *bundle.Bundle
	fake       *hypervisortest.Backend
	r          *runnertest.Runner
	known      *KnownHosts
}

func newTestHost(t *testing.T) *testHost {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "state", "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rt := bundletest.Fake(t)
	b, err := bundle.Load(rt)
	if err != nil {
		t.Fatal(err)
	}
	key := bundletest.AuthorizedKey(t, rt)
	h := &testHost{t: t, dir: dir, store: st, bundle: b, fake: &hypervisortest.Backend{BackendName: "qemu", AuthorizedKey: key}}
	h.known = &KnownHosts{Path: filepath.Join(dir, "state", "known_hosts")}
	names := network.NamesFor(0)
	h.r = runnertest.Host(names.Bridge, netip.PrefixFrom(names.Gateway(), names.Subnet.Bits()).String())
	return h
}

// engine returns a new engine over the host, as a (re)started bangerd
// would make it; it is closed when the test ends.
func (h *testHost) engine() *Engine {
	names := network.NamesFor(0)
	images := &Images{Store: h.store, R: h.r, DataDir: filepath.Join(h.dir, "data"), CacheDir: filepath.Join(h.dir, "cache")}
	netm := &network.Manager{R: h.r, Bridge: names.Bridge, Subnet: names.Subnet}
	e := New(Config{
		Store:      h.store,
		Backends:   map[string]hypervisor.Backend{"qemu": h.fake, "firecracker": &hypervisortest.Backend{BackendName: "firecracker"}},
		Hypervisor: "qemu",
		Bundle:     func() (*bundle.Bundle, error) { return h.bundle, nil },
		Images:     images,
		Network:    netm,
		Names:      names,
		Runner:     h.r,
		DataDir:    filepath.Join(h.dir, "data"),
		RuntimeDir: filepath.Join(h.dir, "run"),
		VCPUs:      2, MemoryMiB: cmp.Or(h.memoryMiB, 512),
		ReadyTimeout:    5 * time.Second,
		Dial:            h.fake.Dial,
		ConsoleLogMax:   h.consoleMax,
		WarmAfterCreate: h.autoWarm,
	})
	e.SetCapabilities(NewCapabilities(e, Host{
		Runner: h.r, Net: netm, Names: names,
		Pool:      &network.Pool{M: netm, Prefix: names.PoolPrefix},
		NAT:       &nat.Manager{R: h.r, Table: names.Table, Bridge: names.Bridge, Subnet: names.Subnet},
		Isolation: &isolation.Manager{R: h.r, Table: names.Table, Bridge: names.Bridge, TAPPrefixes: []string{names.TAPPrefix}},
		Known:     h.known, Images: images,
		DNSServed: func() bool { return true },
		Upstreams: func() ([]string, error) { return nil, nil },
	}))
	h.t.Cleanup(e.Close)
	return e
}

func (h *testHost) create(e *Engine, name string) (*store.VM, error) {
	h.t.Helper()
	p, err := e.Plan(context.Background(), CreateOptions{Name: name, Image: "minimal"})
	if err != nil {
		return nil, err
	}
	return e.Create(p, nil)
}

func (h *testHost) mustCreate(e *Engine, name string) *store.VM {
	h.t.Helper()
	v, err := h.create(e, name)
	if err != nil {
		h.t.Fatalf("create %s: %v", name, err)
	}
	return v
}

func waitState(t *testing.T, e *Engine, name, want string) *store.VM {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := e.Get(context.Background(), name)
		if err == nil && v.State == want {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: state %+v, %v; want %s", name, v, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCreateStopStartDelete(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	v := h.mustCreate(e, "box")
	if v.State != StateRunning || v.PID == 0 || v.IP != "172.30.0.2" || !strings.HasPrefix(v.TAP, "bgtap-") {
		t.Fatalf("created %+v, want running with a pid, 172.30.0.2 and a bgtap- device", v)
	}
	for _, f := range []string{RootDisk(v), WorkDisk(v)} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("disk %s: %v, %v; want a private clone", f, fi, err)
		}
	}
	stages, _ := h.store.StageDurations(context.Background(), v.ID)
	var names []string
	for _, s := range stages {
		names = append(names, s.Stage)
	}
	if got := strings.Join(names, ","); got != "preparing disks,network,booting qemu,waiting for agent,waiting for ssh" {
		t.Errorf("stages = %s", got)
	}
	if b, _ := os.ReadFile(h.known.Path); !strings.HasPrefix(string(b), "box.vm ssh-ed25519 ") || strings.Count(string(b), "\n") != 1 {
		t.Errorf("known_hosts = %q, want the guest's one key pinned under box.vm", b)
	}
	if _, err := h.create(e, "box"); !errors.Is(err, ErrExists) {
		t.Errorf("second create of box = %v, want ErrExists", err)
	}

	v, err := e.Stop("box")
	if err != nil || v.State != StateStopped || v.PID != 0 || len(h.fake.Running()) != 0 {
		t.Fatalf("stop = %+v, %v; running %d; want stopped and no process", v, err, len(h.fake.Running()))
	}
	if !strings.Contains(strings.Join(h.r.Calls(), "\n"), "priv ip link del dev "+v.TAP) {
		t.Errorf("stop did not remove the TAP device: %q", h.r.Calls())
	}
	if _, err := e.Start("box", nil); err != nil {
		t.Fatalf("start: %v", err)
	}
	waitState(t, e, "box", StateRunning)
	if err := e.Delete("box"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := e.Get(context.Background(), "box"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after delete: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(v.Dir); !os.IsNotExist(err) {
		t.Errorf("disks after delete: %v", err)
	}
	if b, _ := os.ReadFile(h.known.Path); len(b) != 0 {
		t.Errorf("known_hosts after delete = %q", b)
	}
	if len(h.fake.Running()) != 0 {
		t.Errorf("processes after delete: %d", len(h.fake.Running()))
	}
}

// TestFailuresLeaveTheErrorStateOrNothing: a failure before the hypervisor
// runs undoes the create; one after it keeps the VM in the error state with
// its disks.
func TestFailuresLeaveTheErrorStateOrNothing(t *testing.T) {
	for _, tt := range []struct {
		name    string
		bh      hypervisortest.Behavior
		kept    bool   // the VM stays, in the error state
		wantErr string // in the error
	}{
		{"start fails", hypervisortest.Behavior{FailStart: errors.New("no such kernel")}, false, "no such kernel"},
		{"agent never answers", hypervisortest.Behavior{NoAgent: true}, true, "waiting for the guest agent"},
		{"ssh refuses", hypervisortest.Behavior{NoSSH: true}, true, "waiting for ssh"},
		{"hypervisor exits at boot", hypervisortest.Behavior{ExitAtBoot: true}, true, "exited during boot"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newTestHost(t)
			e := h.engine()
			e.cfg.ReadyTimeout = 500 * time.Millisecond
			h.fake.Misbehave(tt.bh)
			_, err := h.create(e, "dud")
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("create = %v, want an error with %q", err, tt.wantErr)
			}
			v, gerr := e.Get(context.Background(), "dud")
			if !tt.kept {
				if !errors.Is(gerr, ErrNotFound) {
					t.Fatalf("after a failed create: %+v, %v; want nothing kept", v, gerr)
				}
				if ents, _ := os.ReadDir(filepath.Join(h.dir, "data", "vms")); len(ents) != 0 {
					t.Errorf("VM dirs left: %d", len(ents))
				}
				return
			}
			if gerr != nil || v.State != StateError || v.PID != 0 || v.Error == "" {
				t.Fatalf("after a failed boot: %+v, %v; want the error state, no pid, the error recorded", v, gerr)
			}
			if _, err := os.Stat(RootDisk(v)); err != nil {
				t.Errorf("disks of the failed VM: %v", err)
			}
			if len(h.fake.Running()) != 0 {
				t.Errorf("hypervisor left running")
			}
			// It can be fixed and started again, and deleted.
			h.fake.Misbehave(hypervisortest.Behavior{})
			e.cfg.ReadyTimeout = 5 * time.Second
			if _, err := e.Start("dud", nil); err != nil {
				t.Fatalf("start after the failure: %v", err)
			}
			if err := e.Delete("dud"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestAdoptAfterDaemonCrash: a second engine (a restarted bangerd) adopts
// the running VM, marks a VM whose hypervisor died stopped, and reconciles.
func TestAdoptAfterDaemonCrash(t *testing.T) {
	h := newTestHost(t)
	e1 := h.engine()
	keep := h.mustCreate(e1, "keep")
	gone := h.mustCreate(e1, "gone")
	e1.Close() // the daemon dies; its hypervisors live on
	for _, inst := range h.fake.Running() {
		if inst.PID() == gone.PID {
			inst.Crash()
		}
	}
	e2 := h.engine()
	if err := e2.Adopt(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e2.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v, _ := e2.Get(context.Background(), "keep"); v.State != StateRunning || v.PID != keep.PID {
		t.Errorf("keep after a restart: %+v, want running with pid %d", v, keep.PID)
	}
	if v, _ := e2.Get(context.Background(), "gone"); v.State != StateStopped || v.PID != 0 {
		t.Errorf("gone after a restart: %+v, want stopped", v)
	}
	// The adopted VM is fully controlled: stop works through the agent.
	if _, err := e2.Stop("keep"); err != nil {
		t.Fatal(err)
	}
	if len(h.fake.Running()) != 0 {
		t.Errorf("processes after stopping the adopted VM: %d", len(h.fake.Running()))
	}
}

// TestCrashIsAnError: a hypervisor that dies on its own, by a signal
// nobody sent, leaves the VM in the error state naming the signal; a guest
// that powers off leaves it stopped.
func TestCrashIsAnError(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	h.mustCreate(e, "a")
	h.mustCreate(e, "b")
	for _, inst := range h.fake.Running() {
		if strings.Contains(inst.Spec().Cmdline, ":a:eth0") {
			inst.Crash()
		} else {
			inst.PowerOff() // a poweroff from inside the guest
		}
	}
	if v := waitState(t, e, "a", StateError); !strings.Contains(v.Error, "signal 9 (SIGKILL)") {
		t.Errorf("a crashed: error %q, want the signal", v.Error)
	}
	waitState(t, e, "b", StateStopped)
}

// TestSameNameRace: of concurrent creates of one name, exactly one wins.
func TestSameNameRace(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = h.create(e, "same")
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrExists):
			t.Errorf("a losing create failed with %v, want ErrExists", err)
		}
	}
	if ok != 1 || h.fake.Starts() != 1 {
		t.Errorf("%d creates won and %d guests booted, want 1 and 1", ok, h.fake.Starts())
	}
}

// TestStopCancelsABoot: a stop does not wait for a boot's readiness checks.
func TestStopCancelsABoot(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	e.cfg.ReadyTimeout = time.Minute
	h.fake.Misbehave(hypervisortest.Behavior{NoAgent: true})
	done := make(chan error, 1)
	go func() {
		_, err := h.create(e, "slow")
		done <- err
	}()
	waitState(t, e, "slow", StateStarting)
	start := time.Now()
	if _, err := e.Stop("slow"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("stop of a booting VM took %v", d)
	}
	if err := <-done; err == nil {
		t.Error("the create of a VM stopped while booting succeeded")
	}
	waitState(t, e, "slow", StateStopped)
}

func TestBadInputChangesNothing(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	for _, tt := range []struct {
		o    CreateOptions
		kind error
		want string
	}{
		{CreateOptions{Name: "Bad_Name"}, ErrInvalid, "invalid VM name"},
		{CreateOptions{Name: "x", Image: "nope"}, ErrInvalid, "nope"},
		{CreateOptions{Name: "x", Image: "../../etc/passwd"}, ErrInvalid, "no image named"},
		{CreateOptions{Name: "x", MemoryMiB: 64}, ErrInvalid, "too small"},
		{CreateOptions{Name: "x", VCPUs: 99}, ErrInvalid, "--vcpus"},
		{CreateOptions{Name: "x", DiskSize: 1 << 20}, ErrInvalid, "smaller than image"},
	} {
		_, err := e.Plan(context.Background(), tt.o)
		if !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Plan(%+v) = %v, want %v with %q", tt.o, err, tt.kind, tt.want)
		}
		if strings.Contains(fmt.Sprint(err), "register one with 'banger image register --name ../") {
			t.Errorf("Plan(%+v) suggests registering a path as a name: %v", tt.o, err)
		}
	}
	if vms, _ := e.List(context.Background()); len(vms) != 0 || len(h.r.Calls()) != 0 {
		t.Errorf("refused plans changed something: %d VMs, commands %q", len(vms), h.r.Calls())
	}
}

// A VM name that happens to prefix another VM's id is a different VM: the
// lookup by name for create, and the lock for operations, must not confuse
// them.
func TestNameIsNotAnIDPrefix(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	ctx := context.Background()
	names := network.NamesFor(0)
	if err := h.store.CreateVMWithLease(ctx, &store.VM{ID: "abc123def456", Name: "box", State: StateStopped}, names.Subnet, names.Gateway()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.byName(ctx, "abc"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("byName(abc) = %v, want not found", err)
	}
	v, unlock, err := e.lockVM(ctx, "abc")
	if err != nil || v.Name != "box" {
		t.Fatalf("lockVM(abc) = %+v, %v; want box by id prefix", v, err)
	}
	unlock()
	// The lock taken through the id prefix is the name's lock.
	un, ok := e.locks.tryLock("box")
	if !ok {
		t.Fatal("lockVM did not release the name lock")
	}
	un()
	if _, _, err := e.lockVM(ctx, "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lockVM(nosuch) = %v, want ErrNotFound", err)
	}
}

// TestConsoleLogCapped: a guest that floods its console cannot grow the
// log past the cap: the engine rotates it while the VM runs.
func TestConsoleLogCapped(t *testing.T) {
	h := newTestHost(t)
	h.consoleMax = 4096
	e := h.engine()
	v := h.mustCreate(e, "noisy")
	w, err := os.OpenFile(ConsoleLog(v), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	line := strings.Repeat("flood ", 20) + "\n"
	for range 200 { // 24 KiB, six times the cap
		w.WriteString(line)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		fi, err := os.Stat(ConsoleLog(v))
		old, oerr := os.Stat(ConsoleLog(v) + logfile.RotatedSuffix)
		if err == nil && oerr == nil && fi.Size() <= h.consoleMax && old.Size() <= h.consoleMax {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("console log %v %v, rotated %v %v: want both within %d bytes", fi, err, old, oerr, h.consoleMax)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
