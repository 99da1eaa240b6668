// Package api is bangerd's HTTP API on its unix socket: routes, request decoding, the NDJSON stream of long operations, and the mapping of engine errors to statuses.
package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/banger/banger/internal/logfile"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/vm"
)

// MaxBody bounds a request body: every request is a small JSON object.
const MaxBody = 1 << 20

// Server serves the API over an engine.
type Server struct {
	Engine *vm.Engine
	Log    *slog.Logger
	// Status fills the daemon's own part of GET /v1/status.
	Status func() rpc.Status
	// Shutdown asks the daemon to stop (POST /v1/shutdown).
	Shutdown func()
	// KnownHosts is banger's known_hosts file (for ssh).
	KnownHosts string
	// KeyFile is the private key banger logs into guests with.
	KeyFile func() (string, error)
	// Timeouts bound its connections; zero fields take the defaults.
	Timeouts Timeouts
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.handleStatus)
	mux.HandleFunc("POST /v1/shutdown", s.handleShutdown)
	mux.HandleFunc("GET /v1/vms", s.handleList)
	mux.HandleFunc("POST /v1/vms", s.handleCreate)
	mux.HandleFunc("GET /v1/vms/{name}", s.handleShow)
	mux.HandleFunc("DELETE /v1/vms/{name}", s.handleDelete)
	mux.HandleFunc("POST /v1/vms/{name}/start", s.handleStart)
	mux.HandleFunc("POST /v1/vms/{name}/stop", s.handleStop)
	mux.HandleFunc("POST /v1/vms/{name}/set", s.handleSet)
	mux.HandleFunc("POST /v1/vms/{name}/suspend", s.handleSuspend)
	mux.HandleFunc("POST /v1/vms/{name}/resume", s.handleResume)
	mux.HandleFunc("POST /v1/vms/{name}/fork", s.handleFork)
	mux.HandleFunc("POST /v1/vms/{name}/ports", s.handleAddPorts)
	mux.HandleFunc("POST /v1/vms/{name}/ports/remove", s.handleRemovePorts)
	mux.HandleFunc("GET /v1/vms/{name}/ssh", s.handleSSH)
	mux.HandleFunc("GET /v1/vms/{name}/opencode", s.handleOpencode)
	mux.HandleFunc("GET /v1/vms/{name}/logs", s.handleLogs)
	mux.HandleFunc("GET /v1/images", s.handleImages)
	mux.HandleFunc("POST /v1/images", s.handleRegisterImage)
	mux.HandleFunc("POST /v1/images/build", s.handleBuildImage)
	mux.HandleFunc("DELETE /v1/images/{name}", s.handleDeleteImage)
	mux.HandleFunc("POST /v1/images/{name}/warm", s.handleWarmImage)
	return http.MaxBytesHandler(s.deadlines(mux), MaxBody)
}

// HTTPServer returns an http.Server of the API with its timeouts.
func (s *Server) HTTPServer() *http.Server {
	t := s.Timeouts.withDefaults()
	return &http.Server{Handler: s.Handler(), ReadHeaderTimeout: t.ReadHeader, IdleTimeout: t.Idle}
}

// Timeouts bound the API's connections. Read bounds reading a request's
// body: a body that never arrives is refused. Write bounds each write of
// the answer: a client that stops reading is cut off, and a long stream
// (create, logs -f) extends it before every write (extendWrite). Idle
// closes a keep-alive connection with no request.
type Timeouts struct {
	ReadHeader time.Duration // default 10s
	Read       time.Duration // default ReadTimeout
	Write      time.Duration // default WriteTimeout
	Idle       time.Duration // default 2m
}

// Default deadlines of one request.
const (
	ReadTimeout  = 30 * time.Second
	WriteTimeout = time.Minute
)

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.ReadHeader, 10*time.Second)
	def(&t.Read, ReadTimeout)
	def(&t.Write, WriteTimeout)
	def(&t.Idle, 2*time.Minute)
	return t
}

// deadlines gives every request its read and write deadlines. The read
// deadline holds until the body has been read to its end. (A server-wide
// ReadTimeout would also cut off long answers: its deadline stays on the
// connection while the handler runs, and its expiry cancels the request.)
func (s *Server) deadlines(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.extendWrite(w)
		if r.Body != nil && r.Body != http.NoBody {
			rc := http.NewResponseController(w)
			rc.SetReadDeadline(time.Now().Add(s.Timeouts.withDefaults().Read))
			r.Body = &readAll{ReadCloser: r.Body, done: func() { rc.SetReadDeadline(time.Time{}) }}
		}
		h.ServeHTTP(w, r)
	})
}

// readAll calls done once its body has been read to the end. A body that
// failed (the deadline passed) keeps its deadline, so that the server's
// own read of what is left after the handler fails too and closes the
// connection.
type readAll struct {
	io.ReadCloser
	done func()
	once sync.Once
}

func (b *readAll) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.once.Do(b.done)
	}
	return n, err
}

// longAnswer lifts the read deadline of a request whose body was read and
// whose answer streams for as long as it takes.
func longAnswer(w http.ResponseWriter) {
	http.NewResponseController(w).SetReadDeadline(time.Time{})
}

// extendWrite moves w's write deadline the write timeout ahead.
func (s *Server) extendWrite(w http.ResponseWriter) {
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.Timeouts.withDefaults().Write))
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (s *Server) writeErr(w http.ResponseWriter, err error) {
	code, status := CodeOf(err)
	if status == http.StatusInternalServerError {
		s.log().Error("request failed", "err", err)
	}
	writeJSON(w, status, rpc.Error{Message: err.Error(), Code: code})
}

// CodeOf returns the rpc code of an engine error and its HTTP status.
func CodeOf(err error) (string, int) {
	switch {
	case errors.Is(err, vm.ErrInvalid), errors.Is(err, errBadRequest):
		return rpc.CodeInvalid, http.StatusBadRequest
	case errors.Is(err, vm.ErrNotFound):
		return rpc.CodeNotFound, http.StatusNotFound
	case errors.Is(err, vm.ErrExists):
		return rpc.CodeExists, http.StatusConflict
	case errors.Is(err, vm.ErrUnavailable):
		return rpc.CodeUnavailable, http.StatusServiceUnavailable
	}
	return rpc.CodeInternal, http.StatusInternalServerError
}

var errBadRequest = errors.New("bad request")

// decode reads exactly one JSON object of v's type from the body: unknown
// fields, trailing data and bodies over MaxBody are refused, and nothing of
// the body is echoed back beyond a short excerpt.
func decode(r *http.Request, what string, v any) error {
	dec := json.NewDecoder(r.Body)
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("decoding %s request: %w: the body is over %d bytes", what, errBadRequest, MaxBody)
		}
		return fmt.Errorf("decoding %s request: %w: %s", what, errBadRequest, excerpt(err.Error()))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("decoding %s request: %w: data after the JSON object", what, errBadRequest)
	}
	// null would decode as {} into a struct.
	if raw[0] != '{' {
		return fmt.Errorf("decoding %s request: %w: the body is not a JSON object", what, errBadRequest)
	}
	strict := json.NewDecoder(bytes.NewReader(raw))
	strict.DisallowUnknownFields()
	if err := strict.Decode(v); err != nil {
		return fmt.Errorf("decoding %s request: %w: %s", what, errBadRequest, excerpt(err.Error()))
	}
	return nil
}

func excerpt(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	st := s.Status()
	if b, err := s.Engine.Bundle(); err == nil {
		st.Bundle = b.Dir()
		if be, err := s.Engine.Backend(b); err == nil {
			st.Hypervisor = be.Name()
		}
	}
	if vms, err := s.Engine.List(r.Context()); err == nil {
		st.VMs = len(vms)
		for _, v := range vms {
			if v.State == vm.StateRunning {
				st.Running++
			}
		}
	}
	writeJSON(w, 200, st)
}

func (s *Server) handleShutdown(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, 200, map[string]bool{"ok": true})
	s.Shutdown()
}

// handleLogs answers a VM's console log: all of it (its rotated generation
// first), or with ?tail_bytes=N only its last N bytes, read by seeking;
// with ?follow it then goes on with what the guest writes.
func (s *Server) handleLogs(w http.ResponseWriter, r *http.Request) {
	tail, err := rpc.ParseTailBytes(r.URL.Query().Get("tail_bytes"))
	if err != nil {
		s.writeErr(w, fmt.Errorf("reading the console log of VM %s: %w: %w", excerpt(r.PathValue("name")), errBadRequest, err))
		return
	}
	v, err := s.Engine.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeErr(w, err)
		return
	}
	f, err := os.Open(vm.ConsoleLog(v))
	if err != nil {
		s.writeErr(w, fmt.Errorf("VM %s has no console log yet: start it first: %w", v.Name, vm.ErrNotFound))
		return
	}
	defer f.Close()
	if tail != 0 {
		data, end, err := logfile.Last(f, vm.ConsoleLog(v)+logfile.RotatedSuffix, tail)
		if err != nil {
			s.writeErr(w, fmt.Errorf("reading the console log of VM %s: %w", v.Name, err))
			return
		}
		f.Seek(end, io.SeekStart)
		longAnswer(w)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(data)
	} else {
		longAnswer(w)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		// The generation before the last rotation comes first.
		if old, err := os.Open(vm.ConsoleLog(v) + logfile.RotatedSuffix); err == nil {
			io.Copy(w, old)
			old.Close()
		}
		io.Copy(w, f)
	}
	if r.URL.Query().Get("follow") == "" {
		return
	}
	flusher, _ := w.(http.Flusher)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-s.Engine.Context().Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
		s.extendWrite(w)
		// A log shorter than what was read was rotated (it is capped):
		// go on from its new start.
		if pos, err := f.Seek(0, io.SeekCurrent); err == nil {
			if fi, err := f.Stat(); err == nil && fi.Size() < pos {
				f.Seek(0, io.SeekStart)
			}
		}
		if _, err := io.Copy(w, f); err != nil {
			return
		}
	}
}
