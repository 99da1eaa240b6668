package daemon

import (
	"errors"
	"fmt"

	"github.com/banger/banger/internal/rpc"
)

// apiError carries an rpc error code with a user-facing error.
type apiError struct {
	code string
	err  error
}

func (e *apiError) Error() string { return e.err.Error() }
func (e *apiError) Unwrap() error { return e.err }

func invalid(format string, a ...any) error {
	return &apiError{code: rpc.CodeInvalid, err: fmt.Errorf(format, a...)}
}

func notFound(format string, a ...any) error {
	return &apiError{code: rpc.CodeNotFound, err: fmt.Errorf(format, a...)}
}

func exists(format string, a ...any) error {
	return &apiError{code: rpc.CodeExists, err: fmt.Errorf(format, a...)}
}

func unavailable(err error) error {
	return &apiError{code: rpc.CodeUnavailable, err: err}
}

// codeOf returns the rpc code of err and its HTTP status.
func codeOf(err error) (string, int) {
	var ae *apiError
	if errors.As(err, &ae) {
		switch ae.code {
		case rpc.CodeInvalid:
			return ae.code, 400
		case rpc.CodeNotFound:
			return ae.code, 404
		case rpc.CodeExists:
			return ae.code, 409
		case rpc.CodeUnavailable:
			return ae.code, 503
		}
	}
	return rpc.CodeInternal, 500
}
