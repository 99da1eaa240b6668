// Package cli implements the banger command line, driven in-process through Run.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/config"
)

// Version is banger's version; release builds set it with
// -ldflags "-X github.com/banger/banger/internal/cli.Version=v1.2.3".
var Version = ""

// Exit codes.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitInterrupted = 130
)

// usageError is a command line the user got wrong; it exits 2.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef returns a usage error for cmd.
func usagef(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{cmd: cmd, err: fmt.Errorf(format, args...)}
}

// exitError ends banger with code without printing anything more: what the
// user needs to know has already been printed (or came from a child process).
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// app is one invocation of the CLI.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	socket string
	debug  bool

	startOnce sync.Once
}

// Run runs banger with args (without the program name) and returns its exit code.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if args == nil {
		args = []string{} // cobra falls back to os.Args on nil
	}
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.newRootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	return a.exitCode(root, err)
}

// exitCode prints err once and maps it to an exit code.
func (a *app) exitCode(root *cobra.Command, err error) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue *usageError
	if errors.As(err, &ue) || isCobraUsageError(err) {
		path := root.CommandPath()
		if ue != nil && ue.cmd != nil {
			path = ue.cmd.CommandPath()
		}
		fmt.Fprintf(a.stderr, "error: %s\nRun '%s --help' for usage.\n", err, path)
		return exitUsage
	}
	fmt.Fprintf(a.stderr, "error: %s\n", err)
	return exitFailure
}

// isCobraUsageError recognises the few usage errors cobra makes itself.
func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command ", "unknown flag", "unknown shorthand flag", "flag needs an argument", "invalid argument ", "required flag", "if any flags in the group"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

func (a *app) debugf(format string, args ...any) {
	if a.debug {
		fmt.Fprintf(a.stderr, "debug: "+format+"\n", args...)
	}
}

// defaultSocket is the daemon socket unless --socket says otherwise.
func defaultSocket() string {
	if s := os.Getenv("BANGER_SOCKET"); s != "" {
		return s
	}
	return config.DefaultPaths().Socket
}

func (a *app) newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "banger",
		Short: "Disposable microVMs, booted in seconds",
		Long: `banger runs disposable microVMs on this machine. Each VM is a real Linux
guest with its own kernel, root disk and IP address, ready for ssh.

The CLI talks to bangerd, a per-user daemon that owns the VMs. banger starts
bangerd on first use; VMs keep running when bangerd stops.`,
		Example: `  # Create a VM and log into it
  banger vm create testbox
  banger vm ssh testbox

  # Run a command in it, then throw it away
  banger vm ssh testbox -- uname -a
  banger vm delete --force testbox`,
		Version:       versionString(),
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          subcommandArgs,
		RunE:          showHelp,
	}
	root.SetVersionTemplate("banger {{.Version}}\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &usageError{cmd: c, err: err}
	})
	root.PersistentFlags().StringVar(&a.socket, "socket", defaultSocket(), "bangerd's unix socket (env BANGER_SOCKET)")
	root.PersistentFlags().BoolVar(&a.debug, "debug", false, "print what banger does (daemon start, ssh command line)")
	root.AddCommand(a.newVMCmd(), a.newSSHConfigCmd(), a.newImageCmd(), a.newUICmd(), a.newDaemonCmd(), a.newDoctorCmd(), a.newSudoersCmd(), a.newVersionCmd(), newRuntimeCmd())
	return root
}

// subcommandArgs rejects an unknown subcommand of a command group.
func subcommandArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return usagef(cmd, "%s", msg)
}

// showHelp is the action of a command group called without a subcommand.
func showHelp(cmd *cobra.Command, _ []string) error {
	return cmd.Help()
}

// nameArgs validates commands taking at least one VM name.
func nameArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return usagef(cmd, "%s needs at least one VM name, for example: %s testbox", cmd.CommandPath(), cmd.CommandPath())
	}
	return nil
}

// oneNameArg validates commands taking exactly one VM name.
func oneNameArg(cmd *cobra.Command, args []string) error {
	switch {
	case len(args) == 0:
		return usagef(cmd, "%s needs a VM name, for example: %s testbox", cmd.CommandPath(), cmd.CommandPath())
	case len(args) > 1:
		return usagef(cmd, "%s takes one VM name, got %d: %s", cmd.CommandPath(), len(args), strings.Join(args, " "))
	}
	return nil
}

// noArgs validates commands taking no arguments.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef(cmd, "%s takes no arguments, got %q", cmd.CommandPath(), strings.Join(args, " "))
	}
	return nil
}

func versionString() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// printJSON writes v to w as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("encoding JSON output: %w", err)
	}
	return nil
}
