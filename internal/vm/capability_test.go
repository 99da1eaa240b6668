package vm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/agent"
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

func (c *recordingCap) Create(context.Context, *store.VM, *Plan) error { return c.hook("create") }
func (c *recordingCap) Prepare(_ context.Context, _ *store.VM, g *guestconfig.Config) error {
	g.Network.Hostname += c.name // each sees what the ones before it added
	return c.hook("prepare")
}
func (c *recordingCap) Restoring(context.Context, *store.VM) error            { return c.hook("restoring") }
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
	if g.Network.Hostname != "ab" {
		t.Errorf("guest config after prepare: hostname %q, want each capability's part in order: ab", g.Network.Hostname)
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
				served:    func() bool { return ServesGateway(tt.bound, gw, tt.redirect) },
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

// testKey returns a fresh host key of the given type, as an agent reports it.
func testKey(t *testing.T, typ string) string {
	t.Helper()
	var pub crypto.PublicKey
	switch typ {
	case "ed25519":
		p, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pub = p
	case "ecdsa":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pub = &k.PublicKey
	}
	pk, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk))) + " root@guest"
}

func TestHostKeyPins(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_hosts")
	k := &KnownHosts{Path: path}
	read := func() string {
		b, _ := os.ReadFile(path)
		return string(b)
	}
	if err := k.Unpin("none"); err != nil {
		t.Fatalf("unpin without a known_hosts file: %v", err)
	}
	keys := map[string][]string{}
	for _, name := range []string{"a", "b", "c"} {
		keys[name] = []string{testKey(t, "ed25519"), testKey(t, "ecdsa")}
		pks, err := ParseHostKeys(keys[name])
		if err != nil {
			t.Fatal(err)
		}
		if err := k.Pin(name, pks); err != nil {
			t.Fatal(err)
		}
	}
	newB := testKey(t, "ed25519")
	pks, _ := ParseHostKeys([]string{newB})
	if err := k.Pin("b", pks); err != nil {
		t.Fatal(err)
	}
	line := func(name, key string) string {
		return name + ".vm " + strings.Join(strings.Fields(key)[:2], " ") + "\n"
	}
	want := line("a", keys["a"][0]) + line("a", keys["a"][1]) + line("c", keys["c"][0]) + line("c", keys["c"][1]) + line("b", newB)
	if got := read(); got != want {
		t.Fatalf("after pins:\n%s\nwant (comments dropped):\n%s", got, want)
	}
	if err := k.Unpin("a"); err != nil {
		t.Fatal(err)
	}
	if err := k.Prune(map[string]bool{"b.vm": true}); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != line("b", newB) {
		t.Fatalf("after unpin and prune: %q", got)
	}
	if err := k.Prune(nil); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "" {
		t.Fatalf("after pruning all: %q", got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("known_hosts mode = %v, %v; want 0600", fi.Mode(), err)
	}
}

// TestParseHostKeys: a guest's word is taken only as well-formed keys.
func TestParseHostKeys(t *testing.T) {
	good := testKey(t, "ed25519")
	f := strings.Fields(good)
	other := strings.Fields(testKey(t, "ecdsa"))
	for _, tt := range []struct {
		name string
		keys []string
		ok   bool
	}{
		{"one key", []string{good}, true},
		{"without comment", []string{f[0] + " " + f[1]}, true},
		{"none", nil, false},
		{"wildcard line", []string{"* " + good}, false},
		{"cert authority", []string{"@cert-authority * " + good}, false},
		{"second line", []string{good + "\nvictim.vm " + f[0] + " " + f[1]}, false},
		{"found by fuzzing: 0\\n0", []string{"0\n0"}, false},
		{"type lies", []string{f[0] + " " + other[1]}, false},
		{"unknown type", []string{"ssh-dss " + f[1]}, false},
		{"not base64", []string{f[0] + " !!!"}, false},
		{"options", []string{`command="x" ` + good}, false},
		{"too many", []string{good, good, good, good, good, good, good, good, good}, false},
		{"huge", []string{f[0] + " " + strings.Repeat("A", 10000)}, false},
		{"carriage return", []string{good + "\r"}, false},
	} {
		got, err := ParseHostKeys(tt.keys)
		if (err == nil) != tt.ok {
			t.Errorf("ParseHostKeys(%s) = %d keys, %v; want ok %v", tt.name, len(got), err, tt.ok)
		}
	}
}

// TestNATReleaseWithoutNFT: on a host without nft, releasing (stop, delete)
// a VM that never had NAT must not fail.
func TestNATReleaseWithoutNFT(t *testing.T) {
	c := &natCap{haveNFT: func() bool { return false }}
	if err := c.Release(context.Background(), &store.VM{ID: "abc", Name: "box"}); err != nil {
		t.Fatalf("Release without nft = %v, want nil", err)
	}
}
