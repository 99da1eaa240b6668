package agentd

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/guestconfig"
)

// recorder is a System that records what the agent changes.
type recorder struct {
	mu       sync.Mutex
	calls    []string
	net      guestconfig.Network
	mac      string
	failStep string
}

func (r *recorder) Hostname() (string, error)    { return "guest", nil }
func (r *recorder) UptimeMS() int64              { return 1234 }
func (r *recorder) MachineID() string            { return "0123456789abcdef0123456789abcdef" }
func (r *recorder) HostKeys() []string           { return []string{"ssh-ed25519 AAAA"} }
func (r *recorder) Settled(context.Context) bool { return true }
func (r *recorder) SSHListening() bool           { return true }
func (r *recorder) step(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, name)
	if name == r.failStep {
		return os.ErrPermission
	}
	return nil
}
func (r *recorder) SetClock(time.Time) error { return r.step("clock") }
func (r *recorder) AddEntropy([]byte) error  { return r.step("entropy") }
func (r *recorder) SetNetwork(_ context.Context, n guestconfig.Network, mac string) error {
	r.mu.Lock()
	r.net, r.mac = n, mac
	r.mu.Unlock()
	return r.step("network")
}
func (r *recorder) SetMachineID(string) error             { return r.step("machine-id") }
func (r *recorder) NewHostKeys(context.Context) error     { return r.step("host-keys") }
func (r *recorder) GrowFilesystems(context.Context) error { return r.step("filesystems") }
func (r *recorder) ParkSSHD(context.Context) error        { return r.step("park-sshd") }
func (r *recorder) Sync() error                           { return r.step("sync") }
func (r *recorder) SetOpencodePassword(context.Context, string) (bool, error) {
	return true, r.step("opencode-password")
}

func fullIdentity() agent.Identity {
	return agent.Identity{
		TimeUnixNano:     time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano(),
		Entropy:          make([]byte, 64),
		Hostname:         "box2",
		Network:          &agent.Network{Device: "eth0", MAC: "02:ba:ac:1e:00:03", Address: "172.30.0.3/24", Gateway: "172.30.0.1", DNS: []string{"172.30.0.1"}},
		MachineID:        "fedcba9876543210fedcba9876543210",
		NewHostKeys:      true,
		OpencodePassword: "abcdefghijklmnopqrstuvwx",
		GrowFilesystems:  true,
	}
}

// TestIdentityOrder: every step runs, the clock and the RNG before the
// keys and ids, and the answer is the guest's health after it.
func TestIdentityOrder(t *testing.T) {
	rec := &recorder{}
	srv := &Server{System: rec}
	h, err := pipeClient(t, srv).Identity(context.Background(), fullIdentity())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"clock", "entropy", "network", "machine-id", "host-keys", "opencode-password", "filesystems"}
	if len(rec.calls) != len(want)+1 || rec.calls[0] != "clock" || rec.calls[1] != "entropy" || rec.calls[len(want)] != "sync" || !reflect.DeepEqual(h.Applied, want) {
		t.Errorf("identity ran %v and reported %v, want clock, entropy, the rest of %v, then one sync", rec.calls, h.Applied, want)
	}
	if rec.net.Client.String() != "172.30.0.3" || rec.net.PrefixLen != 24 || rec.net.Hostname != "box2" || rec.mac != "02:ba:ac:1e:00:03" || len(rec.net.DNS) != 1 {
		t.Errorf("network = %+v mac %s, want 172.30.0.3/24 box2 with the MAC and one resolver", rec.net, rec.mac)
	}
	if h.Hostname != "guest" || len(h.SSHHostKeys) != 1 || h.MachineID == "" || !h.Answers(agent.OpIdentity) {
		t.Errorf("identity answer = %+v, want the guest's health", h)
	}
}

// TestIdentityRefusals: an identity that does not validate applies nothing;
// a failing step ends the request and says what ran before it.
func TestIdentityRefusals(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(*agent.Identity)
		want string
	}{
		{"hostname", func(id *agent.Identity) { id.Hostname = "bad_name" }, "hostname"},
		{"mac", func(id *agent.Identity) { id.Network.MAC = "02:BA:AC:1E:00:03" }, "mac"},
		{"address", func(id *agent.Identity) { id.Network.Address = "172.30.0.3" }, "address"},
		{"gateway outside", func(id *agent.Identity) { id.Network.Gateway = "10.0.0.1" }, "outside"},
		{"device", func(id *agent.Identity) { id.Network.Device = "eth0; reboot" }, "device"},
		{"resolvers", func(id *agent.Identity) { id.Network.DNS = []string{"1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"} }, "resolvers"},
		{"ipv6 resolver", func(id *agent.Identity) { id.Network.DNS = []string{"::1"} }, "IPv4"},
		{"machine id", func(id *agent.Identity) { id.MachineID = "xyz" }, "machine id"},
		{"zero machine id", func(id *agent.Identity) { id.MachineID = strings.Repeat("0", 32) }, "machine id"},
		{"password", func(id *agent.Identity) { id.OpencodePassword = "short" }, "password"},
		{"password chars", func(id *agent.Identity) { id.OpencodePassword = strings.Repeat("a", 20) + "\nX=1" }, "password"},
		{"entropy", func(id *agent.Identity) { id.Entropy = make([]byte, agent.MaxEntropy+1) }, "entropy"},
		{"clock", func(id *agent.Identity) { id.TimeUnixNano = 1 }, "time"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			id := fullIdentity()
			tt.mod(&id)
			// The server checks what a client that skipped Validate sends.
			resp := (&Server{System: rec}).identity(&id)
			if resp.OK || !strings.Contains(resp.Error, tt.want) || len(rec.calls) != 0 {
				t.Errorf("identity(%s) = %+v after %v, want a refusal naming %q and nothing applied", tt.name, resp, rec.calls, tt.want)
			}
		})
	}
	rec := &recorder{failStep: "host-keys"}
	id := fullIdentity()
	resp := (&Server{System: rec}).identity(&id)
	if resp.OK || !strings.Contains(resp.Error, "host-keys") || !strings.Contains(resp.Error, "machine-id") {
		t.Errorf("identity with a failing step = %+v, want the step and what was applied", resp)
	}
	rec = &recorder{failStep: "entropy"}
	resp = (&Server{System: rec}).identity(&id)
	if resp.OK || !strings.Contains(resp.Error, "entropy") || len(rec.calls) != 2 {
		t.Errorf("identity with a failing RNG = %+v after %v, want a failure before any key or id is made", resp, rec.calls)
	}
}

// TestHealthDetail reports the boot's progress only when asked.
func TestHealthDetail(t *testing.T) {
	srv := &Server{System: &recorder{}}
	c := pipeClient(t, srv)
	h, err := c.Health(context.Background())
	if err != nil || h.Settled || h.SSHListening {
		t.Errorf("Health() = %+v, %v; want no detail", h, err)
	}
	h, err = c.HealthDetail(context.Background())
	if err != nil || !h.Settled || !h.SSHListening {
		t.Errorf("HealthDetail() = %+v, %v; want settled and listening", h, err)
	}
}

func TestWriteHostKey(t *testing.T) {
	priv := filepath.Join(t.TempDir(), "ssh_host_ed25519_key")
	for range 2 {
		if err := writeHostKey(priv, hostKeyType(priv)); err != nil {
			t.Fatal(err)
		}
	}
	pem, _ := os.ReadFile(priv)
	key, err := ssh.ParseRawPrivateKey(pem)
	if err != nil {
		t.Fatalf("the written private key does not parse: %v", err)
	}
	pubLine, _ := os.ReadFile(priv + ".pub")
	pub, _, _, _, err := ssh.ParseAuthorizedKey(pubLine)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := ssh.NewPublicKey(key.(*ed25519.PrivateKey).Public())
	if string(pub.Marshal()) != string(want.Marshal()) {
		t.Error("the .pub file is not the private key's")
	}
	if fi, _ := os.Stat(priv); fi.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %v, want 0600", fi.Mode().Perm())
	}
	if ents, _ := os.ReadDir(filepath.Dir(priv)); len(ents) != 2 {
		t.Errorf("files beside the key: %d, want the pair only", len(ents))
	}
	for _, tt := range []struct{ path, want string }{
		{"/etc/ssh/ssh_host_ed25519_key", "ed25519"}, {"/etc/ssh/ssh_host_rsa_key", "rsa"},
		{"/etc/ssh/ssh_host_dsa_key", ""}, {"/etc/ssh/other", ""},
	} {
		if got := hostKeyType(tt.path); got != tt.want {
			t.Errorf("hostKeyType(%s) = %q, want %q", tt.path, got, tt.want)
		}
	}
}

func TestParseSuperblock(t *testing.T) {
	sb := make([]byte, 1024)
	binary.LittleEndian.PutUint16(sb[sbMagic:], ext4Magic)
	binary.LittleEndian.PutUint32(sb[sbLogBlockSize:], 2)
	binary.LittleEndian.PutUint32(sb[sbBlocksLo:], 262144)
	binary.LittleEndian.PutUint32(sb[sbBlocksHi:], 1)
	if b, bs, err := parseSuperblock(sb); err != nil || b != 262144 || bs != 4096 {
		t.Errorf("parseSuperblock(32-bit) = %d, %d, %v; want 262144, 4096", b, bs, err)
	}
	binary.LittleEndian.PutUint32(sb[sbIncompat:], incompat64bit)
	if b, _, _ := parseSuperblock(sb); b != 1<<32+262144 {
		t.Errorf("parseSuperblock(64-bit) = %d, want %d", b, uint64(1<<32+262144))
	}
	binary.LittleEndian.PutUint32(sb[sbLogBlockSize:], 40)
	if _, _, err := parseSuperblock(sb); err == nil {
		t.Error("parseSuperblock(block size 2^40 KiB) = nil error")
	}
	if _, _, err := parseSuperblock(make([]byte, 1024)); err == nil {
		t.Error("parseSuperblock(zeros) = nil error")
	}
}

func TestMountDevice(t *testing.T) {
	mounts := "/dev/vda / ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/vdb /root ext4 rw 0 0\ntmpfs /root/x tmpfs rw 0 0\n"
	for _, tt := range []struct{ target, want string }{{"/", "/dev/vda"}, {"/root", "/dev/vdb"}, {"/proc", ""}, {"/srv", ""}} {
		if got := mountDevice(mounts, tt.target); got != tt.want {
			t.Errorf("mountDevice(%s) = %q, want %q", tt.target, got, tt.want)
		}
	}
	if got := mountDevice(mounts+"tmpfs /root tmpfs rw 0 0\n", "/root"); got != "" {
		t.Errorf("mountDevice(/root under a tmpfs) = %q, want none", got)
	}
}

func TestListenersIn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tcp")
	// Real lines of /proc/net/tcp: a listener on 22, a connection to it,
	// and a listener on 4096.
	table := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 11873 1 0000000000000000 100 0 0 10 0\n" +
		"   1: 0100007F:1000 0100007F:0016 01 00000000:00000000 00:00000000 00000000     0        0 14231 1 0000000000000000 20 4 30 10 -1\n" +
		"   2: 00000000:1000 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12001 1 0000000000000000 100 0 0 10 0\n" +
		"   3: 00000000:0016 00000000:0000 0A short\n"
	os.WriteFile(path, []byte(table), 0o600)
	for _, tt := range []struct {
		port int
		want []string
	}{{22, []string{"11873"}}, {4096, []string{"12001"}}, {80, nil}} {
		if got := listenersIn(path, tt.port); !slices.Equal(got, tt.want) {
			t.Errorf("listenersIn(port %d) = %v, want %v", tt.port, got, tt.want)
		}
	}
	if got := listenersIn(filepath.Join(t.TempDir(), "none"), 22); got != nil {
		t.Errorf("listenersIn(a missing table) = %v, want none", got)
	}
}

func TestSSHDWithoutReexec(t *testing.T) {
	for _, tt := range []struct {
		cmdline string
		want    bool
	}{
		{"/usr/sbin/sshd\x00-D\x00-r\x00", true},
		{"sshd: /usr/sbin/sshd -D -r [listener] 0 of 10-100 startups", true},
		{"/usr/sbin/sshd\x00-Dr\x00", true},
		{"/usr/sbin/sshd\x00-D\x00-e\x00", false},
		{"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups", false},
		{"/usr/sbin/sshd\x00-f\x00/etc/ssh/r\x00-D\x00", false},
		{"/usr/sbin/sshd\x00-oForwarding=r\x00", false},
		{"/bin/sleep\x00-r\x00", false},
		{"", false},
	} {
		if got := sshdWithoutReexec(tt.cmdline); got != tt.want {
			t.Errorf("sshdWithoutReexec(%q) = %v, want %v", tt.cmdline, got, tt.want)
		}
	}
}

// TestServeGrowsAtStart: the agent grows the filesystems as soon as it
// starts, before any request asks it to.
func TestServeGrowsAtStart(t *testing.T) {
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		(&Server{System: rec}).Serve(ctx)
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()
	for deadline := time.Now().Add(10 * time.Second); ; {
		rec.mu.Lock()
		calls := slices.Clone(rec.calls)
		rec.mu.Unlock()
		if slices.Equal(calls, []string{"filesystems"}) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a started agent made %v, want one grow of the filesystems", calls)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRestartsOnFailure(t *testing.T) {
	for _, tt := range []struct {
		unit string
		want bool
	}{
		{"[Service]\nExecStart=/x\nRestart=on-failure\nRestartSec=2\n", true},
		{"[Service]\nRestart=always\n", true},
		{"[Service]\nRestart=no\n", false},
		{"[Service]\nRestart=on-failure\nRestart=no\n", false},
		{"[Service]\nExecStart=/x\n", false},
		{"[Service]\n  Restart = on-failure\n", true},
		{"[Service]\nRestartSec=on-failure\n", false},
		{"[Service]\n  Restart=on-abnormal\n", true},
	} {
		if got := restartsOnFailure(tt.unit); got != tt.want {
			t.Errorf("restartsOnFailure(%q) = %v, want %v", tt.unit, got, tt.want)
		}
	}
}

func TestMainPID(t *testing.T) {
	if got := parentPID(os.Getpid()); got != os.Getppid() {
		t.Errorf("parentPID(self) = %d, want %d", got, os.Getppid())
	}
	if got := parentPID(1 << 30); got != 0 {
		t.Errorf("parentPID(no such process) = %d, want 0", got)
	}
	// This test's process and a gone one: neither is a child of PID 1
	// (unless the test itself runs as one, which it then skips).
	if os.Getppid() == 1 {
		t.Skip("the test runs as a child of PID 1")
	}
	if got := mainPID([]int{os.Getpid(), 1 << 30}); got != 0 {
		t.Errorf("mainPID(no child of PID 1) = %d, want 0", got)
	}
	if got := mainPID(nil); got != 0 {
		t.Errorf("mainPID(none) = %d, want 0", got)
	}
	if got := unitProcs("banger-no-such-unit.service"); got != nil {
		t.Errorf("unitProcs(an inactive unit) = %v, want none", got)
	}
}
