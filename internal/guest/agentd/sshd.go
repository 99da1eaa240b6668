package agentd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/agent"
)

// SSHListening reads the kernel's socket tables for a listener on port 22.
func (osSystem) SSHListening() bool { return len(listeners(22)) > 0 }

// listeners are the inodes of the TCP sockets listening on port, from the
// kernel's IPv4 and IPv6 socket tables.
func listeners(port int) []string {
	var inodes []string
	for _, p := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		inodes = append(inodes, listenersIn(p, port)...)
	}
	return inodes
}

// listenersIn are the inodes of the sockets in the LISTEN state on port in
// the /proc/net/tcp-format table at path.
func listenersIn(path string, port int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	want := fmt.Sprintf(":%04X", port)
	var inodes []string
	sc := bufio.NewScanner(io.LimitReader(f, 4<<20))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid
		// timeout inode ...; 0A is TCP_LISTEN.
		if len(fields) > 9 && strings.HasSuffix(fields[1], want) && fields[3] == "0A" {
			inodes = append(inodes, fields[9])
		}
	}
	return inodes
}

// sshdPIDFile is where sshd writes its listener's pid (its default
// PidFile on Debian).
const sshdPIDFile = "/run/sshd.pid"

// sshdReloadTimeout bounds the wait for sshd to close its old sockets
// after a reload, and for a parked sshd to reach its configuration.
const sshdReloadTimeout = 15 * time.Second

// sshdListener is the pid of the running sshd listener that does not
// re-execute itself for each connection (its -r flag, which banger's
// Debian images use: the re-exec costs a few hundred milliseconds of each
// login under TCG), 0 when there is none. Such an sshd reads the host keys
// only at its start; one without -r reads them at each connection.
func sshdListener() int {
	b, err := os.ReadFile(sshdPIDFile)
	if err != nil || len(b) > 32 {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !sshdWithoutReexec(string(cmdline)) {
		return 0
	}
	return pid
}

// reloadSSHD makes a running sshd listener of sshdListener read the host
// keys again: SIGHUP makes it close its sockets and re-execute itself,
// which reads them. It returns once the old sockets are closed, so
// whatever answers on port 22 from then on has the new keys; the new
// listener comes up meanwhile (about 300 ms under TCG), while the
// identity's other steps run and the host dials. An sshd without -r is
// left alone, as is a guest without sshd.
func reloadSSHD(ctx context.Context) error {
	pid := sshdListener()
	if pid == 0 {
		return nil
	}
	old := listeners(22)
	if err := unix.Kill(pid, unix.SIGHUP); err != nil {
		return fmt.Errorf("reloading sshd (pid %d) for its new host keys: %w", pid, err)
	}
	err := poll(ctx, sshdReloadTimeout, func() bool {
		return !slices.ContainsFunc(listeners(22), func(ino string) bool { return slices.Contains(old, ino) })
	})
	if err != nil {
		return fmt.Errorf("reloading sshd (pid %d) for its new host keys: it still listens with its old keys: %w", pid, err)
	}
	return nil
}

// poll calls done every 2 ms until it says true, for at most d.
func poll(ctx context.Context, d time.Duration, done func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for !done() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

// sshdWithoutReexec says whether cmdline (a /proc/PID/cmdline: NUL-separated
// arguments, or the one line a listener's process title makes of them) is
// sshd's with -r, alone or among other flags without a value ("-Dr").
func sshdWithoutReexec(cmdline string) bool {
	args := strings.FieldsFunc(cmdline, func(r rune) bool { return r == 0 || r == ' ' })
	if len(args) == 0 || !strings.HasPrefix(filepath.Base(strings.TrimSuffix(args[0], ":")), "sshd") {
		return false
	}
	for _, a := range args[1:] {
		if len(a) > 1 && a[0] == '-' && strings.Trim(a[1:], "46DdeiqrtTGV") == "" && strings.ContainsRune(a, 'r') {
			return true
		}
	}
	return false
}

// sshdPark parks sshd for a template's snapshot: the listener of
// sshdListener re-executes itself and then waits, past its exec, its
// libraries and its libcrypto's start (most of its start-up, and a few
// hundred milliseconds of CPU under TCG), in the middle of reading its
// configuration, before it reads a host key or opens a socket. The
// snapshot keeps it waiting there; the identity of each restore writes its
// new host keys and then lets it go on (unpark). A restore so saves a
// whole re-execution of sshd on its way to ready.
//
// The wait is a named pipe (fifo) that banger's sshd configuration
// includes (agent.SSHDParkInclude: a directory on tmpfs, empty at boot),
// which sshd opens and so waits for a writer. Nothing of it is on disk,
// and nothing is mounted (a mount would wake systemd to read the mount
// table again).
type sshdPark struct {
	// dropIn is the configuration that includes fifo's directory; an
	// image whose sshd does not include it is not parked.
	dropIn string
	fifo   string
	// wait bounds park's wait for sshd to reach the pipe.
	wait time.Duration
}

// theSSHDPark is the guest's.
var theSSHDPark = sshdPark{dropIn: agent.SSHDDropIn, fifo: agent.SSHDParkDir + "/park.conf", wait: sshdReloadTimeout}

// sshdFeedTimeout bounds unpark's wait for sshd to open the pipe.
const sshdFeedTimeout = 2 * time.Second

// ParkSSHD parks the guest's sshd (sshdPark); a guest whose sshd does not
// need it (not running, or without -r) or cannot be parked (its
// configuration does not include agent.SSHDParkDir) is left alone.
func (osSystem) ParkSSHD(ctx context.Context) error {
	pid := sshdListener()
	if pid == 0 {
		return nil
	}
	return theSSHDPark.park(ctx, pid)
}

// parked says whether the pipe is there.
func (p sshdPark) parked() bool {
	fi, err := os.Lstat(p.fifo)
	return err == nil && fi.Mode()&os.ModeNamedPipe != 0
}

// includes says whether the drop-in has the line that includes the pipe's
// directory.
func (p sshdPark) includes() bool {
	b, err := os.ReadFile(p.dropIn)
	if err != nil || len(b) > 64<<10 {
		return false
	}
	want := "Include " + filepath.Dir(p.fifo) + "/*.conf"
	return slices.ContainsFunc(strings.Split(string(b), "\n"), func(l string) bool { return strings.TrimSpace(l) == want })
}

// park makes the pipe, sends the sshd listener pid SIGHUP and waits until
// it is waiting to open the pipe. When it does not get there, it is let go
// on at once (unpark) and the error says why.
func (p sshdPark) park(ctx context.Context, pid int) (err error) {
	if p.parked() || !p.includes() {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p.fifo), 0o700); err != nil {
		return fmt.Errorf("parking sshd: %w", err)
	}
	if err := unix.Mkfifo(p.fifo, 0o600); err != nil {
		return fmt.Errorf("parking sshd: making the pipe %s: %w", p.fifo, err)
	}
	defer func() {
		if err != nil {
			p.unpark(context.WithoutCancel(ctx))
		}
	}()
	if err := unix.Kill(pid, unix.SIGHUP); err != nil {
		return fmt.Errorf("parking sshd (pid %d): %w", pid, err)
	}
	if err := poll(ctx, p.wait, func() bool { return waitingInOpen(pid) }); err != nil {
		return fmt.Errorf("parking sshd (pid %d): it did not come to open %s: %w", pid, p.fifo, err)
	}
	return nil
}

// unpark lets a parked sshd go on: once sshd has the pipe open, it removes
// the pipe and closes its end, and sshd reads an empty file. When no sshd
// opens the pipe within sshdFeedTimeout (one that has ended), it only
// removes the pipe.
func (p sshdPark) unpark(ctx context.Context) {
	defer os.Remove(p.fifo)
	var fd int
	var oerr error
	if err := poll(ctx, sshdFeedTimeout, func() bool {
		fd, oerr = unix.Open(p.fifo, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		return !errors.Is(oerr, unix.ENXIO) // ENXIO: no reader yet
	}); err != nil || oerr != nil {
		slog.Warn("unparking sshd: nothing opened its pipe", "pipe", p.fifo, "err", errors.Join(err, oerr))
		return
	}
	os.Remove(p.fifo)
	unix.Close(fd)
}

// waitingInOpen says whether process pid sleeps, interruptibly, in an
// open: what a reader of a pipe does until a writer opens it (a file's
// disk read sleeps uninterruptibly).
func waitingInOpen(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil || procState(st) != 'S' {
		return false
	}
	sc, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid))
	if err != nil {
		return false
	}
	return inOpen(string(sc))
}

// inOpen says whether a /proc/PID/syscall line is an openat's (how the C
// library opens a file).
func inOpen(line string) bool {
	nr, _, _ := strings.Cut(strings.TrimSpace(line), " ")
	n, err := strconv.Atoi(nr)
	return err == nil && n == unix.SYS_OPENAT
}

// procState is the state letter of a /proc/PID/stat, 0 when unreadable.
func procState(stat []byte) byte {
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return 0
	}
	return stat[i+2]
}
