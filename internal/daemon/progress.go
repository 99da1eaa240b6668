package daemon

import (
	"fmt"
	"sync"
	"time"

	"github.com/banger/banger/internal/rpc"
)

// progress collects the stages of a long operation and forwards events to
// whoever is listening. Once finished, or once the listener is gone, events
// are dropped: the operation itself goes on.
type progress struct {
	mu     sync.Mutex
	emit   func(rpc.Event)
	done   bool
	timing []rpc.Stage
}

func newProgress(emit func(rpc.Event)) *progress { return &progress{emit: emit} }

func (p *progress) send(ev rpc.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done || p.emit == nil {
		return
	}
	p.emit(ev)
}

// run times fn as the named stage.
func (p *progress) run(stage string, fn func() error) error {
	p.send(rpc.Event{Type: "stage", Stage: stage})
	start := time.Now()
	err := fn()
	ms := float64(time.Since(start)) / float64(time.Millisecond)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.timing = append(p.timing, rpc.Stage{Name: stage, DurationMS: ms})
	p.mu.Unlock()
	p.send(rpc.Event{Type: "stage_done", Stage: stage, DurationMS: ms})
	return nil
}

func (p *progress) stages() []rpc.Stage {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]rpc.Stage(nil), p.timing...)
}

// finish sends the final event; later events are dropped.
func (p *progress) finish(vm *rpc.VM, err error) {
	p.finishEvent(rpc.Event{VM: vm}, err)
}

// finishEvent sends done (its Type set here) or, on err, an error event;
// later events are dropped.
func (p *progress) finishEvent(done rpc.Event, err error) {
	ev := finalEvent(done, err)
	p.send(ev)
	p.close()
}

// close drops every later event.
func (p *progress) close() {
	p.mu.Lock()
	p.done = true
	p.mu.Unlock()
}

// finalEvent turns an operation's outcome into its last event.
func finalEvent(done rpc.Event, err error) rpc.Event {
	done.Type = "done"
	if err != nil {
		code, _ := codeOf(err)
		done.Type, done.Error, done.Code = "error", err.Error(), code
	}
	return done
}

// logf sends a free-form progress line.
func (p *progress) logf(format string, a ...any) {
	p.send(rpc.Event{Type: "log", Message: fmt.Sprintf(format, a...)})
}

// detach stops forwarding events (the client went away).
func (p *progress) detach() {
	p.mu.Lock()
	p.emit = nil
	p.mu.Unlock()
}
