package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// dialVsock opens a stream to port in the guest through Firecracker's hybrid
// vsock socket at uds: it writes "CONNECT <port>\n" and expects
// "OK <host port>\n" before the stream belongs to the guest.
func dialVsock(ctx context.Context, uds string, port uint32) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", uds)
	if err != nil {
		return nil, fmt.Errorf("dialing vsock port %d on %s: %w", port, uds, err)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	err = vsockHandshake(c, port)
	if !stop() {
		// ctx ended during the handshake.
		c.Close()
		return nil, fmt.Errorf("dialing vsock port %d on %s: %w", port, uds, ctx.Err())
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("dialing vsock port %d on %s: %w", port, uds, err)
	}
	return c, nil
}

// vsockHandshake does the CONNECT exchange on c. It reads the answer one
// byte at a time so that nothing after the newline is consumed.
func vsockHandshake(c io.ReadWriter, port uint32) error {
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		return fmt.Errorf("sending CONNECT: %w", err)
	}
	var line []byte
	b := make([]byte, 1)
	for len(line) < 64 {
		n, err := c.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
			continue
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("the connection was closed before OK (is the guest up and listening on port %d?)", port)
		}
		if err != nil {
			return fmt.Errorf("reading the CONNECT answer: %w", err)
		}
	}
	rest, ok := strings.CutPrefix(string(line), "OK ")
	if !ok {
		return fmt.Errorf("unexpected CONNECT answer %q", line)
	}
	if _, err := strconv.ParseUint(rest, 10, 32); err != nil {
		return fmt.Errorf("unexpected CONNECT answer %q", line)
	}
	return nil
}
