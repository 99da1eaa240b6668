package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/store"
)

func testDaemon(t *testing.T) *Daemon {
	t.Helper()
	dir := t.TempDir()
	paths := config.Paths{
		StateDir:   filepath.Join(dir, "state"),
		DataDir:    filepath.Join(dir, "data"),
		RuntimeDir: filepath.Join(dir, "run"),
		DB:         filepath.Join(dir, "state", "banger.db"),
		Socket:     filepath.Join(dir, "run", "bangerd.sock"),
		KnownHosts: filepath.Join(dir, "state", "known_hosts"),
	}
	d, err := New(Options{Config: config.Defaults(), Paths: paths})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.store.Close() })
	return d
}

// A VM name that happens to prefix another VM's id is a different VM: the
// lookup by name for create, and the lock for operations, must not confuse
// them.
func TestNameIsNotAnIDPrefix(t *testing.T) {
	d := testDaemon(t)
	ctx := context.Background()
	if err := d.store.CreateVM(ctx, &store.VM{ID: "abc123def456", Name: "box", State: StateStopped}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.vmByName(ctx, "abc"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("vmByName(abc) = %v, want not found", err)
	}
	vm, unlock, err := d.lockVM(ctx, "abc")
	if err != nil || vm.Name != "box" {
		t.Fatalf("lockVM(abc) = %+v, %v; want box by id prefix", vm, err)
	}
	unlock()
	// The lock taken through the id prefix is the name's lock.
	l := d.vmLock("box")
	if !l.TryLock() {
		t.Fatal("lockVM did not release the name lock")
	}
	l.Unlock()
	if _, _, err := d.lockVM(ctx, "nosuch"); !rpc.IsCode(apiErr(err), rpc.CodeNotFound) {
		t.Fatalf("lockVM(nosuch) = %v, want not_found", err)
	}
}

// apiErr converts a daemon error into the client-side form for IsCode.
func apiErr(err error) error {
	if err == nil {
		return nil
	}
	code, status := codeOf(err)
	return &rpc.APIError{Status: status, Err: rpc.Error{Message: err.Error(), Code: code}}
}
