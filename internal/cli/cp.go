package cli

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/transfer"
	"github.com/banger/banger/internal/units"
)

func (a *app) newVMCpCmd() *cobra.Command {
	var o cpOptions
	cmd := &cobra.Command{
		Use:   "cp [-r] SRC... DST",
		Short: "Copy files and directories between the host and a VM",
		Long: `Copy files and directory trees between the host and a running VM. Write the
VM's side as NAME:PATH (a relative PATH starts in root's home, NAME: alone is
the home itself); exactly one side is in a VM. Modes and mtimes are kept
(from a VM, without setuid, setgid and sticky bits; files are yours).

As with cp: an existing directory DST receives the sources inside it;
otherwise the one SRC is copied to DST itself. Directories need -r; symlinks
inside a tree are copied as symlinks, a symlink given as SRC is followed.

Everything goes over one ssh connection as a tar stream, written to a
temporary name beside DST and moved into place at the end: when the copy
fails or is interrupted, nothing is left half-written. A host path with a
colon is written ./a:b.`,
		Example: `  banger vm cp ./notes.txt testbox:/root/
  banger vm cp -r ./project testbox:
  banger vm cp -r testbox:/root/project/build ./build
  banger vm cp testbox:/etc/os-release testbox:/etc/hostname .`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usagef(cmd, "vm cp needs a source and a destination, for example: banger vm cp ./notes.txt testbox:/root/")
			}
			return nil
		},
		ValidArgsFunction: a.completeCopy,
		RunE: func(cmd *cobra.Command, args []string) error {
			plan, err := transfer.ParsePlan(args)
			if errors.Is(err, transfer.ErrUsage) {
				return usagef(cmd, "%s", strings.TrimPrefix(err.Error(), transfer.ErrUsage.Error()+": "))
			}
			if err != nil {
				return err
			}
			return a.copy(cmd.Context(), plan, o)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&o.recursive, "recursive", "r", false, "copy directories and everything in them")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "no progress bar")
	f.BoolVar(&o.json, "json", false, "print what was copied as JSON on stdout")
	return cmd
}

type cpOptions struct {
	recursive, quiet, json bool
}

// cpResult is vm cp's --json output.
type cpResult struct {
	Direction   string   `json:"direction"` // "to_vm" or "from_vm"
	VM          string   `json:"vm"`
	Sources     []string `json:"sources"`
	Destination string   `json:"destination"`
	transfer.Totals
	Seconds        float64 `json:"seconds"`
	BytesPerSecond float64 `json:"bytes_per_second"`
}

// copy runs one vm cp: it checks both sides, then runs ssh once.
func (a *app) copy(ctx context.Context, plan transfer.Plan, o cpOptions) error {
	c, err := a.client(ctx)
	if err != nil {
		return err
	}
	info, err := c.SSHInfo(ctx, plan.VM)
	if err != nil {
		if rpc.IsCode(err, rpc.CodeNotFound) {
			return fmt.Errorf("copying: vm %s not found: %w (a host path with a colon is written ./%s:...)", plan.VM, err, plan.VM)
		}
		return fmt.Errorf("getting ssh details of vm %s: %w", plan.VM, err)
	}
	if err := requireRunning(info, plan.VM); err != nil {
		return fmt.Errorf("copying: %w", err)
	}
	bin, err := sshBinary()
	if err != nil {
		return err
	}
	start := time.Now()
	var totals transfer.Totals
	if plan.Dir == transfer.ToVM {
		totals, err = a.copyToVM(ctx, bin, info, plan, o)
	} else {
		totals, err = a.copyFromVM(ctx, bin, info, plan, o)
	}
	if err != nil {
		return err
	}
	if o.json {
		d := time.Since(start)
		dir := "to_vm"
		if plan.Dir == transfer.FromVM {
			dir = "from_vm"
		}
		return printJSON(a.stdout, cpResult{Direction: dir, VM: plan.VM, Sources: plan.Sources, Destination: plan.Dest,
			Totals: totals, Seconds: d.Seconds(), BytesPerSecond: float64(totals.Bytes) / d.Seconds()})
	}
	return nil
}

// copySSH is the ssh process of one copy: batch mode (no prompts, the key
// only), no terminal, in its own process group so that Ctrl-C reaches
// banger alone and banger decides how the copy ends.
func copySSH(bin string, info *rpc.SSHInfo, remote string) *exec.Cmd {
	args := append([]string{"-T", "-o", "BatchMode=yes"}, sshCommandArgs(info, false, []string{remote})...)
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

func killGroup(cmd *exec.Cmd) {
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

func (a *app) copyToVM(ctx context.Context, bin string, info *rpc.SSHInfo, plan transfer.Plan, o cpOptions) (transfer.Totals, error) {
	dest := plan.VM + ":" + plan.Dest
	srcs, err := transfer.ResolveLocal(plan.Sources, o.recursive)
	if err != nil {
		return transfer.Totals{}, fmt.Errorf("copying to %s: %w", dest, err)
	}
	want, err := transfer.Scan(srcs)
	if err != nil {
		return transfer.Totals{}, fmt.Errorf("copying to %s: %w", dest, err)
	}
	bar := a.newCopyBar(o, "copying to "+dest, want.Bytes)
	cmd := copySSH(bin, info, transfer.ReceiveCommand(plan.Dest, srcs))
	a.debugf("running %s %s", bin, strings.Join(cmd.Args[1:len(cmd.Args)-1], " "))
	stderr := &tailBuffer{max: 16 << 10}
	cmd.Stdout, cmd.Stderr = &tailBuffer{max: 4 << 10}, stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return transfer.Totals{}, err
	}
	if err := cmd.Start(); err != nil {
		return transfer.Totals{}, fmt.Errorf("copying to %s: running ssh: %w", dest, err)
	}
	var sent transfer.Totals
	sendErr := make(chan error, 1)
	go func() {
		s := &transfer.Sender{Progress: bar.Add, Warn: func(m string) { bar.Println("warning: " + m) }}
		bw := bufio.NewWriterSize(stdin, 256<<10)
		t, err := s.WriteArchive(bw, srcs)
		if err == nil {
			err = bw.Flush()
		}
		sent = t
		stdin.Close()
		sendErr <- err
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	var werr, serr error
	interrupted := false
	select {
	case werr = <-waited:
		serr = <-sendErr
	case <-ctx.Done():
		// Cut the stream: the guest's tar sees it end before the done
		// marker, removes its staging directory and exits.
		interrupted = true
		stdin.Close()
		select {
		case werr = <-waited:
		case <-time.After(10 * time.Second):
			killGroup(cmd)
			werr = <-waited
		}
		<-sendErr
	}
	bar.Close(werr == nil && serr == nil && !interrupted)
	if interrupted {
		fmt.Fprintf(a.stderr, "interrupted: nothing was written to %s\n", dest)
		return sent, &exitError{code: exitInterrupted}
	}
	var se *transfer.SourceError
	if errors.As(serr, &se) {
		return sent, fmt.Errorf("copying to %s: %w; nothing was written there", dest, se)
	}
	if werr != nil {
		return sent, copyFailure("copying to "+dest, plan.VM, plan.Dest, werr, stderr.String())
	}
	if serr != nil {
		return sent, fmt.Errorf("copying to %s: sending: %w", dest, serr)
	}
	bar.Summary(sent.Bytes)
	return sent, nil
}

func (a *app) copyFromVM(ctx context.Context, bin string, info *rpc.SSHInfo, plan transfer.Plan, o cpOptions) (transfer.Totals, error) {
	dest, err := transfer.ResolveDest(plan.Dest, len(plan.Sources))
	if err != nil {
		return transfer.Totals{}, fmt.Errorf("copying from vm %s: %w", plan.VM, err)
	}
	op := "copying from vm " + plan.VM
	stage, err := os.MkdirTemp(dest.Parent(), ".banger-cp-")
	if err != nil {
		return transfer.Totals{}, fmt.Errorf("%s: cannot write in %s: %w", op, dest.Parent(), err)
	}
	defer os.RemoveAll(stage)

	cmd := copySSH(bin, info, transfer.SendCommand(plan.Sources, o.recursive))
	a.debugf("running %s %s", bin, strings.Join(cmd.Args[1:len(cmd.Args)-1], " "))
	stderr := &tailBuffer{max: 16 << 10}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return transfer.Totals{}, err
	}
	if err := cmd.Start(); err != nil {
		return transfer.Totals{}, fmt.Errorf("%s: running ssh: %w", op, err)
	}
	var interrupted atomic.Bool
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-ctx.Done():
			interrupted.Store(true)
			killGroup(cmd)
		case <-stopWatch:
		}
	}()

	br := bufio.NewReaderSize(stdout, 256<<10)
	var bar *copyBar
	r := &transfer.Receiver{Stage: stage, Dest: dest, Names: transfer.GuestNames(plan.Sources), Recursive: o.recursive}
	total, rerr := transfer.ReadHeader(br)
	if rerr == nil {
		bar = a.newCopyBar(o, fmt.Sprintf("copying %s to %s", sourcesLabel(plan), plan.Dest), total)
		r.Progress = bar.Add
		rerr = r.Extract(tar.NewReader(br))
	}
	if rerr == nil {
		// tar pads its last record; anything past a few of them is not tar.
		if n, _ := io.Copy(io.Discard, io.LimitReader(br, 1<<20)); n >= 1<<20 {
			rerr = errors.New("the guest sent data after the end of the archive")
		}
	}
	if rerr != nil {
		killGroup(cmd)
	}
	werr := cmd.Wait()
	close(stopWatch)
	<-watched
	if bar != nil {
		bar.Close(rerr == nil && werr == nil)
	}
	if interrupted.Load() {
		fmt.Fprintf(a.stderr, "interrupted: nothing was written to %s\n", plan.Dest)
		return r.Totals(), &exitError{code: exitInterrupted}
	}
	var ue *transfer.UnsafeError
	switch {
	case errors.As(rerr, &ue):
		return r.Totals(), fmt.Errorf("%s: refusing its archive: %w; nothing was written to %s", op, rerr, plan.Dest)
	case werr != nil && (rerr == nil || errors.Is(rerr, io.EOF) || !isLocalWriteError(rerr)):
		return r.Totals(), copyFailure(op, plan.VM, plan.Dest, werr, stderr.String())
	case rerr != nil:
		return r.Totals(), fmt.Errorf("%s: %w; nothing was written to %s", op, rerr, plan.Dest)
	}
	if err := r.Commit(); err != nil {
		return r.Totals(), fmt.Errorf("%s: %w", op, err)
	}
	if bar != nil {
		bar.Summary(r.Totals().Bytes)
	}
	return r.Totals(), nil
}

// isLocalWriteError reports whether err is the host failing to write (its
// disk full, say) rather than the stream breaking.
func isLocalWriteError(err error) bool {
	var pe *os.PathError
	var le *os.LinkError
	return errors.As(err, &pe) || errors.As(err, &le) || strings.Contains(err.Error(), "cannot overwrite") || strings.Contains(err.Error(), "would both be copied")
}

func sourcesLabel(plan transfer.Plan) string {
	if len(plan.Sources) == 1 {
		return plan.VM + ":" + plan.Sources[0]
	}
	return fmt.Sprintf("%d paths from %s", len(plan.Sources), plan.VM)
}

// copyFailure explains a copy whose ssh ended badly, from what the guest
// (or ssh) wrote on stderr: guest output, so cleaned and cut short.
func copyFailure(op, vm, dest string, werr error, stderr string) error {
	code := -1
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		code = ee.ExitCode()
	}
	msg := cleanGuestText(stderr)
	var own []string
	for _, l := range strings.Split(msg, "\n") {
		if m, ok := strings.CutPrefix(l, transfer.ErrorPrefix); ok {
			own = append(own, m)
		}
	}
	switch {
	case strings.Contains(strings.ToLower(msg), "no space left on device"):
		return fmt.Errorf("%s: no space left on the guest's disk for %s: free some space (banger vm ssh %s -- df -h) or copy elsewhere; nothing was written there", op, dest, vm)
	case len(own) > 0:
		return fmt.Errorf("%s: %s", op, strings.Join(own, "; "))
	case code == 255 && (strings.Contains(msg, "Host key verification failed") || strings.Contains(msg, "HOST IDENTIFICATION HAS CHANGED")):
		return fmt.Errorf("%s: the guest's host key does not match the one bangerd pinned for %s.vm, so ssh refused it (%s); if you regenerated it yourself, restart the VM (banger vm stop %s; banger vm start %s) to pin the new one", op, vm, lastLines(msg, 2), vm, vm)
	case code == 255:
		return fmt.Errorf("%s: ssh failed: %s; its console may say why: banger vm logs %s", op, orDash(lastLines(msg, 4)), vm)
	default:
		return fmt.Errorf("%s: the guest side failed (exit %d): %s; nothing was written to %s", op, code, orDash(lastLines(msg, 4)), dest)
	}
}

// cleanGuestText makes guest output safe to print: valid UTF-8, no control
// characters but newlines and tabs, at most 4 KiB.
func cleanGuestText(s string) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' {
			return r
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
	if len(s) > 4096 {
		s = s[len(s)-4096:]
		for !utf8.ValidString(s) {
			s = s[1:]
		}
	}
	return strings.TrimSpace(s)
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, " / ")
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// completeCopy offers NAME: for running VMs, and host files otherwise.
func (a *app) completeCopy(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if strings.ContainsAny(toComplete, ":/.") {
		return nil, cobra.ShellCompDirectiveDefault
	}
	out, _ := a.completeFrom(cmd, func(ctx context.Context, c *rpc.Client) ([]cobra.Completion, error) {
		vms, err := c.ListVMs(ctx)
		var out []cobra.Completion
		for _, vm := range vms {
			if vm.State == "running" && strings.HasPrefix(vm.Name, toComplete) {
				out = append(out, vm.Name+":")
			}
		}
		return out, err
	})
	if len(out) == 0 {
		return nil, cobra.ShellCompDirectiveDefault
	}
	return out, cobra.ShellCompDirectiveNoSpace
}

// copyBar draws a copy's progress on a terminal: nothing for the first
// second (small copies stay quiet), then one line with a bar, the bytes
// and the rate, rewritten five times a second.
type copyBar struct {
	w       io.Writer
	on      bool
	label   string
	total   int64
	start   time.Time
	done    atomic.Int64
	mu      sync.Mutex
	drawn   bool // the line is on screen
	shown   bool // it was ever shown
	stop    chan struct{}
	stopped chan struct{}
}

func (a *app) newCopyBar(o cpOptions, label string, total int64) *copyBar {
	b := &copyBar{w: a.stderr, on: !o.quiet && !o.json && isTerminal(a.stderr), label: label, total: total,
		start: time.Now(), stop: make(chan struct{}), stopped: make(chan struct{})}
	if !b.on {
		close(b.stopped)
		return b
	}
	go func() {
		defer close(b.stopped)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-b.stop:
				return
			case <-t.C:
				if time.Since(b.start) >= time.Second {
					b.mu.Lock()
					b.draw()
					b.mu.Unlock()
				}
			}
		}
	}()
	return b
}

// Add counts n more bytes copied.
func (b *copyBar) Add(n int64) { b.done.Add(n) }

// draw rewrites the line; b.mu is held.
func (b *copyBar) draw() {
	done := b.done.Load()
	el := time.Since(b.start).Seconds()
	rate := ""
	if el > 0 {
		rate = units.Bytes(int64(float64(done)/el)) + "/s"
	}
	line := fmt.Sprintf("%s %s %s", b.label, units.Bytes(done), rate)
	if b.total > 0 {
		frac := min(float64(done)/float64(b.total), 1)
		const width = 24
		full := int(frac * width)
		line = fmt.Sprintf("%s %3.0f%% [%s%s] %s/%s %s", b.label, frac*100, strings.Repeat("█", full), strings.Repeat("·", width-full), orDash(units.Bytes(done)), units.Bytes(b.total), rate)
	}
	fmt.Fprintf(b.w, "\r\033[K%s", line)
	b.drawn, b.shown = true, true
}

// Println prints a line above the bar.
func (b *copyBar) Println(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.drawn {
		fmt.Fprint(b.w, "\r\033[K")
		b.drawn = false
	}
	fmt.Fprintln(b.w, s)
}

// Close stops the bar and erases its line.
func (b *copyBar) Close(ok bool) {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	<-b.stopped
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.drawn {
		fmt.Fprint(b.w, "\r\033[K")
		b.drawn = false
	}
}

// Summary says what was copied, when the bar was shown.
func (b *copyBar) Summary(n int64) {
	if !b.shown {
		return
	}
	d := time.Since(b.start)
	fmt.Fprintf(b.w, "copied %s in %s (%s/s)\n", orDash(units.Bytes(n)), units.Duration(d), units.Bytes(int64(float64(n)/d.Seconds())))
}
