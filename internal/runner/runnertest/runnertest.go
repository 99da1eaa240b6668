// Package runnertest is the one recording fake of runner.Runner for tests: it records every command and answers from canned replies.
package runnertest

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/banger/banger/internal/runner"
)

// Runner records every command as "run NAME ARGS..." or "priv NAME
// ARGS..." and answers it from the first handler whose prefix the command
// line ("NAME ARGS...") starts with; commands no handler takes go to
// Fallback, or fail when it is nil. It is safe for concurrent use.
type Runner struct {
	// Fallback runs commands no handler takes; nil makes them fail.
	Fallback runner.Runner

	mu       sync.Mutex
	calls    []string
	handlers []handler
}

type handler struct {
	prefix string
	fn     func(args []string) ([]byte, error)
}

// Reply is one canned answer.
type Reply struct {
	Out string
	Err error
}

// On answers commands starting with prefix by calling fn with the whole
// argv (name first). Later handlers of a longer prefix are tried first.
func (r *Runner) On(prefix string, fn func(argv []string) ([]byte, error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.handlers = append(r.handlers, handler{prefix, fn})
}

// Reply answers commands starting with prefix with replies in turn; the
// last one repeats.
func (r *Runner) Reply(prefix string, replies ...Reply) {
	var mu sync.Mutex
	i := 0
	r.On(prefix, func([]string) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		if len(replies) == 0 {
			return nil, nil
		}
		rep := replies[min(i, len(replies)-1)]
		i++
		return []byte(rep.Out), rep.Err
	})
}

// OK answers commands starting with each prefix with no output and no error.
func (r *Runner) OK(prefixes ...string) {
	for _, p := range prefixes {
		r.Reply(p)
	}
}

// Calls returns the commands run so far, in order.
func (r *Runner) Calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// Reset forgets the recorded calls (not the handlers).
func (r *Runner) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = nil
}

// Run implements runner.Runner.
func (r *Runner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return r.do(ctx, "run", name, args)
}

// RunPrivileged implements runner.Runner.
func (r *Runner) RunPrivileged(ctx context.Context, name string, args ...string) ([]byte, error) {
	return r.do(ctx, "priv", name, args)
}

func (r *Runner) do(ctx context.Context, kind, name string, args []string) ([]byte, error) {
	line := strings.Join(append([]string{name}, args...), " ")
	r.mu.Lock()
	r.calls = append(r.calls, kind+" "+line)
	var best *handler
	for i := range r.handlers {
		h := &r.handlers[i]
		if strings.HasPrefix(line, h.prefix) && (best == nil || len(h.prefix) > len(best.prefix)) {
			best = h
		}
	}
	r.mu.Unlock()
	if best != nil {
		return best.fn(append([]string{name}, args...))
	}
	if r.Fallback != nil {
		if kind == "priv" {
			return r.Fallback.RunPrivileged(ctx, name, args...)
		}
		return r.Fallback.Run(ctx, name, args...)
	}
	return nil, fmt.Errorf("%s: exit status 127: runnertest: no reply for this command", line)
}
