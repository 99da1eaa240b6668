package web

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/banger/banger/internal/rpc"
)

const (
	opTimeout = 30 * time.Minute // a create or start that takes longer is abandoned by the UI
	opKeep    = time.Hour        // finished operations stay viewable this long
	opMax     = 200              // and at most this many of them
	opLogs    = 50               // log events kept per operation
)

// opTable holds the UI's long operations in memory.
type opTable struct {
	mu  sync.Mutex
	ops map[string]*op
}

// op is one create or start, fed by the daemon's streamed events.
type op struct {
	id, kind, name string
	started, ended time.Time
	state          string // running, done, error
	err            string
	stages         []opStage
	logs           []string
	vm             *rpc.VM
}

// opStage is one stage of an operation.
type opStage struct {
	Name       string  `json:"name"`
	State      string  `json:"state"` // running, done, failed
	DurationMS float64 `json:"duration_ms,omitempty"`
}

// opView is the JSON (and template) view of an operation.
type opView struct {
	ID        string    `json:"id"`
	Kind      string    `json:"kind"`
	Name      string    `json:"name"`
	State     string    `json:"state"`
	Done      bool      `json:"done"`
	Error     string    `json:"error,omitempty"`
	Started   time.Time `json:"started"`
	ElapsedMS float64   `json:"elapsed_ms"`
	Stages    []opStage `json:"stages"`
	Logs      []string  `json:"logs"`
	VM        *rpc.VM   `json:"vm,omitempty"`
	VMURL     string    `json:"vm_url"`
	URL       string    `json:"url"`
}

// Verb is the operation's progressive verb: Creating, Starting.
func (v opView) Verb() string {
	switch v.Kind {
	case "create":
		return "Creating"
	case "start":
		return "Starting"
	}
	return v.Kind
}

// Current names the stage running now, for the list page.
func (v opView) Current() string {
	for i := len(v.Stages) - 1; i >= 0; i-- {
		if v.Stages[i].State == "running" {
			return v.Stages[i].Name
		}
	}
	return "waiting for bangerd"
}

func newOpTable() *opTable { return &opTable{ops: map[string]*op{}} }

// add registers a new running operation and forgets old finished ones.
func (t *opTable) add(kind, name string) *op {
	o := &op{id: rand.Text(), kind: kind, name: name, started: time.Now(), state: "running", logs: []string{}, stages: []opStage{}}
	t.mu.Lock()
	defer t.mu.Unlock()
	var finished []*op
	for id, x := range t.ops {
		switch {
		case x.state == "running":
		case time.Since(x.ended) > opKeep:
			delete(t.ops, id)
		default:
			finished = append(finished, x)
		}
	}
	if len(t.ops) >= opMax {
		slices.SortFunc(finished, func(a, b *op) int { return a.ended.Compare(b.ended) })
		for _, x := range finished[:min(len(finished), len(t.ops)-opMax+1)] {
			delete(t.ops, x.id)
		}
	}
	t.ops[o.id] = o
	return o
}

// event applies one streamed event to o.
func (t *opTable) event(o *op, ev rpc.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch ev.Type {
	case "stage":
		o.stages = append(o.stages, opStage{Name: ev.Stage, State: "running"})
	case "stage_done":
		for i := len(o.stages) - 1; i >= 0; i-- {
			if o.stages[i].Name == ev.Stage {
				o.stages[i].State, o.stages[i].DurationMS = "done", ev.DurationMS
				return
			}
		}
		o.stages = append(o.stages, opStage{Name: ev.Stage, State: "done", DurationMS: ev.DurationMS})
	case "log":
		if ev.Message != "" {
			o.logs = append(o.logs, cleanConsole(ev.Message))
			if len(o.logs) > opLogs {
				o.logs = o.logs[len(o.logs)-opLogs:]
			}
		}
	case "done", "error":
		if ev.VM != nil {
			o.vm = ev.VM
		}
	}
}

// finish records the outcome of o.
func (t *opTable) finish(o *op, vm *rpc.VM, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	o.ended = time.Now()
	if vm != nil {
		o.vm = vm
	}
	if o.vm != nil && o.vm.Name != "" {
		o.name = o.vm.Name
	}
	if err != nil {
		o.state, o.err = "error", err.Error()
		for i := range o.stages {
			if o.stages[i].State == "running" {
				o.stages[i].State = "failed"
			}
		}
		return
	}
	o.state = "done"
	for i := range o.stages {
		if o.stages[i].State == "running" {
			o.stages[i].State = "done"
		}
	}
}

// view returns a copy of an operation, or false.
func (t *opTable) view(id string) (opView, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	o, ok := t.ops[id]
	if !ok {
		return opView{}, false
	}
	return o.viewLocked(), true
}

// running lists the operations still running, oldest first.
func (t *opTable) running() []opView {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []opView
	for _, o := range t.ops {
		if o.state == "running" {
			out = append(out, o.viewLocked())
		}
	}
	slices.SortFunc(out, func(a, b opView) int { return a.Started.Compare(b.Started) })
	return out
}

func (o *op) viewLocked() opView {
	end := o.ended
	if end.IsZero() {
		end = time.Now()
	}
	v := opView{
		ID: o.id, Kind: o.kind, Name: o.name, State: o.state, Done: o.state != "running", Error: o.err,
		Started: o.started, ElapsedMS: float64(end.Sub(o.started)) / float64(time.Millisecond),
		Stages: slices.Clone(o.stages), Logs: slices.Clone(o.logs),
		VMURL: "/vms/" + url.PathEscape(o.name), URL: "/ops/" + o.id,
	}
	if o.vm != nil {
		vm := *o.vm
		v.VM = &vm
	}
	return v
}

// startOp runs call in the background on the server's lifetime context and
// answers 303 to the operation's page (or 202 with its JSON).
func (s *Server) startOp(w http.ResponseWriter, r *http.Request, kind, name string, call func(context.Context, func(rpc.Event)) (*rpc.VM, error)) {
	o := s.ops.add(kind, name)
	s.log().Info("web: operation started", "op", o.id, "kind", kind, "vm", name)
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, opTimeout)
		defer cancel()
		vm, err := call(ctx, func(ev rpc.Event) { s.ops.event(o, ev) })
		if err != nil {
			err = fmt.Errorf("%s vm %s: %w", map[string]string{"create": "creating", "start": "starting"}[kind], name, err)
			s.log().Warn("web: operation failed", "op", o.id, "kind", kind, "vm", name, "err", err)
		} else {
			s.log().Info("web: operation done", "op", o.id, "kind", kind, "vm", name)
		}
		s.ops.finish(o, vm, err)
	}()
	if wantsJSON(r) {
		v, _ := s.ops.view(o.id)
		w.Header().Set("Location", v.URL)
		writeJSON(w, http.StatusAccepted, v)
		return
	}
	http.Redirect(w, r, "/ops/"+o.id, http.StatusSeeOther)
}

// opPage is the operation page.
type opPage struct {
	base
	Op opView
}

func (s *Server) showOp(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	v, ok := s.ops.view(id)
	if !ok {
		s.fail(w, r, http.StatusNotFound, fmt.Errorf("showing operation %s: not found (the UI keeps operations in memory for an hour, and forgets them when bangerd restarts)", id))
		return
	}
	if wantsJSON(r) {
		writeJSON(w, http.StatusOK, v)
		return
	}
	title := v.Verb() + " " + v.Name
	s.render(w, http.StatusOK, "op", opPage{base: newBase(w, r, title, "vms"), Op: v})
}
