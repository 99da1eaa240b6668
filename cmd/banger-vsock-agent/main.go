// Command banger-vsock-agent is banger's guest agent, network bootstrap and minimal-image init.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/banger/banger/internal/guest/agentd"
	"github.com/banger/banger/internal/guest/hostkey"
	"github.com/banger/banger/internal/guest/netsetup"
	"github.com/banger/banger/internal/guest/pid1"
	"github.com/banger/banger/internal/guest/tmux"
)

const usage = `usage: banger-vsock-agent serve|net-setup|ssh-host-key|init|tmux-save|tmux-restore [flags]

  serve         answer host requests on vsock port 1024 and the virtio-serial port
  net-setup     configure the network from the ip= argument in /proc/cmdline
  ssh-host-key  make sshd's ed25519 host key (` + hostkey.DefaultPath + `) unless it exists
  init          run as PID 1 of the minimal image (also when invoked as "init")
  tmux-save     save the running tmux server's sessions, windows and panes
                (nothing is written when no server runs)
  tmux-restore  recreate, detached, the saved sessions that do not exist

flags of tmux-save and tmux-restore:
  -socket PATH  tmux server socket, as tmux -S (default: tmux's default server)
  -state FILE   state file (default ` + tmux.DefaultStateFile + `)
`

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)).With("prog", "banger-vsock-agent"))
	mode := ""
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "serve", "net-setup", "ssh-host-key", "init", "tmux-save", "tmux-restore", "help", "-h", "--help":
	default:
		// The kernel starts init with leftover command-line words as arguments.
		if filepath.Base(os.Args[0]) == "init" || os.Getpid() == 1 {
			mode = "init"
		}
	}
	switch mode {
	case "serve":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := (&agentd.Server{}).Serve(ctx); err != nil {
			fail(err)
		}
	case "net-setup":
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			fail(fmt.Errorf("reading kernel command line: %w", err))
		}
		if err := netsetup.Apply(string(b)); err != nil {
			fail(err)
		}
	case "ssh-host-key":
		if len(os.Args) > 2 {
			fmt.Fprintf(os.Stderr, "banger-vsock-agent ssh-host-key: unexpected arguments %q\n%s", os.Args[2:], usage)
			os.Exit(2)
		}
		cmdline, _ := os.ReadFile("/proc/cmdline")
		wrote, err := hostkey.Ensure(hostkey.DefaultPath, hostkey.Comment(string(cmdline)))
		if err != nil {
			fail(err)
		}
		if wrote {
			slog.Info("made ssh host key", "path", hostkey.DefaultPath)
		}
	case "init":
		err := pid1.Run()
		slog.Error("init failed", "err", err)
		if os.Getpid() == 1 {
			select {} // PID 1 must not exit: that panics the kernel
		}
		os.Exit(1)
	case "tmux-save", "tmux-restore":
		socket, state := tmuxFlags(mode, os.Args[2:])
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		ctx, cancel := context.WithTimeout(ctx, tmuxTimeout)
		defer cancel()
		if mode == "tmux-save" {
			if err := tmux.Save(ctx, "tmux", socket, state); err != nil {
				fail(err)
			}
			return
		}
		n, err := tmux.Restore(ctx, "tmux", socket, state)
		if n > 0 {
			slog.Info("restored tmux sessions", "count", n, "state", state)
		}
		if err != nil {
			fail(err)
		}
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
}

// tmuxTimeout bounds tmux-save and tmux-restore: a oneshot service has no
// start timeout by default.
const tmuxTimeout = time.Minute

// tmuxFlags parses the flags of tmux-save and tmux-restore, exiting with
// status 2 on a usage error.
func tmuxFlags(mode string, args []string) (socket, state string) {
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&socket, "socket", "", "tmux server socket")
	fs.StringVar(&state, "state", tmux.DefaultStateFile, "state file")
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Print(usage)
		os.Exit(0)
	case err == nil && fs.NArg() > 0:
		err = fmt.Errorf("unexpected arguments %q", fs.Args())
	case err == nil && state == "":
		err = errors.New("-state must not be empty")
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "banger-vsock-agent %s: %v\n%s", mode, err, usage)
		os.Exit(2)
	}
	return socket, state
}

func fail(err error) {
	slog.Error(err.Error())
	os.Exit(1)
}
