package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
)

// Health is the guest's answer to a health request.
type Health struct {
	OK          bool     `json:"ok"`
	Hostname    string   `json:"hostname"`
	UptimeMS    int64    `json:"uptime_ms"`
	SSHHostKeys []string `json:"ssh_host_keys"`
}

// Client talks to a guest agent. Every call dials a fresh stream.
type Client struct {
	// Dial opens a byte stream to the agent (vsock, hybrid vsock or the
	// virtio-serial socket).
	Dial func(ctx context.Context) (net.Conn, error)
}

var nextID atomic.Uint64

// Health asks the guest for its hostname, uptime and SSH host keys.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	resp, err := c.call(ctx, OpHealth)
	if err != nil {
		return nil, err
	}
	keys := resp.SSHHostKeys
	if keys == nil {
		keys = []string{}
	}
	return &Health{OK: resp.OK, Hostname: resp.Hostname, UptimeMS: resp.UptimeMS, SSHHostKeys: keys}, nil
}

// Shutdown asks the guest to sync and reboot, which ends the VM. It returns
// once the guest has acknowledged; the caller waits for the process to exit.
func (c *Client) Shutdown(ctx context.Context) error {
	_, err := c.call(ctx, OpShutdown)
	return err
}

// Mount asks the guest to mount host folders, and returns once they are
// mounted (or were already).
func (c *Client) Mount(ctx context.Context, ms []Mount) error {
	_, err := c.do(ctx, Request{Op: OpMount, Mounts: ms})
	return err
}

func (c *Client) call(ctx context.Context, op string) (*Response, error) {
	return c.do(ctx, Request{Op: op})
}

func (c *Client) do(ctx context.Context, req Request) (*Response, error) {
	op := req.Op
	if c.Dial == nil {
		return nil, fmt.Errorf("agent %s: client has no Dial function", op)
	}
	conn, err := c.Dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent %s: dialing: %w", op, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	id := nextID.Add(1)
	req.ID = id
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("agent %s: writing request: %w", op, ctxErr(ctx, err))
	}
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 4096), MaxLine)
	for sc.Scan() {
		var resp Response
		if err := json.Unmarshal(sc.Bytes(), &resp); err != nil {
			continue // not ours: garbage left on a shared stream
		}
		if resp.ID != 0 && resp.ID != id {
			continue // the late answer to an earlier request
		}
		if !resp.OK {
			if resp.Error == "" {
				resp.Error = "guest answered not ok"
			}
			return nil, fmt.Errorf("agent %s: %s", op, guestText(resp.Error))
		}
		return &resp, nil
	}
	err = sc.Err()
	if err == nil {
		err = errors.New("connection closed before an answer")
	}
	return nil, fmt.Errorf("agent %s: reading answer: %w", op, ctxErr(ctx, err))
}

// maxGuestText bounds how much of a guest's error message the client passes on.
const maxGuestText = 256

// guestText makes a message from the guest safe to show: at most
// maxGuestText bytes of valid UTF-8 without control characters (a guest
// could otherwise write escape sequences to the user's terminal).
func guestText(s string) string {
	cut := len(s) > maxGuestText
	if cut {
		s = s[:maxGuestText]
	}
	s = strings.Map(func(r rune) rune {
		if unicode.Is(unicode.Cc, r) {
			return -1
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
	if cut {
		s += "..."
	}
	return s
}

// ctxErr prefers the context's error when the context ended the I/O.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}
