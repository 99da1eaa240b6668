package peer

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

var ap = netip.MustParseAddrPort

// The fixtures are /proc/net/tcp and tcp6 of an x86-64 host (words in
// little-endian order) with root listening on 127.0.0.1:7777, [::1]:7777
// and a dual-stack [::]:7778, and user nobody (65534) connected to each.
func TestProcUID(t *testing.T) {
	for _, tc := range []struct {
		name          string
		local, remote string
		want          int
		wantErr       error
	}{
		{"ipv4 client", "127.0.0.1:7777", "127.0.0.1:49924", 65534, nil},
		{"ipv6 client", "[::1]:7777", "[::1]:48986", 65534, nil},
		{"v4-mapped ipv6 client of a dual-stack server", "[::ffff:127.0.0.1]:7778", "[::ffff:127.0.0.1]:42422", 65534, nil},
		{"ipv4 client of a dual-stack server", "[::ffff:127.0.0.1]:7778", "127.0.0.1:42438", 65534, nil},
		{"the server's own end is not the peer", "127.0.0.1:49924", "127.0.0.1:7777", 0, nil},
		{"a TIME_WAIT socket owns nothing", "127.0.0.1:49934", "127.0.0.1:7777", -1, ErrNotLocal},
		{"another port", "127.0.0.1:7777", "127.0.0.1:49925", -1, ErrNotLocal},
		{"another server", "127.0.0.1:7778", "127.0.0.1:49924", -1, ErrNotLocal},
		{"a remote host", "192.0.2.1:7777", "198.51.100.7:40000", -1, ErrNotLocal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			local, remote := unmap(ap(tc.local)), unmap(ap(tc.remote))
			got, err := procUID("testdata", local, remote)
			if got != tc.want || !errors.Is(err, tc.wantErr) {
				t.Errorf("procUID(%s, %s) = %d, %v, want %d, %v", tc.local, tc.remote, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestParseTableRefusesGarbage(t *testing.T) {
	const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	for _, tc := range []struct{ name, table, want string }{
		{"no header", "   0: 0100007F:1E61 0100007F:C304 01 0 0 0 0 0\n", "unexpected header"},
		{"short line", header + "   0: 0100007F:1E61\n", "short line"},
		{"bad address", header + "   0: 0100007G:C304 0100007F:1E61 01 0 0 0 1000 0\n", "bad address"},
		{"bad port", header + "   0: 0100007F:C30 0100007F:1E61 01 0 0 0 1000 0\n", "bad address"},
		{"odd address length", header + "   0: 0100007F00:C304 0100007F:1E61 01 0 0 0 1000 0\n", "bad address"},
		{"bad uid", header + "   0: 0100007F:C304 0100007F:1E61 01 0 0 0 -5 0\n", "bad uid"},
		{"bad state", header + "   0: 0100007F:C304 0100007F:1E61 zz 0 0 0 1000 0\n", "bad state"},
		{"overlong line", header + strings.Repeat("x", maxLine+1) + "\n", "too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uid, err := parseTable(strings.NewReader(tc.table), ap("127.0.0.1:7777"), ap("127.0.0.1:49924"))
			if err == nil || errors.Is(err, ErrNotLocal) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseTable(%s) = %d, %v, want an error with %q", tc.name, uid, err, tc.want)
			}
		})
	}
}

func TestParseAddrPort(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0100007F:1E61", "127.0.0.1:7777"},
		{"00000000:0000", "0.0.0.0:0"},
		{"00000000000000000000000001000000:1E61", "[::1]:7777"},
		{"0000000000000000FFFF00000100007F:1E62", "127.0.0.1:7778"},
		{"B80D0120000000000000000001000000:0050", "[2001:db8::1]:80"},
	} {
		got, err := parseAddrPort(tc.in)
		if err != nil || got != ap(tc.want) {
			t.Errorf("parseAddrPort(%q) = %v, %v, want %s", tc.in, got, err, tc.want)
		}
	}
}

// diagMessage builds a SOCK_DIAG_BY_FAMILY answer for the socket src->dst.
func diagMessage(state byte, uid uint32, src, dst netip.AddrPort) []byte {
	b := make([]byte, nlmsgHeaderLen+diagMsgLen)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	m := b[nlmsgHeaderLen:]
	m[0], m[1] = unix.AF_INET, state
	putSockID(m[4:], unix.AF_INET, src, dst)
	ne.PutUint32(m[diagMsgUID:], uid)
	return b
}

func diagError(errno unix.Errno) []byte {
	b := make([]byte, nlmsgHeaderLen+4+nlmsgHeaderLen)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.NLMSG_ERROR)
	ne.PutUint32(b[nlmsgHeaderLen:], uint32(-int32(errno)))
	return b
}

func TestParseDiagReply(t *testing.T) {
	src, dst := ap("127.0.0.1:49924"), ap("127.0.0.1:7777")
	for _, tc := range []struct {
		name    string
		reply   []byte
		want    int
		wantErr string
	}{
		{"established", diagMessage(stateEstablished, 1000, src, dst), 1000, ""},
		{"fin wait 2", diagMessage(stateFinWait2, 1000, src, dst), 1000, ""},
		{"time wait reports uid 0, which means nothing", diagMessage(6, 0, src, dst), -1, ErrNotLocal.Error()},
		{"no such socket", diagError(unix.ENOENT), -1, ErrNotLocal.Error()},
		{"other error", diagError(unix.EPERM), -1, "operation not permitted"},
		{"another socket", diagMessage(stateEstablished, 1000, ap("127.0.0.1:1"), dst), -1, "another socket"},
		{"short", diagMessage(stateEstablished, 1000, src, dst)[:40], -1, "bad message length"},
		{"empty", nil, -1, "too short"},
	} {
		got, err := parseDiagReply(tc.reply, src, dst)
		if got != tc.want || (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("parseDiagReply(%s) = %d, %v, want %d, %q", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestLiveConnection asks the kernel about a real loopback connection of
// this process, through both netlink and /proc.
func TestLiveConnection(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "tcp6" {
				addr = "[::1]:0"
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Skipf("no %s loopback: %v", network, err)
			}
			defer ln.Close()
			client, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			server, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			local := server.LocalAddr().(*net.TCPAddr).AddrPort()
			remote := server.RemoteAddr().(*net.TCPAddr).AddrPort()
			for name, lookup := range map[string]func(local, remote netip.AddrPort) (int, error){
				"UID":     UID,
				"netlink": func(l, r netip.AddrPort) (int, error) { return diagUID(unmap(l), unmap(r)) },
				"proc":    func(l, r netip.AddrPort) (int, error) { return procUID("/proc/net", unmap(l), unmap(r)) },
			} {
				if got, err := lookup(local, remote); got != os.Getuid() || err != nil {
					t.Errorf("%s(%s, %s) = %d, %v, want %d", name, local, remote, got, err, os.Getuid())
				}
				if got, err := lookup(local, netip.AddrPortFrom(remote.Addr(), 1)); !errors.Is(err, ErrNotLocal) {
					t.Errorf("%s of a port nobody uses = %d, %v, want ErrNotLocal", name, got, err)
				}
			}
			// A client that closed its end still owns it while the
			// server holds the connection (FIN_WAIT2).
			client.Close()
			if got, err := UID(local, remote); got != os.Getuid() || err != nil {
				t.Errorf("UID after the client closed = %d, %v, want %d", got, err, os.Getuid())
			}
		})
	}
}

// BenchmarkLookup compares the two lookups with 2,000 other loopback
// connections open: netlink asks for one socket, /proc lists them all.
func BenchmarkLookup(b *testing.B) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	var conns []net.Conn
	for range 2000 {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	last := conns[len(conns)-1]
	server := last.RemoteAddr().(*net.TCPAddr).AddrPort()
	client := last.LocalAddr().(*net.TCPAddr).AddrPort()
	for name, lookup := range map[string]func() (int, error){
		"netlink": func() (int, error) { return diagUID(server, client) },
		"proc":    func() (int, error) { return procUID("/proc/net", server, client) },
	} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if uid, err := lookup(); err != nil || uid != os.Getuid() {
					b.Fatalf("%s = %d, %v", name, uid, err)
				}
			}
		})
	}
}
