package vm

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/bundle/bundletest"
	"github.com/banger/banger/internal/egress"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/hypervisortest"
	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/isolation"
	"github.com/banger/banger/internal/logfile"
	"github.com/banger/banger/internal/nat"
	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/portfwd"
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
	maxMemory  int   // engine MaxMemoryMiB; 0: no bound
	t          *testing.T
	dir        string
	store      *store.Store
	bundle     *bundle.Bundle
	fake       *hypervisortest.Backend
	r          *runnertest.Runner
	known      *KnownHosts
	shares     *hypervisortest.Shares
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
	h := &testHost{t: t, dir: dir, store: st, bundle: b, fake: &hypervisortest.Backend{BackendName: "qemu", AuthorizedKey: key}, shares: &hypervisortest.Shares{}}
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
		Store:       h.store,
		Backends:    map[string]hypervisor.Backend{"qemu": h.fake, "firecracker": &hypervisortest.Backend{BackendName: "firecracker"}},
		Hypervisor:  "qemu",
		Bundle:      func() (*bundle.Bundle, error) { return h.bundle, nil },
		Images:      images,
		Network:     netm,
		Names:       names,
		Runner:      h.r,
		DataDir:     filepath.Join(h.dir, "data"),
		RuntimeDir:  filepath.Join(h.dir, "run"),
		PrivateDirs: []string{h.dir},
		VCPUs:       2, MemoryMiB: cmp.Or(h.memoryMiB, 512),
		ReadyTimeout:    5 * time.Second,
		Dial:            h.fake.Dial,
		ConsoleLogMax:   h.consoleMax,
		WarmAfterCreate: h.autoWarm,
		MaxMemoryMiB:    h.maxMemory,
	})
	e.SetCapabilities(NewCapabilities(e, Host{
		Runner: h.r, Net: netm, Names: names,
		Pool:      &network.Pool{M: netm, Prefix: names.PoolPrefix},
		NAT:       &nat.Manager{R: h.r, Table: names.Table, Bridge: names.Bridge, Subnet: names.Subnet},
		Egress:    &egress.Manager{R: h.r, Table: egress.TableName(names.Table), Bridge: names.Bridge, Subnet: names.Subnet},
		Isolation: &isolation.Manager{R: h.r, Table: names.Table, Bridge: names.Bridge, TAPPrefixes: []string{names.TAPPrefix}},
		Known:     h.known, Images: images,
		DNSServed: func() bool { return true },
		Upstreams: func() ([]string, error) { return nil, nil },
		Shares:    h.shares,
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

// TestKernelStallBootsAgain: a cold boot whose kernel stops before init
// (its console silent for EarlyStall) is booted once more, and says so; a
// second stall is the boot's error, with the VM kept in the error state
// and no hypervisor left.
func TestKernelStallBootsAgain(t *testing.T) {
	for _, tt := range []struct {
		name    string
		stalls  int
		wantErr string
	}{
		{"one stall", 1, ""},
		{"two stalls", 2, "stopped in early boot"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newTestHost(t)
			e := h.engine()
			e.cfg.EarlyStall = 200 * time.Millisecond
			h.fake.Misbehave(hypervisortest.Behavior{StallBoots: tt.stalls})
			v, pr, err := h.createWith(e, CreateOptions{Name: "stally"})
			if h.fake.Starts() != 2 {
				t.Errorf("starts = %d, want 2 (the boot and one more)", h.fake.Starts())
			}
			if !strings.Contains(pr.text(), "stopped in early boot") || !strings.Contains(pr.text(), "booting it again") {
				t.Errorf("progress = %q, want it to say the kernel stalled and the VM boots again", pr.text())
			}
			running := h.fake.Running()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("create = %v, want an error with %q", err, tt.wantErr)
				}
				got, gerr := e.Get(context.Background(), "stally")
				if gerr != nil || got.State != StateError || got.PID != 0 {
					t.Errorf("after two stalls: %+v, %v; want the error state and no pid", got, gerr)
				}
				if len(running) != 0 {
					t.Errorf("%d hypervisors left running", len(running))
				}
				return
			}
			if err != nil {
				t.Fatalf("create after one stall: %v", err)
			}
			if v.State != StateRunning || len(running) != 1 || running[0].PID() != v.PID {
				t.Errorf("after one stall: state %s, pid %d, running %d; want the second hypervisor running and on record", v.State, v.PID, len(running))
			}
		})
	}
}

// TestKernelStallThenStartFails: when the second start after a stall
// fails, the boot fails with its error and the VM is kept in the error
// state, with nothing running.
func TestKernelStallThenStartFails(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	e.cfg.EarlyStall = 300 * time.Millisecond
	h.fake.Misbehave(hypervisortest.Behavior{StallBoots: 1})
	done := make(chan error, 1)
	go func() {
		_, _, err := h.createWith(e, CreateOptions{Name: "stally"})
		done <- err
	}()
	for h.fake.Starts() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	h.fake.Misbehave(hypervisortest.Behavior{FailStart: errors.New("no more qemu")})
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "no more qemu") {
		t.Fatalf("create = %v, want the second start's error", err)
	}
	v, gerr := e.Get(context.Background(), "stally")
	if gerr != nil || v.State != StateError || v.PID != 0 {
		t.Errorf("after the failed second start: %+v, %v; want the error state and no pid", v, gerr)
	}
	if n := len(h.fake.Running()); n != 0 {
		t.Errorf("%d hypervisors left running", n)
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

// Plan bounds a VM's memory by the host's (Config.MaxMemoryMiB).
func TestPlanBoundsMemoryByTheHost(t *testing.T) {
	h := newTestHost(t)
	h.maxMemory = 2048
	e := h.engine()
	for _, tt := range []struct {
		mem  int
		want string // in the error; "" for none
	}{
		{2048, ""},
		{2049, "memory 2049 MiB is more than this host has (2048 MiB)"},
		{1 << 20, "more than this host has (2048 MiB): use a smaller --memory"},
	} {
		_, err := e.Plan(context.Background(), CreateOptions{Name: "big", Image: "minimal", MemoryMiB: tt.mem})
		if tt.want == "" && err != nil {
			t.Errorf("Plan(memory %d) = %v, want no error", tt.mem, err)
		}
		if tt.want != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(fmt.Sprint(err), tt.want)) {
			t.Errorf("Plan(memory %d) = %v, want %v with %q", tt.mem, err, ErrInvalid, tt.want)
		}
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

// TestEgressFollowsNAT: a policy is applied at boot to NAT VMs only,
// changed at once on a running VM, and removed by open, stop and delete;
// bad policies change nothing.
func TestEgressFollowsNAT(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	ctx := context.Background()
	// A policy in force is one the manager tracks (its counters can be
	// read); the rules it wrote are the egress package's to test.
	inForce := func(id string) bool {
		_, err := e.EgressStats(ctx, &store.VM{ID: id})
		return !errors.Is(err, egress.ErrNoPolicy)
	}
	applied := func(id string) bool {
		for _, c := range h.r.Calls() {
			if strings.HasPrefix(c, "priv nft") && strings.Contains(c, "v_"+id+"_fwd") {
				return inForce(id)
			}
		}
		return false
	}
	removed := func(id string) bool { return !inForce(id) }
	plain := h.mustCreate(e, "plain")
	if applied(plain.ID) {
		t.Errorf("a VM without NAT got egress rules")
	}
	p, err := e.Plan(ctx, CreateOptions{Name: "agent", Image: "minimal", Egress: &egress.Policy{Mode: egress.ModeAllow, Allow: mustList(t, "192.0.2.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := e.Create(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !v.NAT || !applied(v.ID) {
		t.Fatalf("agent: nat %v, rules applied %v; want an allow policy to turn NAT on and apply", v.NAT, applied(v.ID))
	}
	if got, _ := PolicyOf(v); got.String() != "allow 192.0.2.0/24" {
		t.Errorf("agent's policy = %q", got)
	}

	// Bad input changes nothing.
	bad := &egress.Policy{Mode: egress.ModeOpen, Allow: mustList(t, "10.0.0.0/8")}
	if _, err := e.Set("agent", SetOptions{Egress: bad}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Set(open with a list) = %v, want ErrInvalid", err)
	}
	if got, _ := e.Get(ctx, "agent"); got.Egress != v.Egress {
		t.Errorf("a refused change changed the record: %q, was %q", got.Egress, v.Egress)
	}

	h.r.Reset()
	open := egress.Open()
	if v, err = e.Set("agent", SetOptions{Egress: &open}); err != nil || !v.NAT {
		t.Fatalf("Set(open) = %+v, %v", v, err)
	}
	if !removed(v.ID) {
		t.Errorf("open left the VM's rules: %q", h.r.Calls())
	}
	h.r.Reset()
	def := egress.Policy{}
	if v, err = e.Set("agent", SetOptions{Egress: &def}); err != nil || v.Egress != "" || !applied(v.ID) {
		t.Fatalf("Set(default) = %+v, %v; applied %v", v, err, applied(v.ID))
	}
	h.r.Reset()
	if _, err := e.Stop("agent"); err != nil {
		t.Fatal(err)
	}
	if !removed(v.ID) {
		t.Errorf("stop left the VM's rules: %q", h.r.Calls())
	}
}

func mustList(t *testing.T, s string) []egress.Entry {
	t.Helper()
	l, err := egress.ParseList(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestImageKernel: the VMs of an image with its own kernel boot it, not the
// bundle's, and say clearly when it is gone.
func TestImageKernel(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	ctx := context.Background()
	dir := t.TempDir()
	kern, initrd, rootfs := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd.img"), filepath.Join(dir, "root.ext4")
	os.WriteFile(kern, []byte("\x7fELF own kernel"), 0o644)
	os.WriteFile(initrd, []byte("\x1f\x8b own initrd"), 0o644)
	if err := ext4.WriteMagic(rootfs, 4<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Images().Register(ctx, h.bundle, RegisterOptions{Name: "own", Rootfs: rootfs, Kernel: kern}); !errors.Is(err, ErrInvalid) {
		t.Errorf("register with --kernel alone = %v, want ErrInvalid", err)
	}
	if _, err := e.Images().Register(ctx, h.bundle, RegisterOptions{Name: "own", Rootfs: rootfs, Kernel: kern, Initrd: initrd}); err != nil {
		t.Fatal(err)
	}
	p, err := e.Plan(ctx, CreateOptions{Name: "k", Image: "own"})
	if err != nil {
		t.Fatal(err)
	}
	v, err := e.Create(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	running := h.fake.Running()
	if len(running) != 1 || running[0].Spec().Kernel != kern || running[0].Spec().Initrd != initrd {
		t.Fatalf("the VM booted %+v, want the image's own kernel %s", running, kern)
	}
	h.mustCreate(e, "plain")
	for _, inst := range h.fake.Running() {
		if strings.Contains(inst.Spec().Cmdline, ":plain:") && inst.Spec().Kernel != h.bundle.Path(h.bundle.Kernel) {
			t.Errorf("a bundle image's VM booted %s, want the bundle's kernel", inst.Spec().Kernel)
		}
	}
	if _, err := e.Stop(v.Name); err != nil {
		t.Fatal(err)
	}
	os.Remove(kern)
	if _, err := e.Start(v.Name, nil); err == nil || !strings.Contains(err.Error(), "boots its image's own kernel, and "+kern+" is gone") {
		t.Errorf("start with the image's kernel gone = %v, want it said", err)
	}
}

// TestWorkSize: a new VM's /root disk is the default size (sparse) or the
// asked one; a stopped VM's grows and keeps its record; shrinking, growing
// a running VM and too small a size are refused and change nothing.
func TestWorkSize(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	v := h.mustCreate(e, "room")
	if fi, err := os.Stat(WorkDisk(v)); err != nil || fi.Size() != DefaultWorkSize || v.WorkSizeBytes != DefaultWorkSize {
		t.Fatalf("default /root: %v, %v, recorded %d; want %d", fi, err, v.WorkSizeBytes, DefaultWorkSize)
	}
	if !strings.Contains(strings.Join(h.r.Calls(), "\n"), "run resize2fs "+WorkDisk(v)) {
		t.Errorf("create did not resize the /root filesystem: %q", h.r.Calls())
	}
	p, err := e.Plan(context.Background(), CreateOptions{Name: "big", Image: "minimal", WorkSize: 40 << 30})
	if err != nil {
		t.Fatal(err)
	}
	big, err := e.Create(p, nil)
	if err != nil || big.WorkSizeBytes != 40<<30 {
		t.Fatalf("create --work-size 40G = %+v, %v", big, err)
	}
	for _, tt := range []struct {
		o    CreateOptions
		want string
	}{
		{CreateOptions{Name: "x", Image: "minimal", WorkSize: 1}, "a /root of image minimal needs 64M or more"},
		{CreateOptions{Name: "x", Image: "minimal", WorkSize: MaxWorkSize + 1}, "more than banger allows"},
	} {
		if _, err := e.Plan(context.Background(), tt.o); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Plan(work size %d) = %v, want ErrInvalid with %q", tt.o.WorkSize, err, tt.want)
		}
	}

	refuse := func(size int64, want string) {
		t.Helper()
		h.r.Reset()
		if _, err := e.Set("room", SetOptions{WorkSize: size}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("Set(work size %d) = %v, want ErrInvalid with %q", size, err, want)
		}
		got, _ := e.Get(context.Background(), "room")
		fi, _ := os.Stat(WorkDisk(v))
		if got.WorkSizeBytes != fi.Size() || len(h.r.Calls()) != 0 {
			t.Errorf("refused Set changed things: recorded %d, disk %d, commands %q", got.WorkSizeBytes, fi.Size(), h.r.Calls())
		}
	}
	refuse(32<<30, "grows only while the VM is stopped")
	if _, err := e.Stop("room"); err != nil {
		t.Fatal(err)
	}
	refuse(8<<30, "/root only grows: pick --work-size 16G or more")
	refuse(MaxWorkSize+1, "more than banger allows")
	nat := true
	if got, err := e.Set("room", SetOptions{WorkSize: 32 << 30, NAT: &nat}); err != nil || got.WorkSizeBytes != 32<<30 || !got.NAT {
		t.Fatalf("Set(32G, nat) on a stopped VM = %+v, %v", got, err)
	}
	if fi, _ := os.Stat(WorkDisk(v)); fi.Size() != 32<<30 {
		t.Errorf("grown /root is %d bytes, want 32G", fi.Size())
	}
	if got, _ := e.Get(context.Background(), "room"); got.WorkSizeBytes != 32<<30 {
		t.Errorf("recorded work size %d after the grow, want 32G", got.WorkSizeBytes)
	}
	// The same size again is nothing to do.
	h.r.Reset()
	if _, err := e.Set("room", SetOptions{WorkSize: 32 << 30}); err != nil || strings.Contains(strings.Join(h.r.Calls(), "\n"), "resize2fs") {
		t.Errorf("Set(same size) = %v, commands %q; want nothing done", err, h.r.Calls())
	}
	if _, err := e.Start("room", nil); err != nil {
		t.Fatal(err)
	}
}

// guestServices gives the fake's guests a TCP server on 8080 that greets
// with its address and then echoes, and a UDP echo server on 5353.
func guestServices(b *hypervisortest.Backend) {
	b.Serve("tcp", 8080, func(guest netip.Addr, c net.Conn) {
		fmt.Fprintf(c, "hello from %s\n", guest)
		io.Copy(c, c)
	})
	b.Serve("udp", 5353, func(guest netip.Addr, c net.Conn) {
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			c.Write(append([]byte("echo "), buf[:n]...))
		}
	})
}

// freePort returns a loopback port nothing listens on now.
func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// greeting reads the first line a published TCP port answers, or the error.
func greeting(port uint16) (string, error) {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func udpEcho(port uint16, msg string) (string, error) {
	c, err := net.Dial("udp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

func mustSpec(t *testing.T, s string) portfwd.Spec {
	t.Helper()
	sp, err := portfwd.ParseSpec(s)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// TestPublishedPorts follows the published-ports capability through a
// VM's life over the fake hypervisor: listening from the create, closed by
// a stop, a poweroff and a delete, back after a start and after a bangerd
// restart, added and removed while running or stopped, and refused when
// busy, taken by another VM or overlapping.
func TestPublishedPorts(t *testing.T) {
	h := newTestHost(t)
	guestServices(h.fake)
	e := h.engine()
	ctx := context.Background()
	web, dns := freePort(t), freePort(t)
	webSpec := mustSpec(t, fmt.Sprintf("%d:8080", web))
	dnsSpec := mustSpec(t, fmt.Sprintf("%d:5353/udp", dns))
	p, err := e.Plan(ctx, CreateOptions{Name: "pub", Image: "minimal", Ports: []portfwd.Spec{webSpec, dnsSpec}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := e.Create(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := "hello from " + v.IP
	answers := func(when string) {
		t.Helper()
		if got, err := greeting(web); err != nil || got != want {
			t.Errorf("%s: TCP port %d answers %q, %v; want %q", when, web, got, err, want)
		}
		if got, err := udpEcho(dns, "q"); err != nil || got != "echo q" {
			t.Errorf("%s: UDP port %d answers %q, %v; want the echo", when, dns, got, err)
		}
	}
	closed := func(when string) {
		t.Helper()
		if _, err := greeting(web); err == nil {
			t.Errorf("%s: TCP port %d still answers", when, web)
		}
		for _, s := range []portfwd.Spec{webSpec, dnsSpec} {
			if err := portfwd.Probe(s); err != nil {
				t.Errorf("%s: %s is not free: %v", when, s, err)
			}
		}
	}
	answers("after create")
	if ps := e.Ports(v); len(ps) != 2 || !ps[0].Listening || !ps[1].Listening || ps[0].Spec != webSpec {
		t.Errorf("Ports() = %+v, want both listening", ps)
	}

	// Refusals change nothing: a busy host port, one another VM has, one
	// that overlaps the VM's own.
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := uint16(busy.Addr().(*net.TCPAddr).Port)
	other := h.mustCreate(e, "other")
	for _, tt := range []struct {
		vm   string
		spec string
		kind error
		want string
	}{
		{"pub", fmt.Sprintf("%d:80", busyPort), ErrExists, "is already in use: pick another host port"},
		{"other", fmt.Sprintf("%d:80", web), ErrExists, "is published by VM pub already"},
		{"other", fmt.Sprintf("0.0.0.0:%d:80", web), ErrExists, "is published by VM pub already"},
		{"pub", fmt.Sprintf("0.0.0.0:%d:80", web), ErrInvalid, "both take host port"},
	} {
		if _, err := e.AddPorts(tt.vm, []portfwd.Spec{mustSpec(t, tt.spec)}); !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("AddPorts(%s, %s) = %v, want %v with %q", tt.vm, tt.spec, err, tt.kind, tt.want)
		}
	}
	if _, err := e.Plan(ctx, CreateOptions{Name: "late", Image: "minimal", Ports: []portfwd.Spec{mustSpec(t, fmt.Sprintf("%d:80", busyPort))}}); !errors.Is(err, ErrExists) {
		t.Errorf("Plan with a busy port = %v, want ErrExists", err)
	}
	for _, name := range []string{"pub", "other"} {
		if got, _ := e.Get(ctx, name); len(got.Ports) != map[string]int{"pub": 2, "other": 0}[name] {
			t.Errorf("refusals changed the ports of %s: %+v", name, got.Ports)
		}
	}

	// Added to a running VM: listening at once; removed: closed at once.
	extra := freePort(t)
	extraSpec := mustSpec(t, fmt.Sprintf("%d:8080", extra))
	if got, err := e.AddPorts("pub", []portfwd.Spec{extraSpec}); err != nil || len(got.Ports) != 3 {
		t.Fatalf("AddPorts(pub) = %+v, %v", got, err)
	}
	if got, err := greeting(extra); err != nil || got != want {
		t.Errorf("added port %d answers %q, %v", extra, got, err)
	}
	if _, err := e.RemovePorts("pub", []portfwd.Selector{{Proto: "tcp", HostPort: 1}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("RemovePorts(an unpublished port) = %v, want ErrNotFound", err)
	}
	if got, err := e.RemovePorts("pub", []portfwd.Selector{{Proto: "tcp", HostPort: extra}}); err != nil || len(got.Ports) != 2 {
		t.Fatalf("RemovePorts(pub, %d) = %+v, %v", extra, got, err)
	}
	if err := portfwd.Probe(extraSpec); err != nil {
		t.Errorf("removed port %d still taken: %v", extra, err)
	}

	if _, err := e.Stop("pub"); err != nil {
		t.Fatal(err)
	}
	closed("after stop")
	if ps := e.Ports(v); len(ps) != 2 || ps[0].Listening {
		t.Errorf("Ports() of a stopped VM = %+v, want none listening", ps)
	}
	// Added to a stopped VM: recorded, listened on at the next start.
	if _, err := e.AddPorts("pub", []portfwd.Spec{extraSpec}); err != nil {
		t.Fatal(err)
	}
	if err := portfwd.Probe(extraSpec); err != nil {
		t.Errorf("a port added to a stopped VM is listened on: %v", err)
	}
	if _, err := e.Start("pub", nil); err != nil {
		t.Fatal(err)
	}
	answers("after start")
	if got, err := greeting(extra); err != nil || got != want {
		t.Errorf("port added while stopped, after start: %q, %v", got, err)
	}

	// A bangerd restart: the old engine's relays end with it, the new one
	// listens again for the VM it adopts.
	e.Close()
	closed("with bangerd down")
	e = h.engine()
	if err := e.Adopt(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	answers("after a bangerd restart")

	// A start whose port was taken meanwhile fails at "network", saying
	// how to go on, and leaves nothing listening.
	if _, err := e.Stop("pub"); err != nil {
		t.Fatal(err)
	}
	squat, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", web))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Start("pub", nil)
	squat.Close()
	if err == nil || !strings.Contains(err.Error(), "is already in use") || !strings.Contains(err.Error(), fmt.Sprintf("banger vm port rm pub 127.0.0.1:%d/tcp", web)) {
		t.Errorf("start with a taken port = %v, want the busy port and how to remove it", err)
	}
	closed("after the refused start")
	if _, err := e.Start("pub", nil); err != nil {
		t.Fatal(err)
	}
	answers("after the port was freed")

	// A guest that powers off ends its relays too.
	for _, inst := range h.fake.Running() {
		if strings.Contains(inst.Spec().Cmdline, ":pub:eth0") {
			inst.PowerOff()
		}
	}
	waitState(t, e, "pub", StateStopped)
	closed("after a guest poweroff")
	if _, err := e.Start("pub", nil); err != nil {
		t.Fatal(err)
	}
	if err := e.Delete("pub"); err != nil {
		t.Fatal(err)
	}
	closed("after delete")
	// The deleted VM's ports are free for another.
	if _, err := e.AddPorts("other", []portfwd.Spec{webSpec}); err != nil {
		t.Errorf("taking a deleted VM's port: %v", err)
	}
	if got, err := greeting(web); err != nil || got != "hello from "+other.IP {
		t.Errorf("the port now published by other answers %q, %v", got, err)
	}
}

func TestGuestPeer(t *testing.T) {
	refuse := guestPeer(&network.Manager{Subnet: netip.MustParsePrefix("172.30.0.0/24")})
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"172.30.0.2", true}, {"172.30.0.254", true}, {"172.30.0.1", false}, {"127.0.0.1", false}, {"172.30.1.2", false}, {"192.0.2.1", false},
	} {
		if got := refuse(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("guestPeer(%s) = %t, want %t", tt.addr, got, tt.want)
		}
	}
}

// An operation that waited on a VM's lock while the VM was deleted is told
// so by the VM's name, not its id.
func TestDeletedWhileWaitingOnTheLock(t *testing.T) {
	h := newTestHost(t)
	e := h.engine()
	v := h.mustCreate(e, "box")
	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"stop", func() error { _, err := e.Stop("box"); return err }},
		{"start", func() error { _, err := e.Start("box", nil); return err }},
		{"delete", func() error { return e.Delete("box") }},
	} {
		t.Run(op.name, func(t *testing.T) {
			if op.name != "stop" {
				v = h.mustCreate(e, "box")
			}
			// The test holds the lock, as a delete does while it works.
			unlock := e.locks.lock("box")
			done := make(chan error, 1)
			go func() { done <- op.do() }()
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
				e.locks.mu.Lock()
				waiting := e.locks.m["box"] != nil && e.locks.m["box"].users == 2
				e.locks.mu.Unlock()
				if waiting {
					break
				}
				if time.Now().After(deadline) {
					unlock()
					t.Fatalf("%s of box never waited on its lock", op.name)
				}
			}
			if err := h.store.DeleteVM(context.Background(), v.ID); err != nil {
				unlock()
				t.Fatal(err)
			}
			unlock()
			err := <-done
			if !errors.Is(err, ErrNotFound) || !strings.Contains(fmt.Sprint(err), "VM box was deleted meanwhile") || strings.Contains(fmt.Sprint(err), v.ID) {
				t.Errorf("%s of a VM deleted while it waited = %v, want %v: VM box was deleted meanwhile (no id %s)", op.name, err, ErrNotFound, v.ID)
			}
		})
	}
}
