package daemon

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/store"
)

// recordingCap records the hooks it runs and fails the one named in fail.
type recordingCap struct {
	name string
	log  *[]string
	fail string
}

func (c *recordingCap) Name() string { return c.name }

func (c *recordingCap) hook(h string) error {
	*c.log = append(*c.log, c.name+"."+h)
	if c.fail == h {
		return errors.New(h + " broke")
	}
	return nil
}

func (c *recordingCap) Create(context.Context, *store.VM, *createPlan) error { return c.hook("create") }
func (c *recordingCap) Prepare(_ context.Context, _ *store.VM, g *guestconfig.Config) error {
	g.Set("cap."+c.name, "1")
	return c.hook("prepare")
}
func (c *recordingCap) Ready(context.Context, *store.VM, *agent.Health) error { return c.hook("ready") }
func (c *recordingCap) Release(context.Context, *store.VM) error              { return c.hook("release") }
func (c *recordingCap) Destroy(context.Context, *store.VM) error              { return c.hook("destroy") }
func (c *recordingCap) Reconcile(context.Context, []store.VM) error           { return c.hook("reconcile") }

func TestCapabilities(t *testing.T) {
	vm := &store.VM{Name: "box"}
	tests := []struct {
		name    string
		fail    map[string]string // capability -> hook that fails
		run     func(cs capabilities) error
		want    []string
		wantErr string
	}{
		{
			name: "prepare in order",
			run:  func(cs capabilities) error { return cs.prepare(context.Background(), vm, &guestconfig.Config{}) },
			want: []string{"a.prepare", "b.prepare", "c.prepare"},
		},
		{
			name: "failed prepare stops, then the boot releases everything in reverse",
			fail: map[string]string{"b": "prepare"},
			run: func(cs capabilities) error {
				err := cs.prepare(context.Background(), vm, &guestconfig.Config{})
				cs.release(context.Background(), vm)
				return err
			},
			want:    []string{"a.prepare", "b.prepare", "c.release", "b.release", "a.release"},
			wantErr: "preparing VM box: b: prepare broke",
		},
		{
			name:    "release goes on after a failure and reports it",
			fail:    map[string]string{"b": "release"},
			run:     func(cs capabilities) error { return cs.release(context.Background(), vm) },
			want:    []string{"c.release", "b.release", "a.release"},
			wantErr: "releasing VM box: b: release broke",
		},
		{
			name:    "destroy goes on after a failure",
			fail:    map[string]string{"c": "destroy", "a": "destroy"},
			run:     func(cs capabilities) error { return cs.destroy(context.Background(), vm) },
			want:    []string{"c.destroy", "b.destroy", "a.destroy"},
			wantErr: "removing VM box: c: destroy broke\nremoving VM box: a: destroy broke",
		},
		{
			name:    "create stops at the first failure",
			fail:    map[string]string{"a": "create"},
			run:     func(cs capabilities) error { return cs.create(context.Background(), vm, nil) },
			want:    []string{"a.create"},
			wantErr: "creating VM box: a: create broke",
		},
		{
			name:    "ready stops at the first failure",
			fail:    map[string]string{"b": "ready"},
			run:     func(cs capabilities) error { return cs.ready(context.Background(), vm, &agent.Health{}) },
			want:    []string{"a.ready", "b.ready"},
			wantErr: "VM box ready: b: ready broke",
		},
		{
			name:    "reconcile runs every capability",
			fail:    map[string]string{"a": "reconcile"},
			run:     func(cs capabilities) error { return cs.reconcile(context.Background(), nil) },
			want:    []string{"a.reconcile", "b.reconcile", "c.reconcile"},
			wantErr: "reconciling a: reconcile broke",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log []string
			var cs capabilities
			for _, n := range []string{"a", "b", "c"} {
				cs = append(cs, &recordingCap{name: n, log: &log, fail: tt.fail[n]})
			}
			err := tt.run(cs)
			if !reflect.DeepEqual(log, tt.want) {
				t.Errorf("hooks run = %v, want %v", log, tt.want)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("error = %v, want none", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestPrepareFillsGuestConfig(t *testing.T) {
	var log []string
	cs := capabilities{&recordingCap{name: "a", log: &log}, &recordingCap{name: "b", log: &log}}
	var g guestconfig.Config
	if err := cs.prepare(context.Background(), &store.VM{Name: "x"}, &g); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"cap.a", "cap.b"} {
		if v, ok := g.Get(k); !ok || v != "1" {
			t.Errorf("guest config %s = %q, %v; want 1", k, v, ok)
		}
	}
}

func TestDNSCapResolvers(t *testing.T) {
	gw := netip.MustParseAddr("172.30.0.1")
	tests := []struct {
		name      string
		bound     []string
		redirect  int
		upstreams []string
		want      []string
	}{
		{name: "banger serves the bridge", bound: []string{"127.0.0.1:53", "172.30.0.1:53"}, upstreams: []string{"9.9.9.9:53"}, want: []string{"172.30.0.1"}},
		{name: "wildcard listener covers the bridge", bound: []string{"0.0.0.0:53"}, upstreams: []string{"9.9.9.9:53"}, want: []string{"172.30.0.1"}},
		{name: "bridge listener on another port", bound: []string{"127.0.0.1:5353", "172.30.0.1:5353"}, upstreams: []string{"9.9.9.9:53"}, want: []string{"9.9.9.9"}},
		{name: "another port with the redirect to it", bound: []string{"172.30.0.1:10053"}, redirect: 10053, upstreams: []string{"9.9.9.9:53"}, want: []string{"172.30.0.1"}},
		{name: "redirect to a port nobody serves", bound: []string{"172.30.0.1:10053"}, redirect: 5300, upstreams: []string{"9.9.9.9:53"}, want: []string{"9.9.9.9"}},
		{name: "no dns server: host resolvers a guest can reach, two at most",
			upstreams: []string{"127.0.0.53:53", "[fd00::1]:53", "10.0.0.2:5353", "0.0.0.0:53", "192.0.2.1:53", "192.0.2.2:53", "192.0.2.3:53"},
			want:      []string{"192.0.2.1", "192.0.2.2"}},
		{name: "nothing usable", upstreams: []string{"127.0.0.53:53"}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &dnsCap{
				gateway:   func() netip.Addr { return gw },
				served:    func() bool { return servesGateway(tt.bound, gw, tt.redirect) },
				upstreams: func() ([]string, error) { return tt.upstreams, nil },
			}
			var got []string
			for _, a := range c.resolvers() {
				got = append(got, a.String())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("resolvers = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHostKeyPins(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_hosts")
	d := &Daemon{paths: config.Paths{KnownHosts: path}}
	read := func() string {
		b, _ := os.ReadFile(path)
		return string(b)
	}
	if err := d.unpinHostKeys("none"); err != nil {
		t.Fatalf("unpin without a known_hosts file: %v", err)
	}
	for _, name := range []string{"a", "b", "c"} {
		if err := d.pinHostKeys(name, []string{"ssh-ed25519 KEY" + name, "ecdsa-sha2-nistp256 EC" + name}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.pinHostKeys("b", []string{"ssh-ed25519 NEWb"}); err != nil {
		t.Fatal(err)
	}
	want := "a.vm ssh-ed25519 KEYa\na.vm ecdsa-sha2-nistp256 ECa\nc.vm ssh-ed25519 KEYc\nc.vm ecdsa-sha2-nistp256 ECc\nb.vm ssh-ed25519 NEWb\n"
	if got := read(); got != want {
		t.Fatalf("after pins:\n%s\nwant:\n%s", got, want)
	}
	if err := d.unpinHostKeys("a"); err != nil {
		t.Fatal(err)
	}
	if err := d.prunePins(map[string]bool{"b.vm": true}); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "b.vm ssh-ed25519 NEWb\n" {
		t.Fatalf("after unpin and prune: %q", got)
	}
	if err := d.prunePins(nil); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "" {
		t.Fatalf("after pruning all: %q", got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("known_hosts mode = %v, %v; want 0600", fi.Mode(), err)
	}
}

// TestNATReleaseWithoutNFT: on a host without nft, releasing (stop, delete)
// a VM that never had NAT must not fail.
func TestNATReleaseWithoutNFT(t *testing.T) {
	old := doctor.LookPath
	doctor.LookPath = func(bin string) (string, error) {
		if bin == "nft" {
			return "", errors.New("not found")
		}
		return old(bin)
	}
	t.Cleanup(func() { doctor.LookPath = old })
	d := testDaemon(t)
	c := &natCap{d: d}
	if err := c.Release(context.Background(), &store.VM{ID: "abc", Name: "box"}); err != nil {
		t.Fatalf("Release without nft = %v, want nil", err)
	}
}
