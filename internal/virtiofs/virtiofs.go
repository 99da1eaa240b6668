// Package virtiofs serves host folders to QEMU guests with virtiofsd, each in a user namespace where the guest's root is one host user and a read-only folder is a read-only mount.
package virtiofs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/hypervisor/proc"
	"github.com/banger/banger/internal/runner"
)

// DefaultBinary is Debian's virtiofsd (package qemu-system-common).
const DefaultBinary = "/usr/lib/qemu/virtiofsd"

// Package is the Debian package that ships DefaultBinary.
const Package = "qemu-system-common"

// ready is what virtiofsd logs once it serves its socket.
const ready = "Waiting for vhost-user socket connection"

// startTimeout bounds how long Start waits for virtiofsd to serve.
const startTimeout = 15 * time.Second

// Share is one host folder served on one vhost-user socket.
type Share struct {
	// Source is the host folder: absolute, a directory.
	Source   string
	ReadOnly bool
	// Socket is the vhost-user socket QEMU connects to. Its pid file and
	// log sit beside it (.pid and .log instead of .sock).
	Socket string
}

func (s Share) base() string    { return strings.TrimSuffix(s.Socket, ".sock") }
func (s Share) pidFile() string { return s.base() + ".pid" }

// LogFile is where the helper and virtiofsd write their messages.
func (s Share) LogFile() string { return s.base() + ".log" }

// argv0 names the process in ps and identifies it on adoption: with its
// socket passed as a descriptor, nothing else in its command line is
// unique to one VM.
func (s Share) argv0() string { return "virtiofsd:" + s.Socket }

// Argv is virtiofsd's command line for s. The socket is descriptor 3;
// the helper has raised the descriptor limit (virtiofsd holds one per
// file the guest has looked up), so virtiofsd leaves it alone.
func (s Share) Argv() []string {
	return []string{s.argv0(), "--fd=3", "-o", "source=" + optEscape(s.Source), "-o", "cache=auto", "--rlimit-nofile=0"}
}

// optEscape escapes a value inside virtiofsd's comma-separated -o list.
func optEscape(v string) string {
	return strings.NewReplacer(`\`, `\\`, ",", `\,`).Replace(v)
}

// Identity is the host user and group a guest's root acts as on a folder:
// files it makes are theirs, and it reads and writes what they may.
type Identity struct{ UID, GID int }

// IdentityFor returns who the guest's root acts as on source: bangerd's own
// user or, when bangerd runs as root, the folder's owner, so that a guest
// can never make a root-owned file on the host. A read-write folder owned
// by root is therefore refused under a root bangerd.
func IdentityFor(source string, readOnly bool) (Identity, error) {
	if os.Geteuid() != 0 {
		return Identity{UID: os.Geteuid(), GID: os.Getegid()}, nil
	}
	var st unix.Stat_t
	if err := unix.Stat(source, &st); err != nil {
		return Identity{}, fmt.Errorf("host folder %s: %w", source, err)
	}
	if st.Uid == 0 && !readOnly {
		return Identity{}, fmt.Errorf("host folder %s is owned by root: a guest writing there would make root-owned files on the host (setuid ones too): chown it to a user, or add :ro", source)
	}
	return Identity{UID: int(st.Uid), GID: int(st.Gid)}, nil
}

// Process is a running file server as bangerd watches it; *proc.Process
// is one.
type Process interface {
	PID() int
	// Done is closed when the process has exited.
	Done() <-chan struct{}
	// Close releases the handle; the process runs on.
	Close()
}

// Server starts, adopts and stops virtiofsd processes. The zero value is
// ready to use.
type Server struct {
	// Binary is virtiofsd; empty means DefaultBinary.
	Binary string
	// Self is the helper executable (bangerd itself, see HelperMain);
	// empty means /proc/self/exe.
	Self string
	// Runner runs newgidmap; nil means runner.Default.
	Runner runner.Runner
	// SubGID is the subordinate gid file; empty means /etc/subgid.
	SubGID string
	Log    *slog.Logger
}

func (s *Server) binary() string {
	if s.Binary != "" {
		return s.Binary
	}
	return DefaultBinary
}

func (s *Server) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

func (s *Server) runner() runner.Runner {
	if s.Runner != nil {
		return s.Runner
	}
	return runner.Default
}

// Check says what this host lacks to serve folders, with the fix: the
// virtiofsd binary and, for an ordinary user, newgidmap and a subordinate
// gid range (virtiofsd drops its supplementary groups, which a user
// namespace allows only when newgidmap wrote its gid map).
func (s *Server) Check() error {
	if _, err := runner.LookPath(s.binary()); err != nil {
		return fmt.Errorf("host folders need %s, which is not installed: run 'apt-get install %s'", s.binary(), Package)
	}
	if os.Geteuid() == 0 {
		return nil
	}
	if _, err := runner.LookPath("newgidmap"); err != nil {
		return errors.New("host folders need newgidmap, which is not installed: run 'apt-get install uidmap'")
	}
	if _, _, err := s.subGIDs(); err != nil {
		return err
	}
	return nil
}

// subGIDs returns the first subordinate gid range of this user: its start
// and size (at most 65535, mapped to the namespace's gids 1 and up).
func (s *Server) subGIDs() (start, count int, err error) {
	path := s.SubGID
	if path == "" {
		path = "/etc/subgid"
	}
	names := []string{strconv.Itoa(os.Getuid())}
	if u, err := lookupUser(os.Getuid()); err == nil {
		names = append(names, u)
	}
	start, count, err = findRange(path, names)
	if err != nil {
		u := names[len(names)-1]
		return 0, 0, fmt.Errorf("host folders need a subordinate gid range for %s in %s (%w): run 'sudo usermod --add-subgids 100000-165535 %s' (pick a range no other user has)", u, path, err, u)
	}
	return start, min(count, 65535), nil
}

// findRange returns the first range of path ("name:start:count" lines)
// that belongs to one of names.
func findRange(path string, names []string) (start, count int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	for sc.Scan() {
		parts := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(parts) != 3 || !contains(names, parts[0]) {
			continue
		}
		start, err1 := strconv.Atoi(parts[1])
		count, err2 := strconv.Atoi(parts[2])
		if err1 != nil || err2 != nil || start <= 0 || count <= 0 {
			continue
		}
		return start, count, nil
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	return 0, 0, errors.New("no entry")
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// lookupUser returns the login name of uid from /etc/passwd (no cgo, no
// NSS: enough for the subgid file, which names local users).
func lookupUser(uid int) (string, error) {
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) > 2 && f[2] == strconv.Itoa(uid) {
			return f[0], nil
		}
	}
	return "", fmt.Errorf("uid %d is not in /etc/passwd", uid)
}

// Start serves sh: it listens on sh.Socket and starts virtiofsd on it in a
// user and mount namespace of its own (see HelperMain), detached from the
// caller so that it outlives bangerd, and returns once virtiofsd serves.
// On failure nothing is left running.
func (s *Server) Start(ctx context.Context, sh Share) (_ *proc.Process, err error) {
	if !filepath.IsAbs(sh.Source) || !filepath.IsAbs(sh.Socket) {
		return nil, fmt.Errorf("starting virtiofsd for %s: source and socket must be absolute paths", sh.Source)
	}
	id, err := IdentityFor(sh.Source, sh.ReadOnly)
	if err != nil {
		return nil, err
	}
	if old, err := s.Adopt(sh); err == nil {
		old.Close()
		return nil, fmt.Errorf("starting virtiofsd for %s: one already serves %s as pid %d (stop it first)", sh.Source, sh.Socket, old.PID())
	}
	var subStart, subCount int
	root := os.Geteuid() == 0
	if !root {
		if subStart, subCount, err = s.subGIDs(); err != nil {
			return nil, err
		}
	}
	for _, p := range []string{sh.Socket, sh.pidFile()} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale %s: %w", p, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sh.Socket, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("starting virtiofsd for %s: %w", sh.Source, err)
	}
	ln.SetUnlinkOnClose(false) // virtiofsd serves it; Stop removes it
	defer func() {
		if err != nil {
			os.Remove(sh.Socket)
		}
	}()
	sock, err := ln.File()
	ln.Close()
	if err != nil {
		return nil, fmt.Errorf("starting virtiofsd for %s: %w", sh.Source, err)
	}
	defer sock.Close()
	if err := os.Chmod(sh.Socket, 0o600); err != nil {
		return nil, fmt.Errorf("starting virtiofsd for %s: %w", sh.Source, err)
	}
	goR, goW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer goR.Close()
	defer goW.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer statusR.Close()
	defer statusW.Close()
	logf, err := os.OpenFile(sh.LogFile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("starting virtiofsd for %s: %w", sh.Source, err)
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, io.SeekEnd)

	self := s.Self
	if self == "" {
		self = "/proc/self/exe"
	}
	mode := "rw"
	if sh.ReadOnly {
		mode = "ro"
	}
	cmd := &exec.Cmd{
		Path:       self,
		Args:       []string{HelperName, stageWait, sh.Source, mode, s.binary(), sh.Socket},
		Env:        []string{"PATH=/usr/bin:/bin", "LC_ALL=C"},
		Stdout:     logf,
		Stderr:     logf,
		Dir:        "/",
		ExtraFiles: []*os.File{sock, goR, statusW}, // fds 3, 4 and 5
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		},
	}
	if root {
		// Root writes the maps itself before the helper runs; the helper
		// then becomes the namespace's root, which is the folder's owner.
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: id.UID, Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: id.GID, Size: 1}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = true
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}}
	}
	p, err := proc.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("starting virtiofsd for %s: %w (host folders need user namespaces: see 'banger doctor')", sh.Source, err)
	}
	goR.Close()
	statusW.Close()
	defer func() {
		if err != nil {
			killGroup(p)
			os.Remove(sh.pidFile())
		}
	}()
	if err := proc.WritePIDFile(sh.pidFile(), p.PID()); err != nil {
		return nil, fmt.Errorf("starting virtiofsd for %s: %w", sh.Source, err)
	}
	if !root {
		if err := s.writeMaps(ctx, p.PID(), id, subStart, subCount); err != nil {
			return nil, fmt.Errorf("starting virtiofsd for %s: %w", sh.Source, err)
		}
	}
	if _, err := goW.Write([]byte(goLine)); err != nil {
		return nil, fmt.Errorf("starting virtiofsd for %s: releasing the helper: %w", sh.Source, err)
	}
	goW.Close()
	sock.Close()

	// The status pipe ends when virtiofsd is executed; before that the
	// helper writes why it failed.
	statusR.SetReadDeadline(time.Now().Add(startTimeout))
	msg, rerr := io.ReadAll(io.LimitReader(statusR, 4096))
	if len(msg) > 0 {
		return nil, fmt.Errorf("starting virtiofsd for %s: %s", sh.Source, clean(string(msg)))
	}
	if rerr != nil {
		return nil, fmt.Errorf("starting virtiofsd for %s: the helper did not answer: %w%s", sh.Source, rerr, logTail(sh.LogFile(), logStart))
	}
	if err := waitReady(ctx, p, sh.LogFile(), logStart); err != nil {
		return nil, fmt.Errorf("starting virtiofsd for %s: %w%s", sh.Source, err, logTail(sh.LogFile(), logStart))
	}
	s.log().Debug("virtiofsd serves", "source", sh.Source, "socket", sh.Socket, "pid", p.PID(), "read_only", sh.ReadOnly)
	return p, nil
}

// goLine releases the helper once its namespace's maps are written.
const goLine = "go\n"

// writeMaps maps the namespace of pid: its root to this user and group,
// and its gids 1 and up to the user's subordinate range. The gid map comes
// from newgidmap, so that the namespace may drop supplementary groups.
func (s *Server) writeMaps(ctx context.Context, pid int, id Identity, subStart, subCount int) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/uid_map", pid), []byte(fmt.Sprintf("0 %d 1\n", id.UID)), 0); err != nil {
		return fmt.Errorf("writing the uid map: %w", err)
	}
	args := []string{strconv.Itoa(pid), "0", strconv.Itoa(id.GID), "1", "1", strconv.Itoa(subStart), strconv.Itoa(subCount)}
	if _, err := s.runner().Run(ctx, "newgidmap", args...); err != nil {
		return fmt.Errorf("writing the gid map: %w", err)
	}
	return nil
}

// waitReady waits until virtiofsd logs that it serves its socket, or
// exits.
func waitReady(ctx context.Context, p *proc.Process, logPath string, from int64) error {
	deadline := time.Now().Add(startTimeout)
	for {
		if strings.Contains(readFrom(logPath, from, 64<<10), ready) {
			return nil
		}
		if p.Exited() {
			return errors.New("virtiofsd exited at start")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("virtiofsd did not serve within %v", startTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Adopt finds the running virtiofsd of sh through its pid file, checking
// that the process is that one. It returns an error wrapping
// hypervisor.ErrNotRunning when there is none.
func (s *Server) Adopt(sh Share) (*proc.Process, error) {
	return proc.Adopt(sh.pidFile(), func(args []string) (bool, string) {
		if len(args) == 0 || args[0] != sh.argv0() {
			return false, "not the virtiofsd of " + sh.Socket
		}
		return true, ""
	})
}

// Stop ends the virtiofsd of sh, if one runs, and removes its socket and
// pid file. Stopping what is gone is not an error.
func (s *Server) Stop(sh Share) error {
	p, err := s.Adopt(sh)
	switch {
	case err == nil:
		kerr := killGroup(p)
		p.Close()
		if kerr != nil {
			return fmt.Errorf("stopping virtiofsd of %s: %w", sh.Source, kerr)
		}
	case !errors.Is(err, hypervisor.ErrNotRunning):
		return fmt.Errorf("stopping virtiofsd of %s: %w", sh.Source, err)
	}
	var errs []error
	for _, f := range []string{sh.Socket, sh.pidFile()} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killGroup ends virtiofsd and its sandboxed child: SIGTERM, then
// SIGKILL after a grace. The child is pinned before any signal, so that
// every signal reaches the very processes found.
func killGroup(p *proc.Process) error {
	if p.Exited() {
		return nil
	}
	procs := []*proc.Process{p}
	for _, pid := range children(p.PID()) {
		if c, err := proc.Open(pid); err == nil {
			defer c.Close()
			procs = append(procs, c)
		}
	}
	for _, q := range procs {
		q.Signal(unix.SIGTERM)
	}
	var errs []error
	for _, q := range procs {
		select {
		case <-q.Done():
		case <-time.After(3 * time.Second):
			if err := q.Kill(0, 5*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// children lists the child processes of pid (virtiofsd's sandboxed worker).
func children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil && n > 0 {
				out = append(out, n)
			}
		}
	}
	return out
}

// readFrom returns up to max bytes of path from offset.
func readFrom(path string, offset int64, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, max))
	return string(b)
}

// LogTail is the end of sh's log, for errors.
func (s Share) LogTail() string { return logTail(s.LogFile(), 0) }

// logTail is the end of what was logged after offset, for errors.
func logTail(path string, offset int64) string {
	s := strings.TrimSpace(readFrom(path, offset, 64<<10))
	if s == "" {
		return ""
	}
	if len(s) > 1500 {
		s = s[len(s)-1500:]
	}
	return "\nvirtiofsd log (" + path + "):\n  " + strings.ReplaceAll(clean(s), "\n", "\n  ")
}

// clean keeps printable text and newlines.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || (r >= 0x20 && r != 0x7f) {
			return r
		}
		return -1
	}, strings.TrimSpace(s))
}
