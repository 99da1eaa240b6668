package portfwd

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// freePort returns a port nothing listens on now, for proto on loopback.
func freePort(t *testing.T, proto string) uint16 {
	t.Helper()
	if proto == UDP {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return uint16(c.LocalAddr().(*net.UDPAddr).Port)
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// guestTCP is a stand-in for a guest's server on loopback: each connection
// gets what handle does with it. It is closed when the test ends.
func guestTCP(t *testing.T, handle func(net.Conn)) uint16 {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// echoUntilEOF reads everything, then writes it back and closes: it only
// answers once the client half-closed.
func echoUntilEOF(c net.Conn) {
	b, _ := io.ReadAll(c)
	c.Write(b)
}

func listen(t *testing.T, proto string, guestPort uint16, lim Limits) *Forward {
	t.Helper()
	sp := Spec{Proto: proto, HostIP: loopback, HostPort: freePort(t, proto), GuestPort: guestPort}
	var d net.Dialer
	f, err := Listen(sp, loopback, d.DialContext, Config{Limits: lim, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("Listen(%s) = %v", sp, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestTCPRelaysBothWaysWithHalfClose(t *testing.T) {
	f := listen(t, TCP, guestTCP(t, echoUntilEOF), Limits{BufSize: 4 << 10})
	data := make([]byte, 8<<20)
	rand.Read(data)
	c, err := net.Dial("tcp", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("echo through the forward: %d bytes, %v; want the same 8 MiB back", len(got), err)
	}
	waitFor(t, "the connection to end", func() bool { return f.Stats().Active == 0 })
	if st := f.Stats(); st.Accepted != 1 || st.Refused != 0 || st.DialFailed != 0 {
		t.Errorf("Stats() = %+v, want 1 accepted", st)
	}
}

func TestTCPConnectionLimit(t *testing.T) {
	hold := make(chan struct{})
	port := guestTCP(t, func(c net.Conn) {
		c.Write([]byte("hi\n"))
		<-hold
	})
	defer close(hold)
	f := listen(t, TCP, port, Limits{MaxConns: 2})
	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", f.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 3)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi\n" {
			t.Fatalf("connection %d: %q, %v", i, buf, err)
		}
		held = append(held, c)
	}
	// The third is closed at once, without reaching the guest.
	c, err := net.Dial("tcp", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 3)); err == nil {
		t.Errorf("a connection over the limit read %d bytes, want it closed", n)
	}
	if st := f.Stats(); st.Active != 2 || st.Refused != 1 {
		t.Errorf("Stats() = %+v, want 2 active and 1 refused", st)
	}
	// Close ends the held connections and frees the port.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for i, c := range held {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var ne net.Error
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("held connection %d after Close: %v, want it ended", i, err)
		}
	}
	if f.Stats().Active != 0 {
		t.Errorf("active after Close: %d", f.Stats().Active)
	}
	if err := Probe(f.Spec()); err != nil {
		t.Errorf("Probe after Close = %v, want the port free", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestGuestRefusesIsAClosedConnection(t *testing.T) {
	f := listen(t, TCP, freePort(t, TCP), Limits{})
	c, err := net.Dial("tcp", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("read through a forward to a closed guest port succeeded")
	}
	waitFor(t, "the dial failure", func() bool { return f.Stats().DialFailed == 1 })
}

func TestBusyPortIsRefused(t *testing.T) {
	for _, proto := range []string{TCP, UDP} {
		t.Run(proto, func(t *testing.T) {
			var taken io.Closer
			var port uint16
			if proto == TCP {
				l, err := net.Listen("tcp4", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				taken, port = l, uint16(l.Addr().(*net.TCPAddr).Port)
			} else {
				c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				taken, port = c, uint16(c.LocalAddr().(*net.UDPAddr).Port)
			}
			defer taken.Close()
			sp := Spec{Proto: proto, HostIP: loopback, HostPort: port, GuestPort: 80}
			for name, err := range map[string]error{"Probe": Probe(sp), "Listen": func() error {
				f, err := Listen(sp, loopback, (&net.Dialer{}).DialContext, Config{Log: slog.New(slog.DiscardHandler)})
				if err == nil {
					f.Close()
				}
				return err
			}()} {
				if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "is already in use: pick another host port") {
					t.Errorf("%s(%s) on a busy port = %v, want ErrInUse with the fix", name, sp, err)
				}
			}
			// The unspecified address conflicts with the loopback listener.
			any := sp
			any.HostIP = netip.MustParseAddr("0.0.0.0")
			if err := Probe(any); !errors.Is(err, ErrInUse) {
				t.Errorf("Probe(%s) = %v, want ErrInUse", any, err)
			}
		})
	}
	if err := Probe(Spec{Proto: TCP, HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 8080, GuestPort: 80}); !errors.Is(err, ErrNoAddress) {
		t.Errorf("Probe on an address of no interface = %v, want ErrNoAddress", err)
	}
}

// guestUDP is a stand-in for a guest's UDP server: it answers each
// datagram with reply(datagram).
func guestUDP(t *testing.T, reply func([]byte) []byte) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(reply(buf[:n]), from)
		}
	}()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

func udpAsk(t *testing.T, c *net.UDPConn, msg string, wait time.Duration) (string, error) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

func TestUDPSessions(t *testing.T) {
	port := guestUDP(t, func(b []byte) []byte { return append([]byte("echo "), b...) })
	f := listen(t, UDP, port, Limits{MaxSessions: 2, UDPIdle: time.Second})
	addr := f.Addr().(*net.UDPAddr)
	var peers []*net.UDPConn
	for i := 0; i < 3; i++ {
		c, err := net.DialUDP("udp4", nil, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		peers = append(peers, c)
	}
	// Each peer gets its own answers, even interleaved.
	for round := 0; round < 2; round++ {
		for i, c := range peers[:2] {
			msg := string(rune('a'+i)) + strings.Repeat("x", 1000*round)
			if got, err := udpAsk(t, c, msg, 2*time.Second); err != nil || got != "echo "+msg {
				t.Errorf("peer %d round %d: %q, %v; want its own echo", i, round, truncate(got, 20), err)
			}
		}
	}
	// A third peer is over the limit: its datagrams are dropped.
	if got, err := udpAsk(t, peers[2], "c", 100*time.Millisecond); err == nil {
		t.Errorf("peer over the session limit got %q, want nothing", got)
	}
	if st := f.Stats(); st.Active != 2 || st.Refused == 0 {
		t.Errorf("Stats() = %+v, want 2 sessions and refusals", st)
	}
	// Idle sessions end, and make room.
	waitFor(t, "idle sessions to end", func() bool { return f.Stats().Active == 0 })
	if got, err := udpAsk(t, peers[2], "c", 2*time.Second); err != nil || got != "echo c" {
		t.Errorf("peer after the idle expiry: %q, %v; want its echo", got, err)
	}
	big := bytes.Repeat([]byte("z"), 60000)
	if got, err := udpAsk(t, peers[2], string(big), 2*time.Second); err != nil || len(got) != len(big)+5 {
		t.Errorf("a 60000-byte datagram came back as %d bytes, %v", len(got), err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if st := f.Stats(); st.Active != 0 {
		t.Errorf("sessions after Close: %d", st.Active)
	}
	if err := Probe(f.Spec()); err != nil {
		t.Errorf("Probe after Close = %v, want the port free", err)
	}
}

// BenchmarkTCP moves 64 MiB per op from a loopback server to a client,
// through a forward and directly, to show what the relay itself costs.
func BenchmarkTCP(b *testing.B) {
	const size = 64 << 20
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		buf := make([]byte, 256<<10)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for left := size; left > 0; left -= len(buf) {
					if _, err := c.Write(buf[:min(left, len(buf))]); err != nil {
						return
					}
				}
			}()
		}
	}()
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	sp := Spec{Proto: TCP, HostIP: loopback, GuestPort: port}
	for p := uint16(20000); ; p++ {
		if sp.HostPort = p; Probe(sp) == nil {
			break
		}
	}
	f, err := Listen(sp, loopback, (&net.Dialer{}).DialContext, Config{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	for _, path := range []struct{ name, addr string }{{"forward", f.Addr().String()}, {"direct", l.Addr().String()}} {
		b.Run(path.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				c, err := net.Dial("tcp", path.addr)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, c)
				c.Close()
				if err != nil || n != size {
					b.Fatalf("read %d bytes, %v", n, err)
				}
			}
		})
	}
}

// BenchmarkConnect is a new connection's first byte, through a forward and
// directly.
func BenchmarkConnect(b *testing.B) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("x"))
			c.Close()
		}
	}()
	sp := Spec{Proto: TCP, HostIP: loopback, GuestPort: uint16(l.Addr().(*net.TCPAddr).Port)}
	for p := uint16(21000); ; p++ {
		if sp.HostPort = p; Probe(sp) == nil {
			break
		}
	}
	f, err := Listen(sp, loopback, (&net.Dialer{}).DialContext, Config{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	for _, path := range []struct{ name, addr string }{{"forward", f.Addr().String()}, {"direct", l.Addr().String()}} {
		b.Run(path.name, func(b *testing.B) {
			buf := make([]byte, 1)
			for b.Loop() {
				c, err := net.Dial("tcp", path.addr)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

// TestRefusedPeers: peers Refuse names get nothing from the guest, over
// TCP or UDP; others are served.
func TestRefusedPeers(t *testing.T) {
	var d net.Dialer
	refuse := func(a netip.Addr) bool { return a == loopback }
	tcpPort := guestTCP(t, func(c net.Conn) { c.Write([]byte("hi\n")) })
	udpPort := guestUDP(t, func(b []byte) []byte { return b })
	for _, proto := range []string{TCP, UDP} {
		guestPort := tcpPort
		if proto == UDP {
			guestPort = udpPort
		}
		sp := Spec{Proto: proto, HostIP: netip.MustParseAddr("0.0.0.0"), HostPort: freePort(t, proto), GuestPort: guestPort}
		f, err := Listen(sp, loopback, d.DialContext, Config{Refuse: refuse, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		// 127.0.0.1 is refused; 127.0.0.2, another loopback address, is not.
		for _, from := range []string{"127.0.0.1", "127.0.0.2"} {
			got, err := ask(proto, from, fmt.Sprintf("127.0.0.1:%d", sp.HostPort))
			if want := from != "127.0.0.1"; (err == nil) != want {
				t.Errorf("%s from %s: %q, %v; want served %t", proto, from, got, err, want)
			}
		}
		if st := f.Stats(); st.RefusedPeers == 0 || st.Accepted != 1 {
			t.Errorf("%s Stats() = %+v, want refused peers and one served", proto, st)
		}
	}
}

// ask sends one line (or datagram) from the local address from to addr
// and reads the answer.
func ask(proto, from, addr string) (string, error) {
	var laddr net.Addr = &net.TCPAddr{IP: net.ParseIP(from)}
	if proto == UDP {
		laddr = &net.UDPAddr{IP: net.ParseIP(from)}
	}
	c, err := (&net.Dialer{LocalAddr: laddr, Timeout: time.Second}).Dial(proto, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if proto == UDP {
		c.Write([]byte("hi\n"))
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if n == 0 && err == nil {
		err = io.EOF
	}
	return string(buf[:n]), err
}
