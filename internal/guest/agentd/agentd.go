// Package agentd is banger's guest agent: it answers the host's agent protocol over vsock and virtio-serial inside the guest.
package agentd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/agent"
)

// Server answers agent requests inside the guest.
type Server struct {
	// Shutdown runs after a shutdown request has been answered.
	// Default: Reboot.
	Shutdown func()
	// HostKeyGlob finds the SSH host public keys; default
	// /etc/ssh/ssh_host_*_key.pub.
	HostKeyGlob string
	// Log receives diagnostics; default slog.Default().
	Log *slog.Logger
	// Mount mounts one host folder for OpMount, once the whole request
	// passed agent.CheckMounts; default MountVirtiofs.
	Mount func(agent.Mount) error
	// System is the machine the agent reads and changes; nil means the
	// guest itself (with HostKeyGlob).
	System System

	once   sync.Once
	mu     sync.Mutex // one identity change at a time
	growMu sync.Mutex // one grow of the filesystems at a time
}

// growFilesystems grows / and /root to their devices, one grow at a time.
func (s *Server) growFilesystems(ctx context.Context) error {
	s.growMu.Lock()
	defer s.growMu.Unlock()
	return s.system().GrowFilesystems(ctx)
}

// system returns s.System, or the guest itself.
func (s *Server) system() System {
	if s.System != nil {
		return s.System
	}
	glob := s.HostKeyGlob
	if glob == "" {
		glob = "/etc/ssh/ssh_host_*_key.pub"
	}
	return osSystem{hostKeyGlob: glob}
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

// Serve listens on vsock port agent.Port (when the guest has
// AF_VSOCK) and on the virtio-serial port (when it appears) until ctx ends.
//
// It also grows / and /root to their devices at once, in the background:
// a new VM's overlays are larger than the image's filesystems, and under
// emulation the grow takes about half a second, which the identity step of
// a cold boot (agent.Identity.GrowFilesystems) would otherwise spend after
// the guest is up. That step then waits for this grow and finds nothing
// left to do.
func (s *Server) Serve(ctx context.Context) error {
	go func() {
		if err := s.growFilesystems(ctx); err != nil {
			s.log().Warn("growing the filesystems at start", "err", err)
		}
	}()
	var wg sync.WaitGroup
	ln, err := listenVsock(agent.Port)
	if err != nil {
		s.log().Info("vsock unavailable, serving virtio-serial only", "err", err)
	} else {
		s.log().Info("agent listening on vsock", "port", agent.Port)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.acceptLoop(ctx, ln)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.serialLoop(ctx)
	}()
	wg.Wait()
	return nil
}

func (s *Server) acceptLoop(ctx context.Context, ln *vsockListener) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log().Warn("accepting vsock connection", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			if err := s.ServeConn(c); err != nil && ctx.Err() == nil {
				s.log().Debug("serving vsock connection", "err", err)
			}
		}()
	}
}

// serialLoop serves the virtio-serial port. The port stays open for the
// agent's life: closing it makes the guest kernel discard what the host has
// sent and not yet been read, which is how a request sent just as the host
// reconnected was lost (and the host waited for its answer for minutes).
func (s *Server) serialLoop(ctx context.Context) {
	announced := false
	for ctx.Err() == nil {
		path := findSerialPort()
		if path == "" {
			sleep(ctx, time.Second)
			continue
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			s.log().Warn("opening agent serial port", "path", path, "err", err)
			sleep(ctx, time.Second)
			continue
		}
		if !announced {
			s.log().Info("agent serving virtio-serial", "path", path)
			announced = true
		}
		stop := context.AfterFunc(ctx, func() { f.Close() })
		err = s.servePort(ctx, f)
		stop()
		f.Close()
		if ctx.Err() == nil {
			s.log().Warn("serving serial port; reopening it", "path", path, "err", err)
			sleep(ctx, time.Second)
		}
	}
}

// serialPause is how often an idle port is read while no host side is
// connected: a read then returns EOF at once.
const serialPause = 50 * time.Millisecond

// servePort answers requests on an open port until a read fails or ctx
// ends. EOF only means that no host side is connected now: it waits a
// little and reads again, with the port still open.
func (s *Server) servePort(ctx context.Context, port io.ReadWriter) error {
	for ctx.Err() == nil {
		if err := s.ServeConn(port); err != nil {
			return err
		}
		sleep(ctx, serialPause)
	}
	return ctx.Err()
}

// findSerialPort returns the agent's port device. Without udev (the minimal
// image) the /dev/virtio-ports symlink does not exist, so sysfs is searched.
func findSerialPort() string {
	if _, err := os.Stat(agent.SerialPath); err == nil {
		return agent.SerialPath
	}
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(b)) != agent.SerialName {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(n))
		if _, err := os.Stat(dev); err == nil {
			return dev
		}
	}
	return ""
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// ServeConn answers requests on rw until EOF. After answering a shutdown
// request it runs s.Shutdown (once) and returns.
func (s *Server) ServeConn(rw io.ReadWriter) error {
	sc := bufio.NewScanner(rw)
	sc.Buffer(make([]byte, 4096), agent.MaxLine)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var req agent.Request
		var resp agent.Response
		if err := decodeRequest([]byte(line), &req); err != nil {
			resp = agent.Response{Error: err.Error()}
		} else {
			resp = s.handle(req)
			resp.ID = req.ID
		}
		b, err := json.Marshal(resp)
		if err != nil {
			return fmt.Errorf("encoding agent response: %w", err)
		}
		if _, err := rw.Write(append(b, '\n')); err != nil {
			return fmt.Errorf("writing agent response: %w", err)
		}
		if req.Op == agent.OpShutdown && resp.OK {
			s.once.Do(func() {
				s.log().Info("shutdown requested by host")
				fn := s.Shutdown
				if fn == nil {
					fn = Reboot
				}
				go fn()
			})
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading agent request: %w", err)
	}
	return nil
}

// decodeRequest reads one request strictly: one JSON object, no unknown
// fields, nothing after it.
func decodeRequest(line []byte, req *agent.Request) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(req); err != nil {
		return fmt.Errorf("decoding request: %w", err)
	}
	if dec.More() {
		return errors.New("decoding request: data after the object")
	}
	return nil
}

func (s *Server) handle(req agent.Request) agent.Response {
	switch req.Op {
	case agent.OpHealth:
		return s.health(req.Detail)
	case agent.OpShutdown:
		return agent.Response{OK: true}
	case agent.OpMount:
		return s.mount(req.Mounts)
	case agent.OpIdentity:
		return s.identity(req.Identity)
	case agent.OpTemplate:
		return s.template()
	default:
		return agent.Response{Error: fmt.Sprintf("unknown op %q: use one of %s", clip(req.Op, 32), strings.Join(agent.Ops, ", "))}
	}
}

func (s *Server) health(detail bool) agent.Response {
	sys := s.system()
	host, err := sys.Hostname()
	if err != nil {
		return agent.Response{Error: fmt.Sprintf("reading hostname: %v", err)}
	}
	resp := agent.Response{OK: true, Hostname: host, UptimeMS: sys.UptimeMS(), SSHHostKeys: sys.HostKeys(),
		Ops: agent.Ops, MachineID: sys.MachineID()}
	if detail {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp.Settled = sys.Settled(ctx)
		cancel()
		resp.SSHListening = sys.SSHListening()
	}
	return resp
}

func uptimeMS() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return ts.Sec*1000 + ts.Nsec/1e6
}

// Reboot syncs and reboots the guest; the hypervisor turns the reboot into
// an exit. Under systemd it asks systemd; under runit (the Void image) it
// asks runit, whose stage 3 stops the services and unmounts, and reboots
// directly if that has not ended this process within runitGrace. Otherwise
// it signals every process, syncs and calls reboot(2) itself.
func Reboot() {
	unix.Sync()
	if systemdRunning() && os.Getpid() != 1 {
		if out, err := exec.Command("systemctl", "reboot").CombinedOutput(); err == nil {
			return
		} else {
			slog.Error("systemctl reboot failed, rebooting directly", "err", err, "output", strings.TrimSpace(string(out)))
		}
	}
	if runitRunning() && os.Getpid() != 1 {
		if out, err := exec.Command("runit-init", "6").CombinedOutput(); err == nil {
			// Stage 3 signals every process, this one too; still alive
			// after the grace, the shutdown is stuck.
			time.Sleep(runitGrace)
			slog.Error("runit did not reboot in time, rebooting directly", "grace", runitGrace)
		} else {
			slog.Error("runit-init 6 failed, rebooting directly", "err", err, "output", strings.TrimSpace(string(out)))
		}
	}
	KillAll(2 * time.Second)
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		slog.Error("rebooting", "err", err)
	}
}

// runitGrace is how long runit's stage 3 may take before Reboot reboots directly.
const runitGrace = 30 * time.Second

// runitRunning reports whether PID 1 is runit.
func runitRunning() bool {
	b, err := os.ReadFile("/proc/1/comm")
	return err == nil && strings.TrimSpace(string(b)) == "runit"
}

func systemdRunning() bool {
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// KillAll sends SIGTERM to every other process, waits up to grace, then
// sends SIGKILL. kill(-1) spares the caller (and PID 1).
func KillAll(grace time.Duration) {
	if err := unix.Kill(-1, unix.SIGTERM); err != nil {
		return // ESRCH: nothing left
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !othersAlive() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	unix.Kill(-1, unix.SIGKILL)
}

// othersAlive reports whether any user-space process other than this one
// (and PID 1) is left.
func othersAlive() bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	self := os.Getpid()
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == self || pid == 1 {
			continue
		}
		// Kernel threads have an empty cmdline.
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && len(b) > 0 {
			// Zombies also have an empty cmdline, so anything here is alive.
			return true
		}
	}
	return false
}
