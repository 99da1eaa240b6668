package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/units"
)

var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// progress renders the stage events of a create or start. On a terminal it
// keeps one live line per stage with a spinner and the elapsed time, replaced
// by a ✓ line when the stage ends; elsewhere it prints plain lines.
type progress struct {
	w     io.Writer
	tty   bool
	color bool
	now   func() time.Time

	mu         sync.Mutex
	stage      string // current stage name, "" when none
	label      string
	stageStart time.Time
	frame      int
	drawn      bool // a live line is on screen

	stop chan struct{}
	done chan struct{}
}

func newProgress(w io.Writer, tty bool) *progress {
	p := &progress{
		w:     w,
		tty:   tty,
		color: tty && os.Getenv("NO_COLOR") == "",
		now:   time.Now,
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	if tty {
		go p.spin()
	} else {
		close(p.done)
	}
	return p
}

func (p *progress) spin() {
	defer close(p.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			if p.stage != "" {
				p.frame++
				p.draw()
			}
			p.mu.Unlock()
		}
	}
}

// draw rewrites the live line; p.mu is held.
func (p *progress) draw() {
	fmt.Fprintf(p.w, "\r\033[K%s %s %s", p.paint("36", spinnerFrames[p.frame%len(spinnerFrames)]), p.label, p.paint("2", units.Duration(p.now().Sub(p.stageStart))))
	p.drawn = true
}

// clear erases the live line; p.mu is held.
func (p *progress) clear() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
}

func (p *progress) paint(code, s string) string {
	if !p.color {
		return s
	}
	return "\033[" + code + "m" + s + "\033[0m"
}

// Event renders one event; it is the callback given to the rpc client.
func (p *progress) Event(ev rpc.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch ev.Type {
	case "stage":
		if p.stage != "" && p.stage != ev.Stage {
			p.finish(0, true)
		}
		p.stage, p.stageStart = ev.Stage, p.now()
		p.label = ev.Stage
		if ev.Message != "" && p.tty {
			p.label = ev.Message
		}
		if p.tty {
			p.draw()
		} else {
			fmt.Fprintf(p.w, "stage %s...\n", ev.Stage)
		}
	case "stage_done":
		if p.stage == "" || (ev.Stage != "" && ev.Stage != p.stage) {
			p.stage, p.label, p.stageStart = ev.Stage, ev.Stage, p.now()
		}
		p.finish(units.MS(ev.DurationMS), true)
	case "log":
		if ev.Message == "" {
			return
		}
		p.clear()
		if p.tty {
			fmt.Fprintf(p.w, "  %s\n", p.paint("2", ev.Message))
			if p.stage != "" {
				p.draw()
			}
		} else {
			fmt.Fprintf(p.w, "  %s\n", ev.Message)
		}
	}
}

// finish ends the current stage; p.mu is held.
func (p *progress) finish(d time.Duration, ok bool) {
	if p.stage == "" {
		return
	}
	if d <= 0 {
		d = p.now().Sub(p.stageStart)
	}
	p.clear()
	switch {
	case p.tty && ok:
		fmt.Fprintf(p.w, "%s %s %s\n", p.paint("32", "✓"), p.label, p.paint("2", units.Duration(d)))
	case p.tty:
		fmt.Fprintf(p.w, "%s %s %s\n", p.paint("31", "✗"), p.label, p.paint("2", units.Duration(d)))
	case ok:
		fmt.Fprintf(p.w, "stage %s done %s\n", p.stage, units.Duration(d))
	default:
		fmt.Fprintf(p.w, "stage %s failed after %s\n", p.stage, units.Duration(d))
	}
	p.stage, p.label = "", ""
}

// outcome is how a streamed operation ended.
type outcome int

const (
	succeeded outcome = iota
	failed
	interrupted
)

// Close stops the spinner and ends a stage still running according to how
// the operation ended: ✓ on success, ✗ on failure, erased on interruption.
func (p *progress) Close(o outcome) {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	switch o {
	case succeeded:
		p.finish(0, true)
	case failed:
		p.finish(0, false)
	default:
		p.clear()
		p.stage = ""
	}
}
