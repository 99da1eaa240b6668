package rpc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// APIError is an error answered by the daemon.
type APIError struct {
	Status int
	Err    Error
}

func (e *APIError) Error() string { return e.Err.Message }

// IsCode reports whether err is an APIError with the given code.
func IsCode(err error, code string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Err.Code == code
}

// Client talks to bangerd over its unix socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableCompression: true,
	}
	return &Client{Socket: socket, http: &http.Client{Transport: tr}}
}

func (c *Client) do(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encoding %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://bangerd"+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling bangerd at %s: %w", c.Socket, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var e Error
		b, _ := io.ReadAll(resp.Body)
		if json.Unmarshal(b, &e) != nil || e.Message == "" {
			e = Error{Message: fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b))), Code: CodeInternal}
		}
		return nil, &APIError{Status: resp.StatusCode, Err: e}
	}
	return resp, nil
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.do(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding answer to %s %s: %w", method, path, err)
	}
	return nil
}

// stream reads NDJSON events, calling fn for each, and returns the final
// "done" event's VM or the "error" event as an error.
func (c *Client) stream(ctx context.Context, method, path string, in any, fn func(Event)) (*VM, error) {
	ev, err := c.streamEvents(ctx, method, path, in, fn)
	if ev == nil {
		return nil, err
	}
	return ev.VM, err
}

// streamEvents reads NDJSON events until the final one, which it returns.
func (c *Client) streamEvents(ctx context.Context, method, path string, in any, fn func(Event)) (*Event, error) {
	resp, err := c.do(ctx, method, path, in)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("decoding event from %s %s: %w", method, path, err)
		}
		if fn != nil {
			fn(ev)
		}
		switch ev.Type {
		case "done":
			return &ev, nil
		case "error":
			return &ev, &APIError{Status: 500, Err: Error{Message: ev.Error, Code: ev.Code}}
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("%s %s: bangerd went away before it finished (%w): it may have been stopped or crashed; what it was doing goes on or is reconciled when it starts again: see 'banger daemon status' and 'banger vm list'", method, path, err)
	} else if err != nil {
		return nil, fmt.Errorf("reading events from %s %s: %w", method, path, err)
	}
	return nil, fmt.Errorf("%s %s: bangerd closed the stream before finishing: see 'banger daemon status' and bangerd's log", method, path)
}

// Status returns the daemon status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.call(ctx, "GET", "/v1/status", nil, &s)
}

// Shutdown asks the daemon to exit. Running VMs keep running.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.call(ctx, "POST", "/v1/shutdown", nil, nil)
}

// ListVMs lists all VMs.
func (c *Client) ListVMs(ctx context.Context) ([]VM, error) {
	var vms []VM
	return vms, c.call(ctx, "GET", "/v1/vms", nil, &vms)
}

// GetVM returns one VM by name or id.
func (c *Client) GetVM(ctx context.Context, name string) (*VM, error) {
	var vm VM
	return &vm, c.call(ctx, "GET", "/v1/vms/"+url.PathEscape(name), nil, &vm)
}

// CreateVM creates a VM and streams progress to fn until it is ready.
func (c *Client) CreateVM(ctx context.Context, req CreateRequest, fn func(Event)) (*VM, error) {
	return c.stream(ctx, "POST", "/v1/vms", req, fn)
}

// StartVM boots a stopped VM and streams progress to fn until it is ready.
func (c *Client) StartVM(ctx context.Context, name string, fn func(Event)) (*VM, error) {
	return c.stream(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/start", nil, fn)
}

// SuspendVM saves a running VM's memory and devices to its directory and
// ends its hypervisor.
func (c *Client) SuspendVM(ctx context.Context, name string) (*VM, error) {
	var vm VM
	return &vm, c.call(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/suspend", nil, &vm)
}

// ResumeVM restores a suspended VM and streams progress to fn until it is
// ready.
func (c *Client) ResumeVM(ctx context.Context, name string, fn func(Event)) (*VM, error) {
	return c.stream(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/resume", nil, fn)
}

// ForkVM copies running VM src into a new VM named name and streams
// progress to fn until the copy is ready.
func (c *Client) ForkVM(ctx context.Context, src, name string, fn func(Event)) (*VM, error) {
	return c.stream(ctx, "POST", "/v1/vms/"+url.PathEscape(src)+"/fork", ForkRequest{Name: name}, fn)
}

// WarmImage snapshots an image's VM for warm creates, unless a snapshot
// that fits exists, streaming progress to fn.
func (c *Client) WarmImage(ctx context.Context, name string, fn func(Event)) (*Image, error) {
	ev, err := c.streamEvents(ctx, "POST", "/v1/images/"+url.PathEscape(name)+"/warm", nil, fn)
	if ev == nil {
		return nil, err
	}
	return ev.Image, err
}

// StopVM stops a VM, keeping its disks.
func (c *Client) StopVM(ctx context.Context, name string) (*VM, error) {
	var vm VM
	return &vm, c.call(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/stop", nil, &vm)
}

// DeleteVM stops a VM if needed and removes it with its disks.
func (c *Client) DeleteVM(ctx context.Context, name string) error {
	return c.call(ctx, "DELETE", "/v1/vms/"+url.PathEscape(name), nil, nil)
}

// SetVM changes a VM's settings.
func (c *Client) SetVM(ctx context.Context, name string, req SetRequest) (*VM, error) {
	var vm VM
	return &vm, c.call(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/set", req, &vm)
}

// AddPorts publishes more ports of a VM: at once when it runs, else from
// its next start.
func (c *Client) AddPorts(ctx context.Context, name string, ports []Port) (*VM, error) {
	var vm VM
	return &vm, c.call(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/ports", PortsRequest{Ports: ports}, &vm)
}

// RemovePorts stops publishing ports of a VM.
func (c *Client) RemovePorts(ctx context.Context, name string, refs []PortRef) (*VM, error) {
	var vm VM
	return &vm, c.call(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/ports/remove", UnpublishRequest{Ports: refs}, &vm)
}

// SSHInfo returns what is needed to ssh into a VM.
func (c *Client) SSHInfo(ctx context.Context, name string) (*SSHInfo, error) {
	var s SSHInfo
	return &s, c.call(ctx, "GET", "/v1/vms/"+url.PathEscape(name)+"/ssh", nil, &s)
}

// OpencodeAuth returns the URL and basic-auth credentials of a VM's
// opencode server; a not-found error when its image has none.
func (c *Client) OpencodeAuth(ctx context.Context, name string) (*OpencodeAuth, error) {
	var a OpencodeAuth
	return &a, c.call(ctx, "GET", "/v1/vms/"+url.PathEscape(name)+"/opencode", nil, &a)
}

// Logs copies a VM's serial console log to w.
func (c *Client) Logs(ctx context.Context, name string, follow bool, w io.Writer) error {
	q := url.Values{}
	if follow {
		q.Set("follow", "1")
	}
	return c.logs(ctx, name, q, w)
}

// LogsTail copies the last tailBytes of a VM's serial console log to w
// (1 to MaxTailBytes; bangerd reads only those, from the first whole line).
func (c *Client) LogsTail(ctx context.Context, name string, tailBytes int64, w io.Writer) error {
	q := url.Values{}
	q.Set("tail_bytes", strconv.FormatInt(tailBytes, 10))
	return c.logs(ctx, name, q, w)
}

func (c *Client) logs(ctx context.Context, name string, q url.Values, w io.Writer) error {
	path := "/v1/vms/" + url.PathEscape(name) + "/logs"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	resp, err := c.do(ctx, "GET", path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if err != nil && ctx.Err() != nil {
		return nil
	}
	return err
}

// ListImages lists the images.
func (c *Client) ListImages(ctx context.Context) ([]Image, error) {
	var imgs []Image
	return imgs, c.call(ctx, "GET", "/v1/images", nil, &imgs)
}

// RegisterImage records an existing ext4 image; banger never changes its files.
func (c *Client) RegisterImage(ctx context.Context, req RegisterImageRequest) (*Image, error) {
	var img Image
	return &img, c.call(ctx, "POST", "/v1/images", req, &img)
}

// DeleteImage forgets a registered image (its files are left alone).
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.call(ctx, "DELETE", "/v1/images/"+url.PathEscape(name), nil, nil)
}

// BuildImage builds a Debian image in bangerd and streams progress to fn.
func (c *Client) BuildImage(ctx context.Context, req BuildImageRequest, fn func(Event)) (*Image, error) {
	ev, err := c.streamEvents(ctx, "POST", "/v1/images/build", req, fn)
	if ev == nil {
		return nil, err
	}
	return ev.Image, err
}

// MaxTailBytes bounds the tail_bytes of GET /v1/vms/{name}/logs.
const MaxTailBytes = 4 << 20

// ParseTailBytes reads the tail_bytes query parameter of a logs request:
// "" is 0 (the whole log), otherwise a whole number from 1 to MaxTailBytes.
func ParseTailBytes(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 1 || n > MaxTailBytes {
		if len(s) > 20 {
			s = s[:20] + "..."
		}
		return 0, fmt.Errorf("tail_bytes %q is not a whole number from 1 to %d: pass, for example, tail_bytes=65536", s, MaxTailBytes)
	}
	return n, nil
}
