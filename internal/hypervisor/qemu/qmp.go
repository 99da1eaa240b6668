package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// defaultQMPTimeout bounds one QMP exchange when the caller's context has no
// deadline of its own.
const defaultQMPTimeout = 10 * time.Second

// QMPError is an error reply from QEMU's monitor.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// qmpClient is one QMP session on a unix socket. It is not safe for
// concurrent use.
type qmpClient struct {
	conn   net.Conn
	r      *bufio.Reader
	nextID int
	// Events holds asynchronous events read while waiting for replies.
	events []string
	// fds is the SCM_RIGHTS message sent with the next command (SendFD).
	fds  []byte
	unix *net.UnixConn
}

type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Event  string          `json:"event"`
	ID     json.RawMessage `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
}

// dialQMP connects to the monitor socket at path, reads the greeting and
// negotiates capabilities.
func dialQMP(ctx context.Context, path string) (*qmpClient, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connecting to qmp socket %s: %w", path, err)
	}
	c := &qmpClient{conn: conn, r: bufio.NewReader(conn)}
	stop := c.bound(ctx)
	defer stop()
	var greeting qmpMessage
	if err := c.read(&greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading qmp greeting from %s: %w", path, err)
	}
	if len(greeting.QMP) == 0 {
		conn.Close()
		return nil, fmt.Errorf("reading qmp greeting from %s: not a qmp greeting", path)
	}
	if err := c.executeLocked("qmp_capabilities", nil, nil); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// bound applies ctx's deadline (or the default timeout) to the connection
// and interrupts it when ctx is cancelled. Call the returned func when done.
func (c *qmpClient) bound(ctx context.Context) func() {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(defaultQMPTimeout)
	}
	c.conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Now()) })
	return func() { stop() }
}

func (c *qmpClient) Close() error { return c.conn.Close() }

// Execute runs one command with optional arguments and decodes its return
// value into out when out is not nil.
func (c *qmpClient) Execute(ctx context.Context, command string, args, out any) error {
	stop := c.bound(ctx)
	defer stop()
	return c.executeLocked(command, args, out)
}

// SendFD hands f to QEMU under name (QMP getfd, the descriptor passed as
// SCM_RIGHTS), for a later "fd:name" migration URI. QEMU keeps its own
// copy; the caller closes f.
func (c *qmpClient) SendFD(ctx context.Context, name string, f *os.File) error {
	uc, ok := c.conn.(*net.UnixConn)
	if !ok {
		return errors.New("qmp getfd: the monitor is not a unix socket")
	}
	stop := c.bound(ctx)
	defer stop()
	c.fds = unix.UnixRights(int(f.Fd()))
	c.unix = uc
	defer func() { c.fds = nil }()
	err := c.executeLocked("getfd", map[string]string{"fdname": name}, nil)
	runtime.KeepAlive(f)
	return err
}

func (c *qmpClient) executeLocked(command string, args, out any) error {
	c.nextID++
	id := strconv.Itoa(c.nextID)
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{command, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encoding qmp command %s: %w", command, err)
	}
	if c.fds != nil {
		_, _, err = c.unix.WriteMsgUnix(append(b, '\n'), c.fds, nil)
	} else {
		_, err = c.conn.Write(append(b, '\n'))
	}
	if err != nil {
		return fmt.Errorf("sending qmp command %s: %w", command, err)
	}
	for {
		var m qmpMessage
		if err := c.read(&m); err != nil {
			return fmt.Errorf("reading qmp reply to %s: %w", command, err)
		}
		if m.Event != "" {
			c.events = append(c.events, m.Event)
			continue
		}
		var gotID string
		if json.Unmarshal(m.ID, &gotID) != nil || gotID != id {
			continue // a reply to someone else's command, or to none
		}
		if m.Error != nil {
			m.Error.Command = command
			return m.Error
		}
		if out != nil {
			if err := json.Unmarshal(m.Return, out); err != nil {
				return fmt.Errorf("decoding qmp reply to %s: %w", command, err)
			}
		}
		return nil
	}
}

func (c *qmpClient) read(m *qmpMessage) error {
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		if errors.Is(err, io.EOF) && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return json.Unmarshal(line, m)
}

// qmpStatus is the reply to query-status.
type qmpStatus struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// QueryStatus returns the VM's run state ("running", "paused", "shutdown"...).
func (c *qmpClient) QueryStatus(ctx context.Context) (qmpStatus, error) {
	var s qmpStatus
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// SystemPowerdown presses the ACPI power button.
func (c *qmpClient) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// Quit ends QEMU at once. QEMU may close the socket before its reply
// arrives, which counts as success.
func (c *qmpClient) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	if err != nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET)) {
		return nil
	}
	return err
}
