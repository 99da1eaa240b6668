package agentd

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/atomicfile"
	"github.com/banger/banger/internal/guest/netsetup"
	"github.com/banger/banger/internal/guestconfig"
)

// osSystem is the guest itself.
type osSystem struct {
	// hostKeyGlob finds the SSH host public keys.
	hostKeyGlob string
}

var _ System = osSystem{}

func (osSystem) Hostname() (string, error) { return os.Hostname() }

func (osSystem) UptimeMS() int64 { return uptimeMS() }

func (osSystem) MachineID() string {
	b, err := os.ReadFile("/etc/machine-id")
	if err != nil || len(b) > 64 {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (o osSystem) HostKeys() []string {
	paths, _ := filepath.Glob(o.hostKeyGlob)
	sort.Strings(paths)
	keys := []string{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || len(b) > 16<<10 {
			continue
		}
		if k := strings.TrimSpace(string(b)); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// Settled: under systemd, the system state is running or degraded (every
// boot job is done); anywhere else the agent runs once init is ready.
func (osSystem) Settled(ctx context.Context) bool {
	if !systemdRunning() {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// is-system-running exits non-zero for degraded: only its word counts.
	netsetup.Commands.RLock()
	out, _ := exec.CommandContext(ctx, "systemctl", "is-system-running").Output()
	netsetup.Commands.RUnlock()
	st := strings.TrimSpace(string(out))
	return st == "running" || st == "degraded"
}

// Sync syncs the root filesystem, where the identity's files are (the
// steps write them with atomicfile.WriteUnsynced).
func (osSystem) Sync() error {
	f, err := os.Open("/")
	if err != nil {
		return fmt.Errorf("syncing /: %w", err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncing /: %w", err)
	}
	return nil
}

func (osSystem) SetClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("setting the clock to %s: %w", t.UTC().Format(time.RFC3339), err)
	}
	return nil
}

// ioctls of random(4).
const (
	rndAddEntropy  = 0x40085203 // RNDADDENTROPY, _IOW('R', 0x03, int[2])
	rndReseedCRNG  = 0x5207     // RNDRESEEDCRNG, _IO('R', 0x07)
	randomDevice   = "/dev/urandom"
	maxCreditBytes = 64 // credit at most 512 bits: the pool's size
)

// AddEntropy mixes b into the kernel's pool with credit (RNDADDENTROPY)
// and reseeds the CRNG at once (RNDRESEEDCRNG), so that the next random
// numbers differ from those of every other restore of the same snapshot.
// Without the privilege for the ioctls it only writes b (mixed, not
// credited).
func (osSystem) AddEntropy(b []byte) error {
	f, err := os.OpenFile(randomDevice, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", randomDevice, err)
	}
	defer f.Close()
	info := make([]byte, 8+len(b))
	binary.LittleEndian.PutUint32(info[0:4], uint32(min(len(b), maxCreditBytes)*8))
	binary.LittleEndian.PutUint32(info[4:8], uint32(len(b)))
	copy(info[8:], b)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&info[0])))
	runtime.KeepAlive(info)
	if errno != 0 {
		if _, err := f.Write(b); err != nil {
			return fmt.Errorf("adding entropy: RNDADDENTROPY: %w; writing %s: %w", errno, randomDevice, err)
		}
		return nil
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); errno != 0 {
		return fmt.Errorf("reseeding the RNG: %w", errno)
	}
	return nil
}

func (osSystem) SetNetwork(ctx context.Context, n guestconfig.Network, mac string) error {
	if !n.Client.IsValid() {
		return netsetup.SetHostname(n.Hostname)
	}
	return netsetup.Reconfigure(ctx, n, mac)
}

// machineIDFiles are where a machine id lives: /etc/machine-id, and D-Bus's
// copy when it is a file of its own rather than a link to it.
var machineIDFiles = []string{"/etc/machine-id", "/var/lib/dbus/machine-id"}

// SetMachineID replaces /etc/machine-id (0444). When systemd has bound a
// transient id over it (an image without one), the bound file is written.
func (osSystem) SetMachineID(id string) error {
	for i, p := range machineIDFiles {
		fi, err := os.Lstat(p)
		if i > 0 && (err != nil || !fi.Mode().IsRegular()) {
			continue // D-Bus's is a link to /etc/machine-id, or absent
		}
		err = atomicfile.WriteUnsynced(p, []byte(id+"\n"), 0o444)
		if errors.Is(err, unix.EBUSY) {
			// A mount point (systemd's transient id): write through it,
			// else into what is bound there.
			err = os.WriteFile(p, []byte(id+"\n"), 0o444)
			if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) {
				err = os.WriteFile("/run/machine-id", []byte(id+"\n"), 0o444)
			}
		}
		if err != nil {
			return fmt.Errorf("writing the machine id to %s: %w", p, err)
		}
	}
	return nil
}

// NewHostKeys makes a fresh key for each host key file whose type it knows
// (ed25519; ecdsa and rsa, which banger's images do not use), ed25519 when
// there is none, and writes each pair under a temporary name before
// renaming it over the old one; then it lets a parked sshd go on
// (sshdPark), or reloads an sshd that reads host keys only at its start
// (reloadSSHD).
func (o osSystem) NewHostKeys(ctx context.Context) error {
	pubs, _ := filepath.Glob(o.hostKeyGlob)
	sort.Strings(pubs)
	var privs []string
	for _, p := range pubs {
		privs = append(privs, strings.TrimSuffix(p, ".pub"))
	}
	if len(privs) == 0 {
		privs = []string{"/etc/ssh/ssh_host_ed25519_key"}
	}
	for _, priv := range privs {
		kind := hostKeyType(priv)
		if kind == "" {
			continue
		}
		if err := writeHostKey(priv, kind); err != nil {
			return err
		}
	}
	if theSSHDPark.parked() {
		theSSHDPark.unpark(ctx)
		return nil
	}
	return reloadSSHD(ctx)
}

// hostKeyType is the key type a host key file's name says
// (ssh_host_TYPE_key), "" for one this agent does not make.
func hostKeyType(path string) string {
	name := filepath.Base(path)
	t := strings.TrimSuffix(strings.TrimPrefix(name, "ssh_host_"), "_key")
	switch t {
	case "ed25519", "ecdsa", "rsa":
		return t
	}
	return ""
}

// writeHostKey writes a new key pair of kind at priv and priv.pub.
func writeHostKey(priv, kind string) error {
	var key crypto.Signer
	var err error
	switch kind {
	case "ed25519":
		_, key, err = ed25519.GenerateKey(rand.Reader)
	case "ecdsa":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa":
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	}
	if err != nil {
		return fmt.Errorf("making a %s host key: %w", kind, err)
	}
	host, _ := os.Hostname()
	block, err := ssh.MarshalPrivateKey(key, "root@"+host)
	if err != nil {
		return fmt.Errorf("encoding the %s host key: %w", kind, err)
	}
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		return fmt.Errorf("encoding the %s host key: %w", kind, err)
	}
	line := bytes.TrimSpace(ssh.MarshalAuthorizedKey(pub))
	line = append(line, []byte(" root@"+host+"\n")...)
	if err := atomicfile.WriteUnsynced(priv, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	return atomicfile.WriteUnsynced(priv+".pub", line, 0o644)
}

// opencodeStartDelay puts off a server's start by systemctl until the
// host's readiness check is likely done (it takes well under a second
// after the identity): the server's start costs seconds of CPU under TCG,
// which would slow that check and the sshd reload before it. Only for a
// unit with no process: nothing serves the old password meanwhile (a
// template's server never runs, for it never has a password).
const opencodeStartDelay = 1500 * time.Millisecond

// OpencodeUnit is the systemd unit of banger's opencode server.
const OpencodeUnit = "opencode-server.service"

// SetOpencodePassword writes agent.OpencodeEnvFile (0600) unless it holds
// the password already, then restarts the server: systemd's unit (after
// clearing the failures of starts without the file) or runit's service.
// An image without a server only gets the file.
func (osSystem) SetOpencodePassword(ctx context.Context, pw string) (bool, error) {
	want := agent.OpencodeEnv(pw)
	if old, err := os.ReadFile(agent.OpencodeEnvFile); err == nil && bytes.Equal(old, want) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(agent.OpencodeEnvFile), 0o700); err != nil {
		return false, err
	}
	if err := atomicfile.WriteUnsynced(agent.OpencodeEnvFile, want, 0o600); err != nil {
		return false, err
	}
	// The restart runs after the answer: the server takes a while to come
	// up, and the host waits for ssh, not for it. Its failure is logged.
	var argvs [][]string
	var delay time.Duration
	switch {
	case systemdRunning() && exists("/etc/systemd/system/"+OpencodeUnit):
		procs := unitProcs(OpencodeUnit)
		if killForRestart(OpencodeUnit, procs) {
			break // systemd starts it again RestartSec later, with the new file
		}
		// Starts without the file failed: clear them, or systemd refuses.
		argvs = [][]string{{"systemctl", "reset-failed", OpencodeUnit}, {"systemctl", "--no-block", "restart", OpencodeUnit}}
		if len(procs) == 0 {
			delay = opencodeStartDelay // nothing serves the old password meanwhile
		}
	case runitRunning() && exists("/etc/sv/opencode-server"):
		argvs = [][]string{{"sv", "restart", "opencode-server"}}
	}
	if len(argvs) > 0 {
		go func() {
			time.Sleep(delay)
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			for i, argv := range argvs {
				netsetup.Commands.RLock()
				out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
				netsetup.Commands.RUnlock()
				if err != nil && i == len(argvs)-1 {
					slog.Error("restarting the opencode server", "argv", argv, "err", err, "output", clip(strings.TrimSpace(string(out)), 300))
				}
			}
		}()
	}
	return true, nil
}

// killForRestart ends the running main process of the systemd service
// unit, among its processes procs, with SIGKILL when the unit restarts on failure (banger's opencode
// unit does, RestartSec=2 later), and says whether it did. Nothing is
// spawned: under TCG each systemctl costs a few hundred milliseconds of a
// warm create, and the server's own start (seconds of CPU) then comes
// after readiness rather than during it. The old process, which knows the
// old password, is gone at once.
func killForRestart(unit string, procs []int) bool {
	b, err := os.ReadFile("/etc/systemd/system/" + unit)
	if err != nil || !restartsOnFailure(string(b)) {
		return false
	}
	pid := mainPID(procs)
	if pid <= 1 {
		return false
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		return false
	}
	slog.Info("restarting a service by ending its main process", "unit", unit, "pid", pid)
	return true
}

// restartsOnFailure says whether the unit file text has systemd restart
// its service after a SIGKILL.
func restartsOnFailure(unit string) bool {
	on := false
	for _, line := range strings.Split(unit, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && strings.TrimSpace(k) == "Restart" {
			switch strings.TrimSpace(v) {
			case "on-failure", "on-abnormal", "on-abort", "always":
				on = true
			default:
				on = false
			}
		}
	}
	return on
}

// unitProcs are the processes of the systemd service unit, from its
// cgroup (the unified hierarchy's; none when the unit is inactive).
func unitProcs(unit string) []int {
	b, err := os.ReadFile("/sys/fs/cgroup/system.slice/" + unit + "/cgroup.procs")
	if err != nil || len(b) > 64<<10 {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mainPID is the one process of pids whose parent is PID 1 (systemd starts
// a simple service's main process itself), 0 when there is none or more
// than one.
func mainPID(pids []int) int {
	found := 0
	for _, pid := range pids {
		if parentPID(pid) != 1 {
			continue
		}
		if found != 0 {
			return 0
		}
		found = pid
	}
	return found
}

// parentPID is the parent of process pid from /proc/PID/stat, 0 when unknown.
func parentPID(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// ext4 online resize (EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64)).
const ext4ResizeFS = 0x40086610

// GrowFilesystems grows the ext4 filesystems on / and /root to their
// block devices, online, as resize2fs does for a mounted filesystem.
func (osSystem) GrowFilesystems(context.Context) error {
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return err
	}
	for _, target := range []string{"/", "/root"} {
		dev := mountDevice(string(mounts), target)
		if dev == "" {
			continue
		}
		if err := growExt4(dev, target); err != nil {
			return fmt.Errorf("growing %s on %s: %w", target, dev, err)
		}
	}
	return nil
}

// mountDevice returns the /dev block device mounted on target as ext4,
// from /proc/self/mounts (the last such mount wins), or "".
func mountDevice(mounts, target string) string {
	dev := ""
	for _, line := range strings.Split(mounts, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == target {
			dev = ""
			if f[2] == "ext4" && strings.HasPrefix(f[0], "/dev/") {
				dev = f[0]
			}
		}
	}
	return dev
}

// superblock fields growExt4 reads (offsets inside the superblock, which
// starts 1024 bytes into the device).
const (
	sbOffset        = 1024
	sbBlocksLo      = 0x04
	sbLogBlockSize  = 0x18
	sbMagic         = 0x38
	sbIncompat      = 0x60
	sbBlocksHi      = 0x150
	ext4Magic       = 0xEF53
	incompat64bit   = 0x80
	maxLogBlockSize = 6 // 64 KiB blocks
)

// growExt4 grows the filesystem on dev, mounted on target, to the device's
// size; it does nothing when they already match.
func growExt4(dev, target string) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return fmt.Errorf("reading the size of %s: %w", dev, err)
	}
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, sbOffset); err != nil {
		return fmt.Errorf("reading the superblock: %w", err)
	}
	blocks, blockSize, err := parseSuperblock(sb)
	if err != nil {
		return err
	}
	want := size / blockSize
	if want <= blocks {
		return nil
	}
	mp, err := os.Open(target)
	if err != nil {
		return err
	}
	defer mp.Close()
	n := want
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, mp.Fd(), ext4ResizeFS, uintptr(unsafe.Pointer(&n)))
	if errno != 0 {
		return fmt.Errorf("EXT4_IOC_RESIZE_FS to %d blocks: %w", want, errno)
	}
	return nil
}

// parseSuperblock returns an ext4 superblock's block count and block size.
func parseSuperblock(sb []byte) (blocks, blockSize uint64, err error) {
	if len(sb) < 1024 || binary.LittleEndian.Uint16(sb[sbMagic:]) != ext4Magic {
		return 0, 0, errors.New("not an ext4 superblock")
	}
	logBS := binary.LittleEndian.Uint32(sb[sbLogBlockSize:])
	if logBS > maxLogBlockSize {
		return 0, 0, fmt.Errorf("block size 2^%d KiB is not ext4's", logBS)
	}
	blocks = uint64(binary.LittleEndian.Uint32(sb[sbBlocksLo:]))
	if binary.LittleEndian.Uint32(sb[sbIncompat:])&incompat64bit != 0 {
		blocks |= uint64(binary.LittleEndian.Uint32(sb[sbBlocksHi:])) << 32
	}
	return blocks, 1024 << logBS, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
