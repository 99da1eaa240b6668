package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/bundle/bundletest"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/daemon"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/hypervisortest"
	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/rpc/rpctest"
	"github.com/banger/banger/internal/runner/runnertest"
)

// subject is one implementation of bangerd's API under contract.
type subject struct {
	socket string
	c      *rpc.Client
	// failBoots makes the boots of the named VM fail (on) or succeed.
	failBoots func(name string, on bool)
	// dir is a directory for files the scenarios make.
	dir string
}

// step is one call of a scenario, and the line it must give.
type step struct {
	do   func(ctx context.Context, s *subject) string
	want string
}

// contract is the table both the fake and the real daemon must answer
// alike: every step's line, normalized of what legitimately differs (ids,
// paths, the subnet, stage names and timings).
var contract = []struct {
	name  string
	steps []step
}{
	{"a VM's life", []step{
		{status, "status vms=0 running=0 hypervisor=qemu"},
		{images, "images docker(default,managed) minimal(managed)"},
		{create("box", "minimal"), "streamed; box running image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{create("box", "minimal"), "error 409 exists"},
		{get("box"), "box running image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{list, "list box:running"},
		{status, "status vms=1 running=1 hypervisor=qemu"},
		{sshInfo("box"), "ssh box user=root alias=box.vm ip=.2 state=running"},
		{setNAT("box", true), "box running image=minimal vcpus=2 mem=1024 nat=true ip=.2"},
		{stop("box"), "box stopped image=minimal vcpus=2 mem=1024 nat=true ip=.2"},
		{stop("box"), "box stopped image=minimal vcpus=2 mem=1024 nat=true ip=.2"},
		{status, "status vms=1 running=0 hypervisor=qemu"},
		{start("box"), "streamed; box running image=minimal vcpus=2 mem=1024 nat=true ip=.2"},
		{start("box"), "streamed; box running image=minimal vcpus=2 mem=1024 nat=true ip=.2"},
		{logs("box"), "logs ok"},
		{opencode("box"), "error 404 not_found"},
		{del("box"), "ok"},
		{get("box"), "error 404 not_found"},
		{del("box"), "error 404 not_found"},
		{list, "list"},
	}},
	{"two VMs, their own addresses, listed by name", []step{
		{create("zed", "docker"), "streamed; zed running image=docker vcpus=2 mem=1024 nat=false ip=.2"},
		{createWith(rpc.CreateRequest{Name: "amy", VCPUs: 4, MemoryMiB: 512, NAT: true}), "streamed; amy running image=docker vcpus=4 mem=512 nat=true ip=.3"},
		{list, "list amy:running zed:running"},
		{del("zed"), "ok"},
		{create("bob", ""), "streamed; bob running image=docker vcpus=2 mem=1024 nat=false ip=.2"},
	}},
	{"bad input is refused and changes nothing", []step{
		{create("Bad", ""), "error 400 invalid"},
		{create("", ""), "error 400 invalid"},
		{create(strings.Repeat("a", 64), ""), "error 400 invalid"},
		{create("x", "nope"), "error 400 invalid"},
		{createWith(rpc.CreateRequest{Name: "x", VCPUs: 33}), "error 400 invalid"},
		{createWith(rpc.CreateRequest{Name: "x", MemoryMiB: 64}), "error 400 invalid"},
		{raw("POST", "/v1/vms", `{"name":"x","surprise":1}`), "400 invalid"},
		{raw("POST", "/v1/vms", `{"name":"x"} {"name":"y"}`), "400 invalid"},
		{raw("POST", "/v1/vms", `{"name":`), "400 invalid"},
		{raw("POST", "/v1/vms/x/set", `{"nat":"yes"}`), "400 invalid"},
		{start("ghost"), "error 404 not_found"},
		{stop("ghost"), "error 404 not_found"},
		{setNAT("ghost", true), "error 404 not_found"},
		{sshInfo("ghost"), "error 404 not_found"},
		{logs("ghost"), "error 404 not_found"},
		{del("ghost"), "error 404 not_found"},
		{list, "list"},
		{status, "status vms=0 running=0 hypervisor=qemu"},
	}},
	{"images: register, use, refuse, delete", []step{
		{register("mine", "relative.ext4"), "error 400 invalid"},
		{register("mine", "/nonexistent/x.ext4"), "error 400 invalid"},
		{register("Bad", "ext4:root.ext4"), "error 400 invalid"},
		{register("docker", "ext4:root.ext4"), "error 409 exists"},
		{register("mine", "ext4:root.ext4"), "image mine(-)"},
		{images, "images docker(default,managed) minimal(managed) mine(-)"},
		{create("m", "mine"), "streamed; m running image=mine vcpus=2 mem=1024 nat=false ip=.2"},
		{delImage("docker"), "error 400 invalid"},
		{delImage("ghost"), "error 404 not_found"},
		{del("m"), "ok"},
		{delImage("mine"), "ok"},
		{images, "images docker(default,managed) minimal(managed)"},
	}},
	{"suspend and resume: the saved VM comes back, a stop discards it", []step{
		{create("box", "minimal"), "streamed; box running image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{suspend("box"), "box suspended image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{suspend("box"), "box suspended image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{list, "list box:suspended"},
		{status, "status vms=1 running=0 hypervisor=qemu"},
		{resume("box"), "streamed; box running image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{resume("box"), "streamed; box running image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{suspend("box"), "box suspended image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{start("box"), "streamed; box running image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{suspend("box"), "box suspended image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{stop("box"), "box stopped image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{suspend("box"), "error 400 invalid"},
		{resume("box"), "error 500 invalid"},
		{resume("ghost"), "error 404 not_found"},
		{suspend("ghost"), "error 404 not_found"},
		{start("box"), "streamed; box running image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{del("box"), "ok"},
		{list, "list"},
	}},
	{"fork: a copy of a running VM, refused for anything else", []step{
		{createWith(rpc.CreateRequest{Name: "src", Image: "minimal", VCPUs: 4, MemoryMiB: 512, NAT: true}), "streamed; src running image=minimal vcpus=4 mem=512 nat=true ip=.2"},
		{fork("src", "copy"), "streamed; copy running image=minimal vcpus=4 mem=512 nat=true ip=.3"},
		{get("src"), "src running image=minimal vcpus=4 mem=512 nat=true ip=.2"},
		{fork("src", "copy"), "error 409 exists"},
		{fork("ghost", "x"), "error 404 not_found"},
		{fork("src", "Bad"), "error 400 invalid"},
		{raw("POST", "/v1/vms/src/fork", `{"name":"x","extra":1}`), "400 invalid"},
		{stop("src"), "src stopped image=minimal vcpus=4 mem=512 nat=true ip=.2"},
		{fork("src", "again"), "error 400 invalid"},
		{list, "list copy:running src:stopped"},
		{del("copy"), "ok"},
		{del("src"), "ok"},
	}},
	{"warm an image on demand", []step{
		{warm("minimal"), "image minimal warm=ready"},
		{warmState("minimal"), "warm minimal ready"},
		{warm("nope"), "error 400 invalid"},
		{create("w", "minimal"), "streamed; w running image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{createWith(rpc.CreateRequest{Name: "c", Image: "minimal", Cold: true}), "streamed; c running image=minimal vcpus=2 mem=1024 nat=false ip=.3"},
		{del("w"), "ok"},
		{del("c"), "ok"},
	}},
	{"a failed boot leaves the VM in the error state, and it starts again", []step{
		{failBoots("dud", true), ""},
		{create("dud", "minimal"), "error 500 internal"},
		{get("dud"), "dud error image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{failBoots("dud", false), ""},
		{start("dud"), "streamed; dud running image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{del("dud"), "ok"},
		{list, "list"},
	}},
}

// TestContract runs the contract against rpctest's fake and against bangerd
// itself (over the fake hypervisor, without root), so the fake the CLI and
// web UI tests use cannot drift from the daemon.
func TestContract(t *testing.T) {
	for _, impl := range []struct {
		name  string
		start func(t *testing.T) *subject
	}{
		{"rpctest", startFake},
		{"bangerd", startDaemon},
	} {
		t.Run(impl.name, func(t *testing.T) {
			for _, sc := range contract {
				t.Run(sc.name, func(t *testing.T) {
					s := impl.start(t)
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					for i, st := range sc.steps {
						if got := st.do(ctx, s); got != st.want {
							t.Errorf("step %d: got  %q\n\twant %q", i+1, got, st.want)
						}
					}
				})
			}
		})
	}
}

func startFake(t *testing.T) *subject {
	f := rpctest.Start(t)
	return &subject{socket: f.Socket, c: f.Client(), dir: t.TempDir(), failBoots: func(name string, on bool) {
		msg := ""
		if on {
			msg = "booting " + name + ": the hypervisor exited"
		}
		f.FailBoot(name, msg)
	}}
}

func startDaemon(t *testing.T) *subject {
	dir := rpctest.TempDir(t)
	rt := bundletest.Fake(t)
	key := bundletest.AuthorizedKey(t, rt)
	cfg := config.Defaults()
	cfg.RuntimeDir = rt
	cfg.Hypervisor = "qemu"
	cfg.VCPUs, cfg.MemoryMiB = 2, 1024
	cfg.ReadyTimeoutSeconds = 5
	names := cfg.Names(os.Geteuid())
	fake := &hypervisortest.Backend{BackendName: "qemu", AuthorizedKey: key}
	state := filepath.Join(dir, "state")
	d, err := daemon.New(daemon.Options{
		Config: cfg,
		Paths: config.Paths{StateDir: state, DataDir: filepath.Join(dir, "data"), RuntimeDir: filepath.Join(dir, "run"),
			Socket: filepath.Join(dir, "bangerd.sock"), DB: filepath.Join(state, "banger.db"),
			KnownHosts: filepath.Join(state, "known_hosts"), Lock: filepath.Join(state, "bangerd.lock")},
		Runner:   runnertest.Host(names.Bridge, netip.PrefixFrom(names.Gateway(), names.Subnet.Bits()).String()),
		Backends: map[string]hypervisor.Backend{"qemu": fake, "firecracker": &hypervisortest.Backend{BackendName: "firecracker"}},
		NoHost:   true,
		Dial:     fake.Dial,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("bangerd: %v", err)
		}
	})
	s := &subject{socket: filepath.Join(dir, "bangerd.sock"), dir: t.TempDir(), failBoots: func(name string, on bool) {
		fake.Misbehave(hypervisortest.Behavior{ExitAtBoot: on})
	}}
	s.c = rpc.NewClient(s.socket)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := s.c.Status(ctx); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("bangerd does not answer: %v", err)
		}
	}
	return s
}

// Steps.

func status(ctx context.Context, s *subject) string {
	st, err := s.c.Status(ctx)
	if err != nil {
		return errLine(err)
	}
	return fmt.Sprintf("status vms=%d running=%d hypervisor=%s", st.VMs, st.Running, st.Hypervisor)
}

func images(ctx context.Context, s *subject) string {
	imgs, err := s.c.ListImages(ctx)
	if err != nil {
		return errLine(err)
	}
	out := []string{"images"}
	for _, img := range imgs {
		out = append(out, imageLine(img))
	}
	return strings.Join(out, " ")
}

func list(ctx context.Context, s *subject) string {
	vms, err := s.c.ListVMs(ctx)
	if err != nil {
		return errLine(err)
	}
	out := []string{"list"}
	for _, v := range vms {
		out = append(out, v.Name+":"+v.State)
	}
	return strings.Join(out, " ")
}

func create(name, image string) func(context.Context, *subject) string {
	return createWith(rpc.CreateRequest{Name: name, Image: image})
}

func createWith(req rpc.CreateRequest) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		var evs []rpc.Event
		v, err := s.c.CreateVM(ctx, req, func(ev rpc.Event) { evs = append(evs, ev) })
		return streamLine(evs, v, err)
	}
}

func start(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		var evs []rpc.Event
		v, err := s.c.StartVM(ctx, name, func(ev rpc.Event) { evs = append(evs, ev) })
		return streamLine(evs, v, err)
	}
}

func get(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string { return vmLine(s.c.GetVM(ctx, name)) }
}

func suspend(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string { return vmLine(s.c.SuspendVM(ctx, name)) }
}

func resume(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		var evs []rpc.Event
		v, err := s.c.ResumeVM(ctx, name, func(ev rpc.Event) { evs = append(evs, ev) })
		return streamLine(evs, v, err)
	}
}

func fork(src, name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		var evs []rpc.Event
		v, err := s.c.ForkVM(ctx, src, name, func(ev rpc.Event) { evs = append(evs, ev) })
		return streamLine(evs, v, err)
	}
}

func warm(image string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		img, err := s.c.WarmImage(ctx, image, nil)
		if err != nil {
			return errLine(err)
		}
		return "image " + img.Name + " warm=" + img.Warm
	}
}

// warmState waits out a snapshot being built in the background and gives
// the image's warm state.
func warmState(image string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		for {
			imgs, err := s.c.ListImages(ctx)
			if err != nil {
				return errLine(err)
			}
			for _, img := range imgs {
				if img.Name == image && img.Warm != "building" {
					return "warm " + image + " " + img.Warm
				}
			}
			select {
			case <-ctx.Done():
				return "warm " + image + ": " + ctx.Err().Error()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

func stop(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string { return vmLine(s.c.StopVM(ctx, name)) }
}

func setNAT(name string, on bool) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string { return vmLine(s.c.SetVM(ctx, name, &on)) }
}

func del(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string { return okLine(s.c.DeleteVM(ctx, name)) }
}

func sshInfo(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		i, err := s.c.SSHInfo(ctx, name)
		if err != nil {
			return errLine(err)
		}
		return fmt.Sprintf("ssh %s user=%s alias=%s ip=%s state=%s", i.Name, i.User, i.HostAlias, lastOctet(i.IP), i.State)
	}
}

func logs(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		if err := s.c.Logs(ctx, name, false, io.Discard); err != nil {
			return errLine(err)
		}
		return "logs ok"
	}
}

func opencode(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		a, err := s.c.OpencodeAuth(ctx, name)
		if err != nil {
			return errLine(err)
		}
		return "opencode " + a.User
	}
}

// register registers an image; a rootfs "ext4:NAME" is a file NAME the
// step makes in the subject's directory with an ext4 superblock's magic.
func register(name, rootfs string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		path := rootfs
		if f, ok := strings.CutPrefix(rootfs, "ext4:"); ok {
			path = filepath.Join(s.dir, f)
			if err := ext4.WriteMagic(path, 4<<20); err != nil {
				return err.Error()
			}
		}
		img, err := s.c.RegisterImage(ctx, rpc.RegisterImageRequest{Name: name, Rootfs: path})
		if err != nil {
			return errLine(err)
		}
		return "image " + imageLine(*img)
	}
}

func delImage(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string { return okLine(s.c.DeleteImage(ctx, name)) }
}

func failBoots(name string, on bool) func(context.Context, *subject) string {
	return func(_ context.Context, s *subject) string {
		s.failBoots(name, on)
		return ""
	}
}

// raw sends body as is and gives the answer's status and error code.
func raw(method, path, body string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.socket)
		}}}
		req, err := http.NewRequestWithContext(ctx, method, "http://bangerd"+path, strings.NewReader(body))
		if err != nil {
			return err.Error()
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		var e rpc.Error
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &e); err != nil || e.Message == "" {
			return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
		}
		return fmt.Sprintf("%d %s", resp.StatusCode, e.Code)
	}
}

// Normalizing.

func errLine(err error) string {
	var ae *rpc.APIError
	if errors.As(err, &ae) {
		return fmt.Sprintf("error %d %s", ae.Status, ae.Err.Code)
	}
	return "error " + err.Error()
}

func okLine(err error) string {
	if err != nil {
		return errLine(err)
	}
	return "ok"
}

func vmLine(v *rpc.VM, err error) string {
	if err != nil {
		return errLine(err)
	}
	return fmt.Sprintf("%s %s image=%s vcpus=%d mem=%d nat=%t ip=%s", v.Name, v.State, v.Image, v.VCPUs, v.MemoryMiB, v.NAT, lastOctet(v.IP))
}

func imageLine(img rpc.Image) string {
	var flags []string
	if img.Default {
		flags = append(flags, "default")
	}
	if img.Managed {
		flags = append(flags, "managed")
	}
	if len(flags) == 0 {
		flags = []string{"-"}
	}
	return img.Name + "(" + strings.Join(flags, ",") + ")"
}

// streamLine checks the shape of a create or start stream (stages that
// each end before the next begins; one final event, last) and gives its
// outcome.
func streamLine(evs []rpc.Event, v *rpc.VM, err error) string {
	open := ""
	for i, ev := range evs {
		final := ev.Type == "done" || ev.Type == "error"
		switch {
		case final && i != len(evs)-1:
			return fmt.Sprintf("bad stream: %s before the end", ev.Type)
		case ev.Type == "stage" && open != "":
			return fmt.Sprintf("bad stream: stage %q began before %q ended", ev.Stage, open)
		case ev.Type == "stage":
			open = ev.Stage
		case ev.Type == "stage_done" && ev.Stage != open:
			return fmt.Sprintf("bad stream: stage %q ended, %q was running", ev.Stage, open)
		case ev.Type == "stage_done":
			open = ""
		case ev.Type == "done" && open != "":
			return fmt.Sprintf("bad stream: done while stage %q runs", open)
		}
	}
	if err != nil {
		// An error before the stream began is an HTTP error of its own.
		return errLine(err)
	}
	if len(evs) == 0 {
		return "bad stream: no events"
	}
	return "streamed; " + vmLine(v, nil)
}

func lastOctet(ip string) string {
	if i := strings.LastIndexByte(ip, '.'); i >= 0 {
		return ip[i:]
	}
	return ip
}
