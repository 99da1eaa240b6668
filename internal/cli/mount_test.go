package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/rpc/rpctest"
)

func TestParseMount(t *testing.T) {
	cwd, _ := os.Getwd()
	home, _ := os.UserHomeDir()
	for _, tc := range []struct {
		in   string
		want rpc.Mount
		ok   bool
	}{
		{"/home/dev/src:/root/src", rpc.Mount{Host: "/home/dev/src", Guest: "/root/src"}, true},
		{"/srv/docs:/srv/docs:ro", rpc.Mount{Host: "/srv/docs", Guest: "/srv/docs", ReadOnly: true}, true},
		{"/srv/docs:/srv/docs:rw", rpc.Mount{Host: "/srv/docs", Guest: "/srv/docs"}, true},
		{"src:/root/src", rpc.Mount{Host: filepath.Join(cwd, "src"), Guest: "/root/src"}, true},
		{"./a/../src/:/root/src", rpc.Mount{Host: filepath.Join(cwd, "src"), Guest: "/root/src"}, true},
		{"~/src:/root/src:ro", rpc.Mount{Host: filepath.Join(home, "src"), Guest: "/root/src", ReadOnly: true}, true},
		{"/a:b:/root/ab", rpc.Mount{Host: "/a:b", Guest: "/root/ab"}, true},
		{"/srv/docs", rpc.Mount{}, false},
		{":/root/src", rpc.Mount{}, false},
		{"/srv/docs:", rpc.Mount{}, false},
		{"/srv/docs:ro", rpc.Mount{}, false},
	} {
		got, err := parseMount(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("parseMount(%q) = %+v, %v; want %+v, ok=%t", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestCreateWithMounts(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	dir := t.TempDir()
	src, docs := filepath.Join(dir, "src"), filepath.Join(dir, "docs")
	os.Mkdir(src, 0o755)
	os.Mkdir(docs, 0o755)
	if os.Geteuid() == 0 {
		os.Chown(src, 65534, 65534)
	}
	r := run(t, "--socket", f.Socket, "vm", "create", "dev", "--mount", src+":/root/src", "--mount", docs+":/srv/docs:ro")
	if r.code != 0 {
		t.Fatalf("exit code = %d, want 0", r.code)
	}
	want := []rpc.Mount{{Host: src, Guest: "/root/src"}, {Host: docs, Guest: "/srv/docs", ReadOnly: true}}
	if creates := f.Creates(); len(creates) != 1 || !reflect.DeepEqual(creates[0].Mounts, want) {
		t.Errorf("create requests = %+v, want mounts %+v", creates, want)
	}
	r = run(t, "--socket", f.Socket, "vm", "show", "dev")
	for _, w := range []string{"mount:  " + src + " -> /root/src (read-write)", "mount:  " + docs + " -> /srv/docs (read-only)"} {
		if !strings.Contains(strings.Join(strings.Fields(r.stdout), " "), strings.Join(strings.Fields(w), " ")) {
			t.Errorf("vm show = %q, want a line %q", r.stdout, w)
		}
	}
	r = run(t, "--socket", f.Socket, "vm", "show", "dev", "--json")
	var v rpc.VM
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || !reflect.DeepEqual(v.Mounts, want) {
		t.Errorf("vm show --json mounts = %+v, %v; want %+v", v.Mounts, err, want)
	}

	// Bad mounts: the flag's syntax is checked here, the folders by bangerd.
	r = run(t, "--socket", f.Socket, "vm", "create", "bad", "--mount", src)
	if r.code != 2 || !strings.Contains(r.stderr, "want HOSTDIR:GUESTDIR") {
		t.Errorf("create --mount %s = %d %q, want a usage error", src, r.code, r.stderr)
	}
	r = run(t, "--socket", f.Socket, "vm", "create", "bad", "--mount", filepath.Join(dir, "gone")+":/root/src")
	if r.code != 1 || !strings.Contains(r.stderr, "create it first") {
		t.Errorf("create --mount of a missing folder = %d %q, want bangerd's refusal", r.code, r.stderr)
	}
	if _, ok := f.VM("bad"); ok {
		t.Error("a refused create made a VM")
	}
}
