package vm

import (
	"sync"
	"time"

	"github.com/banger/banger/internal/store"
)

// Progress receives what a long operation (create, start, image build) is
// doing. Implementations forward it to a client; they may drop events, and
// must not block.
type Progress interface {
	// Stage reports that the named stage began (done false) or ended (done
	// true, after took).
	Stage(name string, done bool, took time.Duration)
	// Log is a free-form line.
	Log(msg string)
	// Booted reports that vm's hypervisor runs; its readiness checks follow.
	Booted(vm *store.VM)
}

// NoProgress drops everything.
type NoProgress struct{}

func (NoProgress) Stage(string, bool, time.Duration) {}
func (NoProgress) Log(string)                        {}
func (NoProgress) Booted(*store.VM)                  {}

// stages runs and times the stages of one operation, reporting each to pr.
type stages struct {
	pr     Progress
	mu     sync.Mutex
	timing []store.Stage
}

func newStages(pr Progress) *stages {
	if pr == nil {
		pr = NoProgress{}
	}
	return &stages{pr: pr}
}

// run times fn as the named stage.
func (s *stages) run(name string, fn func() error) error {
	s.pr.Stage(name, false, 0)
	start := time.Now()
	err := fn()
	took := time.Since(start)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.timing = append(s.timing, store.Stage{Stage: name, Duration: took})
	s.mu.Unlock()
	s.pr.Stage(name, true, took)
	return nil
}

func (s *stages) list() []store.Stage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]store.Stage(nil), s.timing...)
}
