package daemon

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/hypervisor/proc"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/virtiofs"
)

// Main is bangerd's entry point: it parses flags and serves until SIGINT or
// SIGTERM. It returns the process exit code.
func Main(args []string, stderr io.Writer) int {
	if virtiofs.IsHelper() {
		// bangerd re-executed to set up a host folder's virtiofsd.
		return virtiofs.HelperMain()
	}
	fs := flag.NewFlagSet("bangerd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	paths := config.DefaultPaths()
	socket := fs.String("socket", paths.Socket, "unix socket to serve the API on")
	cfgPath := fs.String("config", paths.ConfigFile, "config file")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: bangerd [flags]\n\nbangerd owns banger's VMs. The banger CLI starts it on demand; you rarely run it by hand.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "bangerd: invalid --log-level %q\n", *level)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		log.Error("loading config", "err", err)
		return 1
	}
	paths.Socket = *socket
	// Everything bangerd and its hypervisors create (state, disks, console
	// logs, sockets, keys) is its user's alone.
	syscall.Umask(0o077)
	// Daemonized hypervisors stay bangerd's children, so a crash is seen
	// with its signal or status.
	if err := proc.BecomeSubreaper(); err != nil {
		log.Warn("cannot become a subreaper: hypervisor crashes will show without their signal", "err", err)
	}
	d, err := New(Options{Config: cfg, Paths: paths, Log: log, Runner: runner.Exec{Detached: true}})
	if err != nil {
		log.Error("starting bangerd", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := d.Serve(ctx); err != nil {
		log.Error("bangerd", "err", err)
		return 1
	}
	return 0
}
