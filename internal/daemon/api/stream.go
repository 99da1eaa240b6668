package api

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vm"
)

// progress turns an engine operation's progress into rpc events for one
// client. Once finished, or once the client is gone, events are dropped:
// the operation itself goes on.
type progress struct {
	mu   sync.Mutex
	emit func(rpc.Event)
	done bool
	// booted, when set, ends the stream at the first Booted (--no-wait).
	booted func(*store.VM)
}

var _ vm.Progress = (*progress)(nil)

func (p *progress) send(ev rpc.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done || p.emit == nil {
		return
	}
	p.emit(ev)
}

func (p *progress) Stage(name string, done bool, took time.Duration) {
	if done {
		p.send(rpc.Event{Type: "stage_done", Stage: name, DurationMS: float64(took) / float64(time.Millisecond)})
		return
	}
	p.send(rpc.Event{Type: "stage", Stage: name})
}

func (p *progress) Log(msg string) { p.send(rpc.Event{Type: "log", Message: msg}) }

func (p *progress) Booted(v *store.VM) {
	if p.booted != nil {
		p.booted(v)
	}
}

// close drops every later event.
func (p *progress) close() {
	p.mu.Lock()
	p.done = true
	p.mu.Unlock()
}

// detach stops forwarding events (the client went away).
func (p *progress) detach() {
	p.mu.Lock()
	p.emit = nil
	p.mu.Unlock()
}

// finalEvent turns an operation's outcome into its last event.
func finalEvent(done rpc.Event, err error) rpc.Event {
	done.Type = "done"
	if err != nil {
		code, _ := CodeOf(err)
		done.Type, done.Error, done.Code = "error", err.Error(), code
	}
	return done
}

// stream runs op under the engine's lifetime and forwards its events to the
// client as NDJSON. The outcome is never dropped, progress events may be (a
// slow reader); a client that disconnects only detaches: op carries on.
// early, when set, is how op may end the stream before it returns (the
// --no-wait create): the event it sends is the last one.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, pr *progress, op func() (rpc.Event, error)) {
	longAnswer(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(200)
	flusher, _ := w.(http.Flusher)
	events := make(chan rpc.Event, 256)
	pr.emit = func(ev rpc.Event) {
		select {
		case events <- ev:
		default:
		}
	}
	final := make(chan rpc.Event, 2)
	var once sync.Once
	finish := func(ev rpc.Event) {
		once.Do(func() {
			pr.close()
			final <- ev
			close(events)
		})
	}
	if pr.booted != nil {
		inner := pr.booted
		pr.booted = func(v *store.VM) {
			inner(v)
			finish(rpc.Event{Type: "done", VM: View(r.Context(), s.Engine, v)})
		}
	}
	s.Engine.Go(func() {
		done, err := op()
		finish(finalEvent(done, err))
	})
	enc := json.NewEncoder(w)
	for {
		select {
		case ev, ok := <-events:
			s.extendWrite(w)
			if !ok {
				enc.Encode(<-final)
				return
			}
			if enc.Encode(ev) != nil {
				pr.detach()
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		case <-r.Context().Done():
			pr.detach()
			return
		}
	}
}
