package vm

import (
	"errors"
	"fmt"
)

// Kinds of refusal. The API maps each to a status and a machine-readable
// code; errors.Is(err, ErrInvalid) tells them apart.
var (
	ErrInvalid     = errors.New("invalid request")
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists")
	ErrUnavailable = errors.New("host not ready")
)

// kindError is a user-facing error of one kind.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string        { return e.err.Error() }
func (e *kindError) Unwrap() error        { return e.err }
func (e *kindError) Is(target error) bool { return target == e.kind }

func invalid(format string, a ...any) error {
	return &kindError{ErrInvalid, fmt.Errorf(format, a...)}
}

func notFound(format string, a ...any) error {
	return &kindError{ErrNotFound, fmt.Errorf(format, a...)}
}

func exists(format string, a ...any) error {
	return &kindError{ErrExists, fmt.Errorf(format, a...)}
}

func unavailable(err error) error {
	if err == nil {
		return nil
	}
	return &kindError{ErrUnavailable, err}
}
