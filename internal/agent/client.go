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

// Health is the guest's answer to a health or identity request.
type Health struct {
	OK          bool     `json:"ok"`
	Hostname    string   `json:"hostname"`
	UptimeMS    int64    `json:"uptime_ms"`
	SSHHostKeys []string `json:"ssh_host_keys"`
	// Ops are the operations the agent answers; an agent older than the
	// list answers none.
	Ops       []string `json:"ops,omitempty"`
	MachineID string   `json:"machine_id,omitempty"`
	// Settled and SSHListening are set by HealthDetail.
	Settled      bool `json:"settled,omitempty"`
	SSHListening bool `json:"ssh_listening,omitempty"`
	// Applied is what an identity request changed.
	Applied []string `json:"applied,omitempty"`
}

// Answers reports whether the agent answers op.
func (h *Health) Answers(op string) bool {
	for _, o := range h.Ops {
		if o == op {
			return true
		}
	}
	return false
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
	return c.health(ctx, Request{Op: OpHealth})
}

// HealthDetail is Health with the boot's progress: whether the guest's
// init has settled and sshd listens.
func (c *Client) HealthDetail(ctx context.Context) (*Health, error) {
	return c.health(ctx, Request{Op: OpHealth, Detail: true})
}

// Identity makes the guest the machine id describes and returns its health
// after the change (its new host keys among it).
func (c *Client) Identity(ctx context.Context, id Identity) (*Health, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("agent %s: %w", OpIdentity, err)
	}
	return c.health(ctx, Request{Op: OpIdentity, Identity: &id})
}

func (c *Client) health(ctx context.Context, req Request) (*Health, error) {
	resp, err := c.call(ctx, req)
	if err != nil {
		return nil, err
	}
	keys := resp.SSHHostKeys
	if keys == nil {
		keys = []string{}
	}
	return &Health{OK: resp.OK, Hostname: resp.Hostname, UptimeMS: resp.UptimeMS, SSHHostKeys: keys,
		Ops: resp.Ops, MachineID: resp.MachineID, Settled: resp.Settled, SSHListening: resp.SSHListening, Applied: resp.Applied}, nil
}

// Template readies the guest for the snapshot of a template (OpTemplate).
func (c *Client) Template(ctx context.Context) error {
	_, err := c.call(ctx, Request{Op: OpTemplate})
	return err
}

// Shutdown asks the guest to sync and reboot, which ends the VM. It returns
// once the guest has acknowledged; the caller waits for the process to exit.
func (c *Client) Shutdown(ctx context.Context) error {
	_, err := c.call(ctx, Request{Op: OpShutdown})
	return err
}

// Mount asks the guest to mount host folders, and returns once they are
// mounted (or were already).
func (c *Client) Mount(ctx context.Context, ms []Mount) error {
	_, err := c.call(ctx, Request{Op: OpMount, Mounts: ms})
	return err
}

func (c *Client) call(ctx context.Context, req Request) (*Response, error) {
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
