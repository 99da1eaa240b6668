package hypervisortest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/virtiofs"
)

// Shares is a fake file server of host folders (vm.ShareServer): each
// "virtiofsd" is a listening socket at the share's path, which the fake
// hypervisor's Start requires, as QEMU does.
type Shares struct {
	mu      sync.Mutex
	serving map[string]*share // by socket
	starts  int
	// FailStart makes Start fail with this error.
	FailStart error
	// DieOnConnect makes the next servers exit once the hypervisor
	// connects, as virtiofsd does on a device it cannot serve.
	DieOnConnect bool
}

type share struct {
	sh   virtiofs.Share
	ln   net.Listener
	done chan struct{}
	pid  int
}

func (s *share) PID() int              { return s.pid }
func (s *share) Done() <-chan struct{} { return s.done }
func (s *share) Close()                {}

// Start implements vm.ShareServer.
func (f *Shares) Start(_ context.Context, sh virtiofs.Share) (virtiofs.Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.FailStart != nil {
		return nil, f.FailStart
	}
	if fi, err := os.Stat(sh.Source); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("fake virtiofsd: %s is not a folder", sh.Source)
	}
	if f.serving == nil {
		f.serving = map[string]*share{}
	}
	if old := f.serving[sh.Socket]; old != nil {
		return nil, fmt.Errorf("fake virtiofsd: %s is served already", sh.Socket)
	}
	os.Remove(sh.Socket)
	ln, err := net.Listen("unix", sh.Socket)
	if err != nil {
		return nil, fmt.Errorf("fake virtiofsd: %w", err)
	}
	f.starts++
	s := &share{sh: sh, ln: ln, done: make(chan struct{}), pid: 200000 + f.starts}
	f.serving[sh.Socket] = s
	if f.DieOnConnect {
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Close()
			}
			f.Crash(sh.Socket)
		}()
	}
	return s, nil
}

// Adopt implements vm.ShareServer.
func (f *Shares) Adopt(sh virtiofs.Share) (virtiofs.Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.serving[sh.Socket]; s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("fake virtiofsd of %s: %w", sh.Socket, hypervisor.ErrNotRunning)
}

// Stop implements vm.ShareServer.
func (f *Shares) Stop(sh virtiofs.Share) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.serving[sh.Socket]; s != nil {
		s.ln.Close()
		close(s.done)
		delete(f.serving, sh.Socket)
	}
	if err := os.Remove(sh.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Crash ends the server of socket as if virtiofsd died.
func (f *Shares) Crash(socket string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.serving[socket]; s != nil {
		s.ln.Close()
		close(s.done)
		delete(f.serving, socket)
	}
}

// Serving lists the shares being served.
func (f *Shares) Serving() []virtiofs.Share {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []virtiofs.Share
	for _, s := range f.serving {
		out = append(out, s.sh)
	}
	return out
}

// mount is the fake guest's mount: the tag must be one of its devices,
// whose server must still serve.
func (i *Instance) mount(m agent.Mount) error {
	for _, s := range i.spec.Shares {
		if s.Tag != m.Tag {
			continue
		}
		if _, err := os.Stat(s.Socket); err != nil {
			return fmt.Errorf("fake guest: the server of %s is gone", m.Tag)
		}
		i.mu.Lock()
		defer i.mu.Unlock()
		for _, old := range i.mounts {
			if old.Path == m.Path {
				return nil // mounted already
			}
		}
		i.mounts = append(i.mounts, m)
		return nil
	}
	return fmt.Errorf("fake guest: no virtio-fs device tagged %s", m.Tag)
}

// Mounts are what the guest has mounted.
func (i *Instance) Mounts() []agent.Mount {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]agent.Mount(nil), i.mounts...)
}
