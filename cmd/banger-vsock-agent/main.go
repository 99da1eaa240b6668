// Command banger-vsock-agent is banger's guest agent, network bootstrap and minimal-image init.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/banger/banger/internal/agent"
)

const usage = `usage: banger-vsock-agent serve|net-setup|init

  serve      answer host requests on vsock port 1024 and the virtio-serial port
  net-setup  configure the network from the ip= argument in /proc/cmdline
  init       run as PID 1 of the minimal image (also when invoked as "init")
`

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)).With("prog", "banger-vsock-agent"))
	mode := ""
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "serve", "net-setup", "init", "help", "-h", "--help":
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
		if err := agent.Serve(ctx); err != nil {
			fail(err)
		}
	case "net-setup":
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			fail(fmt.Errorf("reading kernel command line: %w", err))
		}
		if err := agent.NetSetup(string(b)); err != nil {
			fail(err)
		}
	case "init":
		err := agent.Init()
		slog.Error("init failed", "err", err)
		if os.Getpid() == 1 {
			select {} // PID 1 must not exit: that panics the kernel
		}
		os.Exit(1)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
}

func fail(err error) {
	slog.Error(err.Error())
	os.Exit(1)
}
