package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/units"
)

// daemonStartTimeout bounds how long banger waits for a bangerd it started.
const daemonStartTimeout = 10 * time.Second

// daemonState is what a dial of the socket found.
type daemonState int

const (
	daemonUp     daemonState = iota
	daemonAbsent             // no socket, or nothing listening on it
)

// probe dials the socket once. It returns daemonAbsent when the socket file is
// missing or refuses connections, and an error for anything else (permissions).
func (a *app) probe(ctx context.Context) (daemonState, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "unix", a.socket)
	if err == nil {
		conn.Close()
		return daemonUp, nil
	}
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOTDIR) {
		return daemonAbsent, nil
	}
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return daemonAbsent, fmt.Errorf("connecting to bangerd at %s: %w: check that the socket belongs to you, or pass --socket", a.socket, err)
	}
	return daemonAbsent, fmt.Errorf("connecting to bangerd at %s: %w", a.socket, err)
}

// client returns a client for bangerd, starting bangerd first if needed.
func (a *app) client(ctx context.Context) (*rpc.Client, error) {
	st, err := a.probe(ctx)
	if err != nil {
		return nil, err
	}
	if st == daemonAbsent {
		if _, err := a.startDaemon(ctx); err != nil {
			return nil, err
		}
	}
	return rpc.NewClient(a.socket), nil
}

// withClient returns a command action that runs fn with a client of
// bangerd, starting bangerd first if needed.
func (a *app) withClient(fn func(ctx context.Context, c *rpc.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		c, err := a.client(ctx)
		if err != nil {
			return err
		}
		return fn(ctx, c, args)
	}
}

// runningClient returns a client only if bangerd is already running.
func (a *app) runningClient(ctx context.Context) (*rpc.Client, bool, error) {
	st, err := a.probe(ctx)
	if err != nil || st == daemonAbsent {
		return nil, false, err
	}
	return rpc.NewClient(a.socket), true, nil
}

// daemonBinary finds bangerd: $BANGER_DAEMON, next to this executable, then $PATH.
func daemonBinary() (string, error) {
	if p := os.Getenv("BANGER_DAEMON"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("finding bangerd: BANGER_DAEMON: %w: fix or unset it", err)
		}
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		if exe, err := filepath.EvalSymlinks(exe); err == nil {
			p := filepath.Join(filepath.Dir(exe), "bangerd")
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
				return p, nil
			}
		}
	}
	p, err := exec.LookPath("bangerd")
	if err != nil {
		return "", fmt.Errorf("finding bangerd: not next to banger nor in PATH: install it next to banger, or set BANGER_DAEMON to its path")
	}
	return p, nil
}

// startDaemon spawns a detached bangerd and waits until it answers. It
// returns the daemon's status.
func (a *app) startDaemon(ctx context.Context) (*rpc.Status, error) {
	bin, err := daemonBinary()
	if err != nil {
		return nil, err
	}
	logPath := config.DefaultPaths().Log
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return nil, fmt.Errorf("starting bangerd: creating its log directory: %w", err)
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("starting bangerd: opening its log: %w", err)
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, io.SeekEnd)
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("starting bangerd: %w", err)
	}
	defer devnull.Close()

	a.startOnce.Do(func() { fmt.Fprintln(a.stderr, "starting bangerd...") })
	cmd := exec.Command(bin, "--socket", a.socket)
	cmd.Stdin = devnull
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	a.debugf("running %s (log %s)", strings.Join(cmd.Args, " "), logPath)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting bangerd %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	c := rpc.NewClient(a.socket)
	deadline := time.NewTimer(daemonStartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := c.Status(sctx)
		cancel()
		if err == nil {
			a.debugf("bangerd is up (pid %d)", st.PID)
			return st, nil
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("starting bangerd: it exited (%w)%s\nsee its log: %s", err, logTail(logPath, logStart), logPath)
		case <-deadline.C:
			return nil, fmt.Errorf("starting bangerd: no answer on %s after %s; see its log: %s", a.socket, daemonStartTimeout, logPath)
		case <-ctx.Done():
			return nil, fmt.Errorf("starting bangerd: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// logTail returns the last lines bangerd wrote to its log since offset, indented.
func logTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, 64<<10))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	return ":\n  " + strings.Join(lines, "\n  ")
}

func (a *app) newDaemonCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Start, stop and inspect bangerd",
		Long: `bangerd is the per-user daemon that owns your VMs. banger starts it on
first use, so you rarely need these commands. Stopping bangerd leaves the VMs
running; the next bangerd adopts them.`,
		Example: `  banger daemon status
  banger daemon stop`,
		Args: subcommandArgs,
		RunE: showHelp,
	}
	cmd.AddCommand(a.newDaemonStatusCmd(), a.newDaemonStartCmd(), a.newDaemonStopCmd())
	return cmd
}

func (a *app) newDaemonStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show whether bangerd runs, and its details",
		Long:  "Show whether bangerd runs, and its details. Unlike other commands, it does not start bangerd. It exits 1 when bangerd is not running.",
		Example: `  banger daemon status
  banger daemon status --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, up, err := a.runningClient(cmd.Context())
			if err != nil {
				return err
			}
			if !up {
				if asJSON {
					return fmt.Errorf("bangerd is not running (socket %s): start it with: banger daemon start", a.socket)
				}
				fmt.Fprintf(a.stdout, "bangerd is not running (socket %s)\nStart it with: banger daemon start\n", a.socket)
				return &exitError{code: exitFailure}
			}
			st, err := c.Status(cmd.Context())
			if err != nil {
				return fmt.Errorf("getting bangerd's status: %w", err)
			}
			if asJSON {
				return printJSON(a.stdout, st)
			}
			tw := newTable(a.stdout)
			fmt.Fprintf(tw, "bangerd:\trunning (pid %d, version %s)\n", st.PID, st.Version)
			if !st.StartedAt.IsZero() {
				fmt.Fprintf(tw, "up:\t%s (since %s)\n", units.Age(st.StartedAt), st.StartedAt.Local().Format(time.DateTime))
			}
			fmt.Fprintf(tw, "socket:\t%s\n", orDash(st.Socket))
			fmt.Fprintf(tw, "hypervisor:\t%s\n", orDash(st.Hypervisor))
			fmt.Fprintf(tw, "bundle:\t%s\n", orDash(st.Bundle))
			fmt.Fprintf(tw, "vms:\t%d (%d running)\n", st.VMs, st.Running)
			fmt.Fprintf(tw, "state dir:\t%s\n", orDash(st.StateDir))
			fmt.Fprintf(tw, "data dir:\t%s\n", orDash(st.DataDir))
			fmt.Fprintf(tw, "runtime dir:\t%s\n", orDash(st.RuntimeDir))
			fmt.Fprintf(tw, "log:\t%s\n", config.DefaultPaths().Log)
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}

func (a *app) newDaemonStartCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "start",
		Short: "Start bangerd if it is not running",
		Long:  "Start bangerd in the background if it is not running. Other commands do this on demand; use this to start it ahead of time, for example from a login script.",
		Example: `  banger daemon start
  BANGER_DAEMON=./bangerd banger daemon start --debug`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.probe(cmd.Context())
			if err != nil {
				return err
			}
			if st == daemonUp {
				s, err := rpc.NewClient(a.socket).Status(cmd.Context())
				if err != nil {
					return fmt.Errorf("getting bangerd's status: %w", err)
				}
				fmt.Fprintf(a.stdout, "bangerd is already running (pid %d, socket %s)\n", s.PID, a.socket)
				return nil
			}
			s, err := a.startDaemon(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "bangerd started (pid %d, socket %s, log %s)\n", s.PID, a.socket, config.DefaultPaths().Log)
			return nil
		},
	}
}

func (a *app) newDaemonStopCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stop",
		Short: "Stop bangerd; running VMs keep running",
		Long: `Stop bangerd. Running VMs keep running: the next bangerd (started by any
banger command) adopts them. To stop VMs, use: banger vm stop NAME...`,
		Example: `  banger daemon stop`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, up, err := a.runningClient(ctx)
			if err != nil {
				return err
			}
			if !up {
				fmt.Fprintln(a.stdout, "bangerd is not running")
				return nil
			}
			running := -1
			if st, err := c.Status(ctx); err == nil {
				running = st.Running
			}
			if err := c.Shutdown(ctx); err != nil {
				// The daemon may close the connection as it exits; only a
				// daemon that still answers has refused.
				if st, perr := a.probe(ctx); perr != nil || st == daemonUp {
					return fmt.Errorf("stopping bangerd: %w", err)
				}
			}
			deadline := time.Now().Add(daemonStartTimeout)
			for {
				st, err := a.probe(ctx)
				if err != nil {
					return err
				}
				if st == daemonAbsent {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("stopping bangerd: still answering on %s after %s; see its log: %s", a.socket, daemonStartTimeout, config.DefaultPaths().Log)
				}
				time.Sleep(50 * time.Millisecond)
			}
			switch running {
			case -1, 0:
				fmt.Fprintln(a.stdout, "bangerd stopped")
			default:
				fmt.Fprintf(a.stdout, "bangerd stopped; %d running %s keep running and bangerd adopts them when it next starts\n", running, plural(running, "VM", "VMs"))
			}
			return nil
		},
	}
}

func (a *app) newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print banger's version, and bangerd's if it runs",
		Example: `  banger version
  banger version --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := struct {
				Client string `json:"client"`
				Daemon string `json:"daemon,omitempty"`
			}{Client: versionString()}
			if c, up, _ := a.runningClient(cmd.Context()); up {
				ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
				if st, err := c.Status(ctx); err == nil {
					out.Daemon = st.Version
				}
				cancel()
			}
			if asJSON {
				return printJSON(a.stdout, out)
			}
			fmt.Fprintf(a.stdout, "banger  %s\n", out.Client)
			if out.Daemon != "" {
				fmt.Fprintf(a.stdout, "bangerd %s\n", out.Daemon)
			} else {
				fmt.Fprintln(a.stdout, "bangerd not running")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the versions as JSON")
	return cmd
}
