package peer

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procUID finds the owner of the socket at remote talking to local in the
// tcp and tcp6 tables under dir (/proc/net): IPv4 peers may use either.
func procUID(dir string, local, remote netip.AddrPort) (int, error) {
	tables := []string{"tcp6"}
	if remote.Addr().Is4() {
		tables = []string{"tcp", "tcp6"}
	}
	for _, name := range tables {
		path := filepath.Join(dir, name)
		f, err := os.Open(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return -1, fmt.Errorf("finding the owner of %s: %w", remote, err)
		}
		uid, err := parseTable(f, local, remote)
		f.Close()
		if err == nil {
			return uid, nil
		}
		if !errors.Is(err, ErrNotLocal) {
			return -1, fmt.Errorf("finding the owner of %s in %s: %w", remote, path, err)
		}
	}
	return -1, ErrNotLocal
}

// maxLine bounds one line of a /proc/net/tcp table (they are about 150
// bytes).
const maxLine = 4096

// parseTable reads a /proc/net/tcp or tcp6 table and returns the uid of
// the socket whose local address is remote and whose remote address is
// local, or ErrNotLocal.
func parseTable(r io.Reader, local, remote netip.AddrPort) (int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 512), maxLine)
	first := true
	for sc.Scan() {
		line := sc.Text()
		if first {
			first = false
			if !strings.Contains(line, "local_address") {
				return -1, fmt.Errorf("unexpected header %q", line)
			}
			continue
		}
		f := strings.Fields(line)
		if len(f) < 8 {
			return -1, fmt.Errorf("short line %q", line)
		}
		src, err := parseAddrPort(f[1])
		if err != nil {
			return -1, err
		}
		if src != remote {
			continue
		}
		dst, err := parseAddrPort(f[2])
		if err != nil {
			return -1, err
		}
		if dst != local {
			continue
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			return -1, fmt.Errorf("bad state %q in %q", f[3], line)
		}
		if !owned(int(st)) {
			continue
		}
		uid, err := strconv.ParseUint(f[7], 10, 32)
		if err != nil {
			return -1, fmt.Errorf("bad uid %q in %q", f[7], line)
		}
		return int(uid), nil
	}
	if err := sc.Err(); err != nil {
		return -1, err
	}
	return -1, ErrNotLocal
}

// parseAddrPort decodes an address of /proc/net/tcp: the address as the
// kernel's 32-bit words printed in host byte order, a colon, the port in
// hex. IPv4-mapped IPv6 addresses come back as IPv4.
func parseAddrPort(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(p, 16, 16)
	if !ok || err != nil || len(p) != 4 {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	var b [16]byte
	for i := 0; i < len(raw); i += 4 {
		// Each word is a number printed from the host's memory order.
		binary.NativeEndian.PutUint32(b[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	var addr netip.Addr
	if len(raw) == 4 {
		addr = netip.AddrFrom4([4]byte(b[:4]))
	} else {
		addr = netip.AddrFrom16(b).Unmap()
	}
	return netip.AddrPortFrom(addr, uint16(port)), nil
}
