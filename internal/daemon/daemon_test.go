package daemon_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/daemon"
	"github.com/banger/banger/internal/rpc/rpctest"
	"github.com/banger/banger/internal/runner/runnertest"
)

// TestOneDaemonPerState: two bangerds never share a state dir, even with
// different runtime dirs (sudo banger has none, a root login shell has
// /run/user/0): the lock lives beside the database.
func TestOneDaemonPerState(t *testing.T) {
	dir := rpctest.TempDir(t)
	state := filepath.Join(dir, "state")
	paths := func(rt string) config.Paths {
		return config.Paths{StateDir: state, DataDir: filepath.Join(dir, "data"), RuntimeDir: filepath.Join(dir, rt),
			Socket: filepath.Join(dir, rt, "bangerd.sock"), DB: filepath.Join(state, "banger.db"),
			KnownHosts: filepath.Join(state, "known_hosts"), Lock: filepath.Join(state, "bangerd.lock")}
	}
	open := func(rt string) (*daemon.Daemon, error) {
		return daemon.New(daemon.Options{Config: config.Defaults(), Paths: paths(rt), Runner: &runnertest.Runner{}, NoHost: true})
	}
	first, err := open("run-a")
	if err != nil {
		t.Fatal(err)
	}
	_, err = open("run-b")
	if err == nil || !strings.Contains(err.Error(), "another bangerd (pid "+strconv.Itoa(os.Getpid())+") already uses this state") {
		t.Fatalf("a second bangerd on the same state = %v, want it refused naming the first", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := open("run-b")
	if err != nil {
		t.Fatalf("a bangerd after the first closed = %v", err)
	}
	second.Close()
}
