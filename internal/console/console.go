// Package console watches a guest's serial console log for a kernel that stopped in early boot.
package console

import (
	"bytes"
	"io"
	"os"
	"strings"
	"time"
)

// DefaultQuiet is the silence that counts as a stall by default. Under TCG
// a kernel prints a line every few milliseconds of its early boot, and
// gets to init in a few seconds even on a loaded host.
const DefaultQuiet = 30 * time.Second

// initMarkers are what a Linux kernel prints as it hands over to init.
var initMarkers = [][]byte{[]byte("Freeing unused kernel"), []byte("as init process")}

// Watch tells a kernel that stopped in early boot from one that is
// slow: it has written to its console log, but nothing new for quiet, and
// none of what it wrote says it got to init. Under TCG an SMP guest's
// kernel sometimes stops for good there (in its TSC synchronisation
// check, or right after its CPUs come up); booting it again gets past it,
// and nothing has read the VM's disks by then.
type Watch struct {
	path  string
	quiet time.Duration
	// from is where this boot's output starts in the log; size how much
	// of it has been read, at changed.
	from, size int64
	changed    time.Time
	inited     bool
	carry      []byte // the end of what was read, for a marker split by reads
}

// New watches the console log at path of a boot about to
// start (its output is what comes after the log's present end), whose
// kernel has the command line cmdline; nil (no watch) for a kernel told
// to print little (quiet, loglevel=): its silence says nothing.
func New(path, cmdline string, quiet time.Duration, now time.Time) *Watch {
	for _, arg := range strings.Fields(cmdline) {
		if arg == "quiet" || strings.HasPrefix(arg, "loglevel=") {
			return nil
		}
	}
	return watch(path, quiet, now)
}

// Again is a watch of the same console for the next boot, about to start.
func (w *Watch) Again(now time.Time) *Watch {
	return watch(w.path, w.quiet, now)
}

func watch(path string, quiet time.Duration, now time.Time) *Watch {
	w := &Watch{path: path, quiet: quiet, changed: now}
	if fi, err := os.Stat(path); err == nil {
		w.from, w.size = fi.Size(), fi.Size()
	}
	return w
}

// Quiet is how long a silence counts as a stall.
func (w *Watch) Quiet() time.Duration { return w.quiet }

// maxConsoleRead bounds what one check reads of the log.
const maxConsoleRead = 1 << 20

// Stalled says whether the kernel has stopped before init, as of now.
func (w *Watch) Stalled(now time.Time) bool {
	if w == nil || w.inited || w.quiet <= 0 {
		return false
	}
	fi, err := os.Stat(w.path)
	size := int64(0)
	if err == nil {
		size = fi.Size()
	}
	if size < w.size {
		// Rotated or rewritten (a cap, or a hypervisor that truncates it):
		// all of it is this boot's.
		w.from, w.size, w.carry = 0, 0, nil
	}
	if size == w.size {
		// A boot that has printed nothing is not judged: its kernel may
		// have been told to be quiet.
		return size > w.from && now.Sub(w.changed) >= w.quiet
	}
	w.read(size)
	w.changed = now
	return false
}

// read reads the log from w.size up to size, at most maxConsoleRead of its
// end, looking for an init marker.
func (w *Watch) read(size int64) {
	start := max(w.size, size-maxConsoleRead)
	w.size = size
	f, err := os.Open(w.path)
	if err != nil {
		return
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, start, size-start))
	if err != nil {
		return
	}
	b = append(w.carry, b...)
	for _, m := range initMarkers {
		if bytes.Contains(b, m) {
			w.inited = true
			return
		}
	}
	keep := 64
	if len(b) < keep {
		keep = len(b)
	}
	w.carry = append([]byte(nil), b[len(b)-keep:]...)
}
