package cli

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/rpc/rpctest"
)

// TestSuspendResume: suspend reports each VM on one line and exits 1 when
// one fails; resume of one VM streams its stages.
func TestSuspendResume(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "a", State: "running"})
	f.Add(rpc.VM{Name: "b", State: "stopped"})
	r := run(t, "--socket", f.Socket, "vm", "suspend", "a", "b")
	if r.code != 1 || r.stdout != "a suspended\n" || !strings.Contains(r.stderr, "error: suspending b: VM b is stopped: only a running VM can be suspended") {
		t.Errorf("vm suspend a b = %d %q %q, want a suspended and b refused", r.code, r.stdout, r.stderr)
	}
	if vm, _ := f.VM("a"); vm.State != "suspended" {
		t.Errorf("a is %s after suspend", vm.State)
	}
	r = run(t, "--socket", f.Socket, "vm", "resume", "a")
	if r.code != 0 || !strings.Contains(r.stderr, "stage boot done") || !strings.HasPrefix(r.stdout, "a is ready") {
		t.Errorf("vm resume a = %d %q %q, want its stages and the ready line", r.code, r.stdout, r.stderr)
	}
	r = run(t, "--socket", f.Socket, "vm", "resume", "b")
	if r.code != 1 || !strings.Contains(r.stderr, "not suspended") {
		t.Errorf("vm resume b = %d %q, want a refusal", r.code, r.stderr)
	}
}

func TestFork(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	f.Add(rpc.VM{Name: "src", State: "running", Image: "minimal", IP: "172.30.0.2", VCPUs: 4, MemoryMiB: 2048})
	r := run(t, "--socket", f.Socket, "vm", "fork", "src", "copy", "--json")
	var vm rpc.VM
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &vm) != nil || vm.Name != "copy" || vm.State != "running" || vm.VCPUs != 4 || vm.MemoryMiB != 2048 {
		t.Errorf("vm fork src copy = %d %q, want the running copy with src's sizes", r.code, r.stdout)
	}
	for _, args := range [][]string{{"vm", "fork", "src"}, {"vm", "fork", "a", "b", "c"}} {
		if r := run(t, append([]string{"--socket", f.Socket}, args...)...); r.code != 2 || !strings.Contains(r.stderr, "SRC and NEW") {
			t.Errorf("banger %q = %d %q, want a usage error", args, r.code, r.stderr)
		}
	}
	if r := run(t, "--socket", f.Socket, "vm", "fork", "src", "copy"); r.code != 1 || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("second fork into copy = %d %q, want a refusal", r.code, r.stderr)
	}
}

func TestImageWarm(t *testing.T) {
	isolate(t)
	f := rpctest.Start(t)
	r := run(t, "--socket", f.Socket, "image", "warm", "minimal")
	if r.code != 0 || !strings.Contains(r.stdout, "image minimal is warm") || !strings.Contains(r.stderr, "stage snapshot done") {
		t.Errorf("image warm minimal = %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = run(t, "--socket", f.Socket, "image", "ls")
	if lines := strings.Split(r.stdout, "\n"); r.code != 0 || !strings.Contains(lines[0], "WARM") || !strings.Contains(r.stdout, "ready") {
		t.Errorf("image ls = %q, want a WARM column with minimal ready", r.stdout)
	}
	if r := run(t, "--socket", f.Socket, "image", "warm", "nope"); r.code != 1 || !strings.Contains(r.stderr, "warming image nope") {
		t.Errorf("image warm nope = %d %q", r.code, r.stderr)
	}
	r = run(t, "--socket", f.Socket, "vm", "create", "c", "--cold")
	if creates := f.Creates(); r.code != 0 || len(creates) != 1 || !creates[0].Cold {
		t.Errorf("vm create --cold sent %+v", creates)
	}
}
