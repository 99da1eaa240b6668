package fctest

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

// FakeName is the program name that makes RunIfFake act as Firecracker.
const FakeName = "firecracker"

// IgnoreTermEnv, when set to 1 in the fake process's environment, makes it
// ignore SIGTERM, so that tests can exercise a SIGKILL fallback.
const IgnoreTermEnv = "FCTEST_IGNORE_SIGTERM"

// JournalName is the file, next to the API socket, where a fake process
// records its calls (see ReadJournal).
const JournalName = "fctest-calls.jsonl"

// ReadJournal returns the calls a fake process with its API socket in dir
// has received.
func ReadJournal(dir string) ([]Call, error) {
	data, err := os.ReadFile(filepath.Join(dir, JournalName))
	if err != nil {
		return nil, fmt.Errorf("reading fake firecracker journal: %w", err)
	}
	var calls []Call
	dec := json.NewDecoder(bytes.NewReader(data))
	for dec.More() {
		var c Call
		if err := dec.Decode(&c); err != nil {
			return nil, fmt.Errorf("decoding fake firecracker journal: %w", err)
		}
		calls = append(calls, c)
	}
	return calls, nil
}

// Succeeded lists the calls that succeeded, as "METHOD /path", in order.
func Succeeded(calls []Call) []string {
	var out []string
	for _, c := range calls {
		if c.Status < 300 {
			out = append(out, c.String())
		}
	}
	return out
}

// RunIfFake turns the running program into a fake firecracker process when
// it was started under the name FakeName (see InstallFake), and exits when
// that process is done. Call it first in TestMain.
func RunIfFake() {
	if filepath.Base(os.Args[0]) == FakeName {
		os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
	}
}

// InstallFake links the running executable (a test binary whose TestMain
// calls RunIfFake) as dir/firecracker and returns that path.
func InstallFake(dir string) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("installing fake firecracker: %w", err)
	}
	path := filepath.Join(dir, FakeName)
	if err := os.Symlink(self, path); err != nil {
		return "", fmt.Errorf("installing fake firecracker: %w", err)
	}
	return path, nil
}

// Main runs a fake firecracker process with Firecracker's command line
// (--api-sock, --id, --version; other flags are accepted and ignored). It serves until the
// fake guest reboots, or SIGTERM/SIGINT, and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(FakeName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("api-sock", "/run/firecracker.socket", "path of the API socket")
	id := fs.String("id", "anonymous-instance", "microVM id")
	fs.String("log-path", "", "ignored")
	fs.String("level", "", "ignored")
	fs.Bool("show-level", false, "ignored")
	fs.Bool("show-log-origin", false, "ignored")
	fs.Uint64("start-time-us", 0, "ignored")
	fs.Uint64("start-time-cpu-us", 0, "ignored")
	fs.Bool("boot-timer", false, "ignored")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 1
	}
	if *version {
		// Firecracker prints its version, a blank line and the snapshot
		// data formats it supports.
		fmt.Fprintf(stdout, "Firecracker v%s\n\nSupported snapshot data format versions: fctest\n", Version)
		return 0
	}
	sigc := make(chan os.Signal, 1)
	if os.Getenv(IgnoreTermEnv) == "1" {
		signal.Ignore(syscall.SIGTERM)
		signal.Notify(sigc, syscall.SIGINT)
	} else {
		signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	}
	s := NewServer(*id)
	s.Console = stdout
	journal, err := os.OpenFile(filepath.Join(filepath.Dir(*sock), JournalName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintf(stderr, "fctest: %v\n", err)
		return 1
	}
	defer journal.Close()
	s.Journal = journal
	if err := s.Listen(*sock); err != nil {
		fmt.Fprintf(stderr, "fctest: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "fctest: fake firecracker %s serving %s (pid %d)\n", Version, *sock, os.Getpid())
	select {
	case <-s.PoweredOff():
	case sig := <-sigc:
		fmt.Fprintf(stdout, "fctest: %v, exiting\n", sig)
	}
	s.Close()
	return 0
}
