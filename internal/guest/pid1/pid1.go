// Package pid1 is PID 1 of the minimal image: it mounts, configures the network, supervises sshd, serves the agent and reaps orphans.
package pid1

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/guest/agentd"
	"github.com/banger/banger/internal/guest/hostkey"
	"github.com/banger/banger/internal/guest/netsetup"
)

const sshd = "/usr/sbin/sshd"

// Run is PID 1 of the minimal image: it mounts the API filesystems, mounts
// /root, configures the network, supervises sshd, serves the agent protocol
// and reaps orphans until a shutdown request or SIGTERM/SIGINT, then stops
// everything and reboots (which ends the VM). It returns only on failure to
// reboot.
func Run() error {
	os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	os.Setenv("HOME", "/root")
	log := slog.Default()
	start := time.Now()

	mountAPI(log)
	if _, err := os.Stat("/dev/vdb"); err == nil {
		os.MkdirAll("/root", 0o700)
		if err := unix.Mount("/dev/vdb", "/root", "ext4", 0, ""); err != nil {
			log.Error("mounting /dev/vdb on /root", "err", err)
		}
	}
	if b, err := os.ReadFile("/proc/cmdline"); err != nil {
		log.Error("reading /proc/cmdline", "err", err)
	} else if err := netsetup.Apply(string(b)); err != nil {
		log.Error("network setup", "err", err)
	}
	host, _ := os.Hostname()
	if _, err := hostkey.Ensure(hostkey.DefaultPath, "root@"+host); err != nil {
		log.Error("making ssh host key", "err", err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		log.Error("creating /run/sshd", "err", err)
	}
	// Ctrl-Alt-Del becomes SIGINT to init instead of an instant reboot.
	unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)

	// From here on, the reaper owns every child's exit status: no more
	// exec.Cmd.Wait.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT, syscall.SIGPWR)
	sup := &supervisor{log: log}
	sup.start()
	log.Info("init ready", "took", time.Since(start).Round(time.Millisecond))

	shutdown := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := &agentd.Server{Shutdown: func() {
		select {
		case shutdown <- struct{}{}:
		default:
		}
	}}
	go srv.Serve(ctx)

	for {
		select {
		case <-shutdown:
			cancel()
			return halt(log, sup)
		case sig := <-sigs:
			if sig == syscall.SIGCHLD {
				sup.reap()
				continue
			}
			log.Info("init received signal, shutting down", "signal", sig)
			cancel()
			return halt(log, sup)
		}
	}
}

// supervisor keeps sshd running, with -r: it forks for each connection
// without re-executing itself, which would cost a few hundred milliseconds
// of each login under TCG (the agent reloads it for new host keys).
type supervisor struct {
	log      *slog.Logger
	mu       sync.Mutex
	pid      int
	stopping bool
}

func (s *supervisor) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return
	}
	cmd := exec.Command(sshd, "-D", "-e", "-r")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		s.log.Error("starting sshd", "err", err)
		time.AfterFunc(time.Second, s.start)
		return
	}
	s.pid = cmd.Process.Pid
	cmd.Process.Release()
	s.log.Info("sshd started", "pid", s.pid)
}

// reap collects every exited child and restarts sshd when it was one.
func (s *supervisor) reap() {
	// Not while a command of the agent runs: its exit status is its own.
	netsetup.Commands.Lock()
	defer netsetup.Commands.Unlock()
	for {
		var st unix.WaitStatus
		pid, err := unix.Wait4(-1, &st, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		s.mu.Lock()
		was := pid == s.pid
		if was {
			s.pid = 0
		}
		stopping := s.stopping
		s.mu.Unlock()
		if was && !stopping {
			s.log.Warn("sshd exited, restarting", "status", st.ExitStatus())
			time.AfterFunc(time.Second, s.start)
		}
	}
}

// stop ends sshd and waits up to grace for it.
func (s *supervisor) stop(grace time.Duration) {
	s.mu.Lock()
	s.stopping = true
	pid := s.pid
	s.mu.Unlock()
	if pid == 0 {
		return
	}
	unix.Kill(pid, unix.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		s.reap()
		if unix.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	unix.Kill(pid, unix.SIGKILL)
}

// halt stops every process, unmounts the host folders and /root, syncs and
// reboots.
func halt(log *slog.Logger, sup *supervisor) error {
	log.Info("stopping sshd and all processes")
	sup.stop(2 * time.Second)
	go func() {
		for {
			sup.reap()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	agentd.KillAll(2 * time.Second)
	unix.Sync()
	// Host folders may be mounted inside /root.
	if err := agentd.UnmountVirtiofs(); err != nil {
		log.Warn("unmounting host folders", "err", err)
	}
	if err := unix.Unmount("/root", 0); err != nil && !errors.Is(err, unix.EINVAL) {
		log.Warn("unmounting /root", "err", err)
		unix.Unmount("/root", unix.MNT_DETACH)
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		log.Warn("remounting / read-only", "err", err)
	}
	unix.Sync()
	log.Info("rebooting")
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

// mountAPI mounts what a Linux userspace expects, skipping what the
// initramfs already moved over, and makes / writable.
func mountAPI(log *slog.Logger) {
	mounts := []struct {
		src, target, fstype, data string
		flags                     uintptr
		mode                      os.FileMode
	}{
		{"proc", "/proc", "proc", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, 0o555},
		{"sysfs", "/sys", "sysfs", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, 0o555},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755", unix.MS_NOSUID, 0o755},
		{"devpts", "/dev/pts", "devpts", "gid=5,mode=0620,ptmxmode=0666", unix.MS_NOSUID | unix.MS_NOEXEC, 0o755},
		{"tmpfs", "/dev/shm", "tmpfs", "mode=1777", unix.MS_NOSUID | unix.MS_NODEV, 0o1777},
		{"tmpfs", "/run", "tmpfs", "mode=0755", unix.MS_NOSUID | unix.MS_NODEV, 0o755},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777", unix.MS_NOSUID | unix.MS_NODEV, 0o1777},
	}
	for _, m := range mounts {
		if isMountPoint(m.target) {
			continue
		}
		os.MkdirAll(m.target, m.mode)
		if err := unix.Mount(m.src, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			log.Error("mounting", "target", m.target, "type", m.fstype, "err", err)
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT, ""); err != nil {
		log.Error("remounting / read-write", "err", err)
	}
	os.MkdirAll("/run/lock", 0o1777)
	for name, target := range map[string]string{"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2"} {
		if _, err := os.Lstat(name); err != nil {
			os.Symlink(target, name)
		}
	}
}

// isMountPoint reports whether path is listed in /proc/self/mounts (false
// before /proc is mounted).
func isMountPoint(path string) bool {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[1] == path {
			return true
		}
	}
	return false
}
