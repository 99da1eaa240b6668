package vm

import (
	"fmt"
	"time"

	"github.com/banger/banger/internal/console"
)

// DefaultEarlyStall is how long a cold boot's console may stay silent
// before its kernel has started init, by default (Config.EarlyStall).
const DefaultEarlyStall = console.DefaultQuiet

// kernelStall is the error of a boot whose kernel stopped before init
// (console.Watch).
type kernelStall struct {
	name  string
	quiet time.Duration
	tail  string
}

func (s *kernelStall) Error() string {
	return fmt.Sprintf("the guest kernel of %s stopped in early boot: its console has said nothing new for %v, and it had not started init%s", s.name, s.quiet, s.tail)
}
