package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/bundle/bundletest"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/daemon"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/hypervisortest"
	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/portfwd"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/rpc/rpctest"
	"github.com/banger/banger/internal/runner/runnertest"
	"github.com/banger/banger/internal/units"
)

// subject is one implementation of bangerd's API under contract.
type subject struct {
	socket string
	c      *rpc.Client
	// failBoots makes the boots of the named VM fail (on) or succeed.
	failBoots func(name string, on bool)
	// dir is a directory for files the scenarios make.
	dir string
	// ports are the free host ports the scenario's "$a", "$b"... stand for.
	ports map[string]int
	t     testing.TB
}

// port returns the free host port sym ("$a") stands for in this subject,
// picking one the first time.
func (s *subject) port(t testing.TB, sym string) int {
	if s.ports == nil {
		s.ports = map[string]int{}
	}
	if p, ok := s.ports[sym]; ok {
		return p
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s.ports[sym] = l.Addr().(*net.TCPAddr).Port
	return s.ports[sym]
}

// symbols writes the subject's ports back as their symbols.
func (s *subject) symbols(line string) string {
	for sym, p := range s.ports {
		line = strings.ReplaceAll(line, ":"+strconv.Itoa(p)+":", ":"+sym+":")
	}
	return line
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
		{logsTail("box", 64), "logs ok"},
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
		{raw("POST", "/v1/vms/x/set", `null`), "400 invalid"},
		{raw("POST", "/v1/vms/x/set", `{"nat":true}]`), "400 invalid"},
		{start("ghost"), "error 404 not_found"},
		{stop("ghost"), "error 404 not_found"},
		{setNAT("ghost", true), "error 404 not_found"},
		{sshInfo("ghost"), "error 404 not_found"},
		{logs("ghost"), "error 404 not_found"},
		{logsTail("ghost", 64), "error 404 not_found"},
		{logsTail("ghost", 0), "error 400 invalid"},
		{logsTail("ghost", rpc.MaxTailBytes+1), "error 400 invalid"},
		{del("ghost"), "error 404 not_found"},
		{list, "list"},
		{status, "status vms=0 running=0 hypervisor=qemu"},
	}},
	{"egress policies: given at create, changed, refused when malformed", []step{
		// Names need banger's DNS on the bridge, which a daemon without
		// host networking does not serve: running VMs here get networks.
		{createWith(rpc.CreateRequest{Name: "agent", Image: "minimal", Egress: &rpc.Egress{Mode: "allow", Allow: []string{"192.0.2.0/24", "10.1.2.0/24:5432/tcp"}}}),
			"streamed; agent running image=minimal vcpus=2 mem=1024 nat=true ip=.2"},
		{egressOf("agent"), "agent nat=true egress=allow 192.0.2.0/24,10.1.2.0/24:5432/tcp"},
		{setEgress("agent", &rpc.Egress{Mode: "deny", Deny: []string{"198.51.100.7"}}), "agent nat=true egress=deny 198.51.100.7"},
		{setEgress("agent", &rpc.Egress{Mode: "open"}), "agent nat=true egress=open"},
		{setEgress("agent", &rpc.Egress{Mode: "default"}), "agent nat=true egress=default"},
		{setEgress("agent", &rpc.Egress{Mode: "open", Allow: []string{"github.com"}}), "error 400 invalid"},
		{setEgress("agent", &rpc.Egress{Mode: "allow", Allow: []string{"not a name"}}), "error 400 invalid"},
		{setEgress("agent", &rpc.Egress{Mode: "sideways"}), "error 400 invalid"},
		{createWith(rpc.CreateRequest{Name: "bad", Egress: &rpc.Egress{Mode: "default", Allow: []string{"github.com"}}}), "error 400 invalid"},
		{raw("POST", "/v1/vms/agent/set", `{"egress":{"mode":"allow","allow":["x.test"],"extra":1}}`), "400 invalid"},
		{egressOf("agent"), "agent nat=true egress=default"},
		{create("plain", "minimal"), "streamed; plain running image=minimal vcpus=2 mem=1024 nat=false ip=.3"},
		{egressOf("plain"), "plain nat=false egress=default"},
		{setEgress("plain", &rpc.Egress{Mode: "allow", Allow: []string{"10.9.0.0/16"}}), "plain nat=true egress=allow 10.9.0.0/16"},
		{stop("plain"), "plain stopped image=minimal vcpus=2 mem=1024 nat=true ip=.3"},
		{setEgress("plain", &rpc.Egress{Mode: "allow", Allow: []string{"github.com", "*.npmjs.org"}}), "plain nat=true egress=allow github.com,*.npmjs.org"},
		{list, "list agent:running plain:stopped"},
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
	{"host folders are kept with the VM and shown; bad ones are refused", []step{
		{createMounts("mnt", "src:/root/src", "docs:/srv/docs:ro"), "streamed; mnt running mounts=src:/root/src,docs:/srv/docs:ro"},
		{getMounts("mnt"), "mnt running mounts=src:/root/src,docs:/srv/docs:ro"},
		{suspend("mnt"), "error 400 invalid"},
		{fork("mnt", "mnt2"), "error 400 invalid"},
		{stop("mnt"), "mnt stopped image=docker vcpus=2 mem=1024 nat=false ip=.2"},
		{start("mnt"), "streamed; mnt running image=docker vcpus=2 mem=1024 nat=false ip=.2"},
		{getMounts("mnt"), "mnt running mounts=src:/root/src,docs:/srv/docs:ro"},
		{createMounts("x", "src:/etc/src"), "error 400 invalid"},
		{createMounts("x", "src:/root"), "error 400 invalid"},
		{createMounts("x", "gone:/root/src"), "error 400 invalid"},
		{createMounts("x", "src:/srv", "docs:/srv/docs"), "error 400 invalid"},
		{createMounts("x", "src:/root/a", "src:/root/b"), "error 400 invalid"},
		{createWith(rpc.CreateRequest{Name: "x", Mounts: []rpc.Mount{{Host: "relative", Guest: "/root/src"}}}), "error 400 invalid"},
		{raw("POST", "/v1/vms", `{"name":"x","mounts":[{"host":"/tmp","guest":"/srv/t","surprise":1}]}`), "400 invalid"},
		{raw("POST", "/v1/vms", `{"name":"x","mounts":{"host":"/tmp"}}`), "400 invalid"},
		{list, "list mnt:running"},
		{del("mnt"), "ok"},
		{list, "list"},
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
	{"an image with its own kernel", []step{
		{registerKernel("own", "vmlinux", "initrd.img", "6.12.68_1"), "image own(-,own 6.12.68_1)"},
		{images, "images docker(default,managed) minimal(managed) own(-,own 6.12.68_1)"},
		{create("k", "own"), "streamed; k running image=own vcpus=2 mem=1024 nat=false ip=.2"},
		{registerKernel("bad1", "vmlinux", "", ""), "error 400 invalid"},
		{registerKernel("bad2", "initrd.img", "initrd.img", ""), "error 400 invalid"},
		{registerKernel("bad3", "vmlinux", "vmlinux", ""), "error 400 invalid"},
		{registerKernel("bad4", "vmlinux", "initrd.img", "two"), "error 400 invalid"},
		{images, "images docker(default,managed) minimal(managed) own(-,own 6.12.68_1)"},
	}},
	{"published ports and the /root size", []step{
		{create("plain", "minimal"), "streamed; plain running image=minimal vcpus=2 mem=1024 nat=false ip=.2"},
		{ports("plain"), "plain work=16G ports="},
		{createPorts("web", "20G", "$a:80"), "streamed; web running image=minimal vcpus=2 mem=1024 nat=false ip=.3"},
		{ports("web"), "web work=20G ports=127.0.0.1:$a:80/tcp(on)"},
		{addPorts("web", "$b:53/udp", "0.0.0.0:$c:8080"), "web work=20G ports=127.0.0.1:$a:80/tcp(on) 127.0.0.1:$b:53/udp(on) 0.0.0.0:$c:8080/tcp(on)"},
		{listPorts, "list plain: web:127.0.0.1:$a:80/tcp,127.0.0.1:$b:53/udp,0.0.0.0:$c:8080/tcp"},
		{addPorts("web", "$a:81"), "error 400 invalid"},
		{addPorts("web", "$c:81"), "error 400 invalid"},
		{addPorts("plain", "$a:80"), "error 409 exists"},
		{addPorts("plain", "0.0.0.0:$a:80"), "error 409 exists"},
		{createPorts("late", "", "$c:80"), "error 409 exists"},
		{hold("$d"), ""},
		{addPorts("plain", "$d:80"), "error 409 exists"},
		{createPorts("late", "", "$d:80"), "error 409 exists"},
		{createPorts("late", "1M", ""), "error 400 invalid"},
		{createPorts("late", "lots", ""), "error 400 invalid"},
		{raw("POST", "/v1/vms/plain/ports", `{"ports":[{"host_port":8080,"guest_port":80,"proto":"sctp"}]}`), "400 invalid"},
		{raw("POST", "/v1/vms/plain/ports", `{"ports":[{"host_port":70000,"guest_port":80}]}`), "400 invalid"},
		{raw("POST", "/v1/vms/plain/ports", `{"ports":[{"host_port":8080,"guest_port":0}]}`), "400 invalid"},
		{raw("POST", "/v1/vms/plain/ports", `{"ports":[{"host_ip":"localhost","host_port":8080,"guest_port":80}]}`), "400 invalid"},
		{raw("POST", "/v1/vms/plain/ports", `{"ports":[{"host_ip":"224.0.0.1","host_port":8080,"guest_port":80}]}`), "400 invalid"},
		{raw("POST", "/v1/vms/plain/ports", `{"ports":[]}`), "400 invalid"},
		{raw("POST", "/v1/vms/plain/ports", `{"ports":[{"host_port":8080,"guest_port":80,"extra":1}]}`), "400 invalid"},
		{raw("POST", "/v1/vms/plain/ports/remove", `{"ports":[{"host_port":0}]}`), "400 invalid"},
		{ports("plain"), "plain work=16G ports="},
		{removePorts("web", "$b/udp"), "web work=20G ports=127.0.0.1:$a:80/tcp(on) 0.0.0.0:$c:8080/tcp(on)"},
		{removePorts("web", "$b/udp"), "error 404 not_found"},
		{removePorts("web", "$a/udp"), "error 404 not_found"},
		{removePorts("web", "127.0.0.2:$a"), "error 404 not_found"},
		{removePorts("ghost", "$a"), "error 404 not_found"},
		{addPorts("ghost", "$e:80"), "error 404 not_found"},
		{setWork("web", "40G"), "error 400 invalid"},
		{stop("web"), "web stopped image=minimal vcpus=2 mem=1024 nat=false ip=.3"},
		{ports("web"), "web work=20G ports=127.0.0.1:$a:80/tcp(off) 0.0.0.0:$c:8080/tcp(off)"},
		{addPorts("web", "$e:22"), "web work=20G ports=127.0.0.1:$a:80/tcp(off) 0.0.0.0:$c:8080/tcp(off) 127.0.0.1:$e:22/tcp(off)"},
		{addPorts("plain", "$e:22"), "error 409 exists"},
		{setWork("web", "10G"), "error 400 invalid"},
		{setWork("web", "0"), "error 400 invalid"},
		{setWork("web", "lots"), "error 400 invalid"},
		{ports("web"), "web work=20G ports=127.0.0.1:$a:80/tcp(off) 0.0.0.0:$c:8080/tcp(off) 127.0.0.1:$e:22/tcp(off)"},
		{setWork("web", "40G"), "web work=40G ports=127.0.0.1:$a:80/tcp(off) 0.0.0.0:$c:8080/tcp(off) 127.0.0.1:$e:22/tcp(off)"},
		{setWork("ghost", "40G"), "error 404 not_found"},
		{start("web"), "streamed; web running image=minimal vcpus=2 mem=1024 nat=false ip=.3"},
		{removePorts("web", "$c"), "web work=40G ports=127.0.0.1:$a:80/tcp(on) 127.0.0.1:$e:22/tcp(on)"},
		{del("web"), "ok"},
		{addPorts("plain", "$a:80", "$e:22"), "plain work=16G ports=127.0.0.1:$a:80/tcp(on) 127.0.0.1:$e:22/tcp(on)"},
		{del("plain"), "ok"},
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
						s.t = t
						if got := s.symbols(st.do(ctx, s)); got != st.want {
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

func startDaemon(t *testing.T) *subject { return startDaemonWith(t, nil) }

// startDaemonLog is startDaemon logging to log.
func startDaemonLog(t *testing.T, log *slog.Logger) *subject {
	return startDaemonWith(t, func(o *daemon.Options) { o.Log = log })
}

// startDaemonWith is startDaemon with options changed by opt (nil: none).
func startDaemonWith(t *testing.T, opt func(*daemon.Options)) *subject {
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
	opts := daemon.Options{
		Config: cfg,
		Paths: config.Paths{StateDir: state, DataDir: filepath.Join(dir, "data"), RuntimeDir: filepath.Join(dir, "run"),
			Socket: filepath.Join(dir, "bangerd.sock"), DB: filepath.Join(state, "banger.db"),
			KnownHosts: filepath.Join(state, "known_hosts"), Lock: filepath.Join(state, "bangerd.lock")},
		Runner:   runnertest.Host(names.Bridge, netip.PrefixFrom(names.Gateway(), names.Subnet.Bits()).String()),
		Backends: map[string]hypervisor.Backend{"qemu": fake, "firecracker": &hypervisortest.Backend{BackendName: "firecracker"}},
		NoHost:   true,
		Dial:     fake.Dial,
		Shares:   &hypervisortest.Shares{},
	}
	if opt != nil {
		opt(&opts)
	}
	d, err := daemon.New(opts)
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

// createMounts creates a VM with host folders "NAME:GUEST[:ro]", NAME a
// folder the step makes in the subject's directory ("gone" is never made).
func createMounts(name string, specs ...string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		req := rpc.CreateRequest{Name: name}
		for _, spec := range specs {
			f := strings.Split(spec, ":")
			host := filepath.Join(s.dir, f[0])
			if f[0] != "gone" {
				os.MkdirAll(host, 0o755)
				if os.Geteuid() == 0 {
					os.Chown(host, 65534, 65534) // a root bangerd refuses root-owned read-write folders
				}
			}
			req.Mounts = append(req.Mounts, rpc.Mount{Host: host, Guest: f[1], ReadOnly: len(f) > 2 && f[2] == "ro"})
		}
		var evs []rpc.Event
		v, err := s.c.CreateVM(ctx, req, func(ev rpc.Event) { evs = append(evs, ev) })
		line := streamLine(evs, v, err)
		if err != nil || !strings.HasPrefix(line, "streamed; ") {
			return line
		}
		return "streamed; " + mountsLine(s, v)
	}
}

func getMounts(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		v, err := s.c.GetVM(ctx, name)
		if err != nil {
			return errLine(err)
		}
		return mountsLine(s, v)
	}
}

// mountsLine is a VM's state and mounts, host folders relative to the
// subject's directory.
func mountsLine(s *subject, v *rpc.VM) string {
	dir, _ := filepath.EvalSymlinks(s.dir)
	var ms []string
	for _, m := range v.Mounts {
		rel, err := filepath.Rel(dir, m.Host)
		if err != nil {
			rel = m.Host
		}
		e := rel + ":" + m.Guest
		if m.ReadOnly {
			e += ":ro"
		}
		ms = append(ms, e)
	}
	return fmt.Sprintf("%s %s mounts=%s", v.Name, v.State, strings.Join(ms, ","))
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
	return func(ctx context.Context, s *subject) string {
		return vmLine(s.c.SetVM(ctx, name, rpc.SetRequest{NAT: &on}))
	}
}

func setEgress(name string, e *rpc.Egress) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		v, err := s.c.SetVM(ctx, name, rpc.SetRequest{Egress: e})
		if err != nil {
			return errLine(err)
		}
		return fmt.Sprintf("%s nat=%t egress=%s", v.Name, v.NAT, v.Egress)
	}
}

func egressOf(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		v, err := s.c.GetVM(ctx, name)
		if err != nil {
			return errLine(err)
		}
		return fmt.Sprintf("%s nat=%t egress=%s", v.Name, v.NAT, v.Egress)
	}
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

// logsTail reads the last n bytes of a console log: "logs ok" when no
// more than n came.
func logsTail(name string, n int64) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		var b bytes.Buffer
		if err := s.c.LogsTail(ctx, name, n, &b); err != nil {
			return errLine(err)
		}
		if int64(b.Len()) > n {
			return fmt.Sprintf("logs of %d bytes, over the tail of %d", b.Len(), n)
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

// registerKernel registers an image with its own kernel and initrd (files
// the step makes in the subject's directory: "vmlinux" is an ELF file,
// "initrd.img" a gzip one; "" leaves the flag out) and modules of the
// given release ("" leaves --modules out, "two" makes a dir holding two
// releases).
func registerKernel(name, kernelFile, initrdFile, release string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		content := map[string]string{"vmlinux": "\x7fELF\x02\x01\x01 kernel", "initrd.img": "\x1f\x8b\x08 initramfs"}
		for f, c := range content {
			os.WriteFile(filepath.Join(s.dir, f), []byte(c), 0o644)
		}
		rootfs := filepath.Join(s.dir, name+".ext4")
		if err := ext4.WriteMagic(rootfs, 4<<20); err != nil {
			return err.Error()
		}
		req := rpc.RegisterImageRequest{Name: name, Rootfs: rootfs}
		if kernelFile != "" {
			req.Kernel = filepath.Join(s.dir, kernelFile)
		}
		if initrdFile != "" {
			req.Initrd = filepath.Join(s.dir, initrdFile)
		}
		if release != "" {
			mods := filepath.Join(s.dir, "modules-"+name)
			rels := []string{release}
			if release == "two" {
				rels = []string{"6.1.0-1", "6.1.0-2"}
			}
			for _, r := range rels {
				os.MkdirAll(filepath.Join(mods, r), 0o755)
				os.WriteFile(filepath.Join(mods, r, "modules.order"), nil, 0o644)
			}
			req.Modules = mods
		}
		img, err := s.c.RegisterImage(ctx, req)
		if err != nil {
			return errLine(err)
		}
		return "image " + imageLine(*img)
	}
}

func delImage(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string { return okLine(s.c.DeleteImage(ctx, name)) }
}

// spec writes sym's port into a publish spec or port reference ("$a:80").
func (s *subject) spec(in string) string {
	for _, sym := range []string{"$a", "$b", "$c", "$d", "$e"} {
		if strings.Contains(in, sym) {
			in = strings.ReplaceAll(in, sym, strconv.Itoa(s.port(s.t, sym)))
		}
	}
	return in
}

func apiPorts(s *subject, specs []string) []rpc.Port {
	var out []rpc.Port
	for _, in := range specs {
		sp, err := portfwd.ParseSpec(s.spec(in))
		if err != nil {
			s.t.Fatalf("spec %q: %v", in, err)
		}
		out = append(out, rpc.Port{Proto: sp.Proto, HostIP: sp.HostIP.String(), HostPort: int(sp.HostPort), GuestPort: int(sp.GuestPort)})
	}
	return out
}

// createPorts creates a minimal VM with a /root size ("" for the default)
// and a published port ("" for none).
func createPorts(name, work, spec string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		req := rpc.CreateRequest{Name: name, Image: "minimal", WorkSize: work}
		if spec != "" {
			req.Ports = apiPorts(s, []string{spec})
		}
		return createWith(req)(ctx, s)
	}
}

func addPorts(name string, specs ...string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		return portsLine(s.c.AddPorts(ctx, name, apiPorts(s, specs)))
	}
}

func removePorts(name string, sels ...string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		var refs []rpc.PortRef
		for _, in := range sels {
			sel, err := portfwd.ParseSelector(s.spec(in))
			if err != nil {
				s.t.Fatalf("selector %q: %v", in, err)
			}
			ref := rpc.PortRef{Proto: sel.Proto, HostPort: int(sel.HostPort)}
			if sel.HostIP.IsValid() {
				ref.HostIP = sel.HostIP.String()
			}
			refs = append(refs, ref)
		}
		return portsLine(s.c.RemovePorts(ctx, name, refs))
	}
}

func setWork(name, size string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string {
		return portsLine(s.c.SetVM(ctx, name, rpc.SetRequest{WorkSize: size}))
	}
}

func ports(name string) func(context.Context, *subject) string {
	return func(ctx context.Context, s *subject) string { return portsLine(s.c.GetVM(ctx, name)) }
}

// listPorts gives each listed VM's ports, as vm list --json has them.
func listPorts(ctx context.Context, s *subject) string {
	vms, err := s.c.ListVMs(ctx)
	if err != nil {
		return errLine(err)
	}
	out := []string{"list"}
	for _, v := range vms {
		if v.Ports == nil {
			return "list: " + v.Name + " has null ports"
		}
		var ps []string
		for _, p := range v.Ports {
			ps = append(ps, fmt.Sprintf("%s:%d:%d/%s", p.HostIP, p.HostPort, p.GuestPort, p.Proto))
		}
		out = append(out, v.Name+":"+strings.Join(ps, ","))
	}
	return strings.Join(out, " ")
}

// hold listens on sym's port on 127.0.0.1, as another program would.
func hold(sym string) func(context.Context, *subject) string {
	return func(_ context.Context, s *subject) string {
		l, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(s.port(s.t, sym)))
		if err != nil {
			return err.Error()
		}
		s.t.Cleanup(func() { l.Close() })
		return ""
	}
}

// portsLine gives a VM's /root size and ports, each "(on)" when listening.
func portsLine(v *rpc.VM, err error) string {
	if err != nil {
		return errLine(err)
	}
	if v.Ports == nil {
		return v.Name + ": null ports"
	}
	var ps []string
	for _, p := range v.Ports {
		on := "off"
		if p.Listening {
			on = "on"
		}
		ps = append(ps, fmt.Sprintf("%s:%d:%d/%s(%s)", p.HostIP, p.HostPort, p.GuestPort, p.Proto, on))
	}
	return fmt.Sprintf("%s work=%s ports=%s", v.Name, units.FormatSize(v.WorkSizeBytes), strings.Join(ps, " "))
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
	if img.Kernel != "" {
		flags = append(flags, "own "+img.KernelVersion)
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
