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
	// buildTimeout bounds an image build; the first debootstrap of a
	// recipe downloads a few hundred MB.
	buildTimeout = 2 * time.Hour
	// acceptWait is how long a build request waits for bangerd to take
	// it on, so that a refusal (a duplicate name, a bad size) is shown on
	// the form instead of on an operation page.
	acceptWait = 5 * time.Second
	opKeep     = time.Hour // finished operations stay viewable this long
	opMax      = 200       // and at most this many of them
	opLogs     = 50        // log events kept per operation
)

// opTable holds the UI's long operations in memory.
type opTable struct {
	mu  sync.Mutex
	ops map[string]*op
}

// op is one create, start or image build, fed by the daemon's streamed events.
type op struct {
	id, kind, name string
	started, ended time.Time
	state          string // running, done, error
	err            string
	stages         []opStage
	logs           []string
	vm             *rpc.VM
	image          *rpc.Image
}

// opResult is what a finished operation made.
type opResult struct {
	VM    *rpc.VM
	Image *rpc.Image
}

// opCall runs an operation, sending its progress to emit.
type opCall func(ctx context.Context, emit func(rpc.Event)) (opResult, error)

// opStage is one stage of an operation.
type opStage struct {
	Name       string  `json:"name"`
	State      string  `json:"state"` // running, done, failed
	DurationMS float64 `json:"duration_ms,omitempty"`
}

// opView is the JSON (and template) view of an operation.
type opView struct {
	ID        string     `json:"id"`
	Kind      string     `json:"kind"`
	Name      string     `json:"name"`
	State     string     `json:"state"`
	Done      bool       `json:"done"`
	Error     string     `json:"error,omitempty"`
	Started   time.Time  `json:"started"`
	ElapsedMS float64    `json:"elapsed_ms"`
	Stages    []opStage  `json:"stages"`
	Logs      []string   `json:"logs"`
	VM        *rpc.VM    `json:"vm,omitempty"`
	Image     *rpc.Image `json:"image,omitempty"`
	VMURL     string     `json:"vm_url,omitempty"`
	URL       string     `json:"url"`
	// ResultURL and ResultText link to what the operation is about: the
	// VM's page, or the image list.
	ResultURL  string `json:"result_url"`
	ResultText string `json:"result_text"`
}

// Verb is the operation's progressive verb: Creating, Starting, Building.
func (v opView) Verb() string {
	switch v.Kind {
	case "create":
		return "Creating"
	case "start":
		return "Starting"
	case "build":
		return "Building image"
	}
	return v.Kind
}

// verbs are the error prefixes of the operations.
var verbs = map[string]string{"create": "creating vm", "start": "starting vm", "build": "building image"}

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
		if ev.Image != nil {
			o.image = ev.Image
		}
	}
}

// remove forgets an operation that bangerd refused outright.
func (t *opTable) remove(o *op) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.ops, o.id)
}

// runningOf returns the running operation of kind on name, if any.
func (t *opTable) runningOf(kind, name string) (opView, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range t.ops {
		if o.state == "running" && o.kind == kind && o.name == name {
			return o.viewLocked(), true
		}
	}
	return opView{}, false
}

// finish records the outcome of o.
func (t *opTable) finish(o *op, res opResult, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	o.ended = time.Now()
	if res.VM != nil {
		o.vm = res.VM
	}
	if res.Image != nil {
		o.image = res.Image
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

// running lists the operations of the given kinds still running, oldest first.
func (t *opTable) running(kinds ...string) []opView {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []opView
	for _, o := range t.ops {
		if o.state == "running" && slices.Contains(kinds, o.kind) {
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
		Stages: slices.Clone(o.stages), Logs: slices.Clone(o.logs), URL: "/ops/" + o.id,
	}
	if o.kind == "build" {
		v.ResultURL, v.ResultText = "/images", "Go to the images"
	} else {
		v.VMURL = "/vms/" + url.PathEscape(o.name)
		v.ResultURL, v.ResultText = v.VMURL, "Go to "+o.name
	}
	if o.vm != nil {
		vm := *o.vm
		v.VM = &vm
	}
	if o.image != nil {
		img := *o.image
		v.Image = &img
	}
	return v
}

// startOp launches an operation and answers 303 to its page (or 202 with
// its JSON).
func (s *Server) startOp(w http.ResponseWriter, r *http.Request, kind, name string, call opCall) {
	o, _ := s.launch(kind, name, 0, call)
	s.answerOp(w, r, o)
}

func (s *Server) answerOp(w http.ResponseWriter, r *http.Request, o *op) {
	if wantsJSON(r) {
		v, _ := s.ops.view(o.id)
		w.Header().Set("Location", v.URL)
		writeJSON(w, http.StatusAccepted, v)
		return
	}
	http.Redirect(w, r, "/ops/"+o.id, http.StatusSeeOther)
}

// launch runs call in the background on the server's lifetime context.
// With a wait, it waits that long for bangerd to take the operation on
// (its first event): a refusal before that, such as a duplicate name,
// comes back as the error and the operation is forgotten.
func (s *Server) launch(kind, name string, wait time.Duration, call opCall) (*op, error) {
	o := s.ops.add(kind, name)
	s.log().Info("web: operation started", "op", o.id, "kind", kind, "name", name)
	accepted := make(chan struct{})
	var once sync.Once
	early := make(chan error, 1)
	go func() {
		timeout := opTimeout
		if kind == "build" {
			timeout = buildTimeout
		}
		ctx, cancel := context.WithTimeout(s.ctx, timeout)
		defer cancel()
		res, err := call(ctx, func(ev rpc.Event) {
			once.Do(func() { close(accepted) })
			s.ops.event(o, ev)
		})
		if err != nil {
			err = fmt.Errorf("%s %s: %w", verbs[kind], name, err)
			s.log().Warn("web: operation failed", "op", o.id, "kind", kind, "name", name, "err", err)
		} else {
			s.log().Info("web: operation done", "op", o.id, "kind", kind, "name", name)
		}
		early <- err
		s.ops.finish(o, res, err)
	}()
	if wait <= 0 {
		return o, nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-accepted:
	case <-t.C:
	case err := <-early:
		select {
		case <-accepted:
		default:
			if err != nil {
				s.ops.remove(o)
				return nil, err
			}
		}
	}
	return o, nil
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
	title, nav := v.Verb()+" "+v.Name, "vms"
	if v.Kind == "build" {
		nav = "images"
	}
	s.render(w, http.StatusOK, "op", opPage{base: newBase(w, r, title, nav), Op: v})
}
