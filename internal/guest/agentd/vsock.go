package agentd

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// vsockListener is an AF_VSOCK listening socket; package net does not know
// the address family, so the poller is reached through os.File.
type vsockListener struct {
	f *os.File
}

func listenVsock(port uint32) (*vsockListener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("creating vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding vsock port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listening on vsock port %d: %w", port, err)
	}
	return &vsockListener{f: os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d", port))}, nil
}

// Accept waits for a connection; Close unblocks it.
func (l *vsockListener) Accept() (io.ReadWriteCloser, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("accepting vsock connection: %w", err)
	}
	var nfd int
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return aerr != unix.EAGAIN
	})
	if err != nil {
		return nil, fmt.Errorf("accepting vsock connection: %w", err)
	}
	if aerr != nil {
		return nil, fmt.Errorf("accepting vsock connection: %w", aerr)
	}
	return os.NewFile(uintptr(nfd), "vsock-conn"), nil
}

// Close stops the listener.
func (l *vsockListener) Close() error { return l.f.Close() }
