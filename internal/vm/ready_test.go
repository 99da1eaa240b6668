package vm

import (
	"net"
	"strings"
	"testing"
	"time"
)

func TestReadBanner(t *testing.T) {
	for _, tt := range []struct {
		name, sent string
		ok         bool
	}{
		{"openssh", "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", true},
		{"old protocol alias", "SSH-1.99-x\r\n", true},
		{"lines before the version", "hello\r\nworld\r\nSSH-2.0-x\r\n", true},
		{"ssh 1 only", "SSH-1.5-x\r\n", false},
		{"not ssh", "HTTP/1.1 400 Bad Request\r\n\r\n", false},
		{"closed early", "SSH-2.0-no newline", false},
		{"a line too long", strings.Repeat("x", 4096) + "\nSSH-2.0-x\r\n", false},
		{"too many lines", strings.Repeat("x\n", 40) + "SSH-2.0-x\r\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, b := net.Pipe()
			go func() {
				b.Write([]byte(tt.sent))
				b.Close()
			}()
			err := readBanner(a, 2*time.Second)
			a.Close()
			if (err == nil) != tt.ok {
				t.Errorf("readBanner(%.40q) = %v, want ok %v", tt.sent, err, tt.ok)
			}
		})
	}
}

// TestReadBannerTimesOut: a guest that accepts and says nothing does not
// hold the check past its deadline.
func TestReadBannerTimesOut(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	start := time.Now()
	if err := readBanner(a, 100*time.Millisecond); err == nil {
		t.Fatal("readBanner of a silent server = nil, want an error")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("readBanner took %v with a 100ms deadline", d)
	}
}
