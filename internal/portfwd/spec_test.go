package portfwd

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	for _, tt := range []struct {
		in, want string // want: the spec's String, or "error: substring"
	}{
		{"8080:80", "127.0.0.1:8080:80/tcp"},
		{"8080:80/tcp", "127.0.0.1:8080:80/tcp"},
		{"5353:53/udp", "127.0.0.1:5353:53/udp"},
		{"0.0.0.0:8080:80", "0.0.0.0:8080:80/tcp"},
		{"192.0.2.7:1:65535/udp", "192.0.2.7:1:65535/udp"},
		{"[::1]:8080:80", "[::1]:8080:80/tcp"},
		{"[::]:53:53/udp", "[::]:53:53/udp"},
		{"", "error: both a host port and a guest port"},
		{"8080", "error: both a host port and a guest port"},
		{"8080:", "error: guest port is missing"},
		{":80", "error: host port is missing"},
		{"0:80", "error: host port 0 is not from 1 to 65535"},
		{"8080:0", "error: guest port 0 is not from 1 to 65535"},
		{"65536:80", "error: 65536 is not from 1 to 65535"},
		{"123456:80", "error: \"123456\" is not a number"},
		{"+80:80", "error: \"+80\" is not a number"},
		{"-1:80", "error: \"-1\" is not a number"},
		{"80 :80", "error: \"80 \" is not a number"},
		{"8080:80/sctp", "error: protocol \"sctp\" is not tcp or udp"},
		{"8080:80/TCP", "error: protocol \"TCP\" is not tcp or udp"},
		{"8080:80/", "error: protocol \"\" is not tcp or udp"},
		{"localhost:8080:80", "error: \"localhost\" is not an IP address"},
		{"300.1.1.1:8080:80", "error: is not an IP address"},
		{"::1:8080:80", "error: goes in brackets"},
		{"[::1:8080:80", "error: closing bracket"},
		{"[::1]8080:80", "error: closing bracket"},
		{"[127.0.0.1]:8080:80", "error: not an IPv6 address"},
		{"[::1]:8080", "error: both a host port and a guest port"},
		{"[fe80::1%eth0]:8080:80", "error: has a zone"},
		{"[fe80::1]:8080:80", "error: link-local"},
		{"[::ffff:127.0.0.1]:8080:80", "error: IPv4-mapped"},
		{"[ff02::1]:8080:80", "error: not a unicast address"},
		{"224.0.0.1:8080:80", "error: not a unicast address"},
		{"255.255.255.255:8080:80", "error: not a unicast address"},
		{"169.254.1.1:8080:80", "error: link-local"},
		{"1.2.3.4:5:6:7", "error: goes in brackets"},
		{strings.Repeat("1", 65), "error: too long"},
	} {
		got, err := ParseSpec(tt.in)
		if want, ok := strings.CutPrefix(tt.want, "error: "); ok {
			if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "[HOSTIP:]HOSTPORT:GUESTPORT") {
				t.Errorf("ParseSpec(%q) = %v, %v, want an error with %q and the form", tt.in, got, err, want)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ParseSpec(%q) = %v, %v, want %s", tt.in, got, err, tt.want)
			continue
		}
		// The canonical form reads back as itself.
		if again, err := ParseSpec(got.String()); err != nil || again != got {
			t.Errorf("ParseSpec(%q) = %v, %v, want %v", got.String(), again, err, got)
		}
	}
}

func spec(t *testing.T, s string) Spec {
	t.Helper()
	sp, err := ParseSpec(s)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func TestCheck(t *testing.T) {
	for _, tt := range []struct {
		specs []string
		want  string // "" or an error substring
	}{
		{nil, ""},
		{[]string{"8080:80", "8081:80", "8080:80/udp"}, ""},
		{[]string{"127.0.0.1:8080:80", "192.0.2.1:8080:81"}, ""},
		{[]string{"127.0.0.1:8080:80", "[::1]:8080:80"}, ""},
		{[]string{"8080:80", "8080:81"}, "both take host port 8080/tcp"},
		{[]string{"8080:80", "0.0.0.0:8080:80"}, "both take host port 8080/tcp"},
		{[]string{"[::]:8080:80", "127.0.0.1:8080:80"}, "both take host port 8080/tcp"},
		{[]string{"5353:53/udp", "5353:53/udp"}, "both take host port 5353/udp"},
	} {
		var specs []Spec
		for _, s := range tt.specs {
			specs = append(specs, spec(t, s))
		}
		err := Check(specs)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("Check(%v) = %v, want %q", tt.specs, err, tt.want)
		}
	}
	many := make([]Spec, MaxPerVM+1)
	for i := range many {
		many[i] = Spec{Proto: TCP, HostIP: DefaultHostIP, HostPort: uint16(10000 + i), GuestPort: 80}
	}
	if err := Check(many); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("Check(%d specs) = %v, want the limit", len(many), err)
	}
	for _, bad := range []Spec{
		{Proto: "sctp", HostIP: DefaultHostIP, HostPort: 1, GuestPort: 1},
		{Proto: TCP, HostPort: 1, GuestPort: 1},
		{Proto: TCP, HostIP: DefaultHostIP, GuestPort: 1},
		{Proto: TCP, HostIP: DefaultHostIP, HostPort: 1},
		{Proto: TCP, HostIP: netip.MustParseAddr("ff02::1"), HostPort: 1, GuestPort: 1},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", bad)
		}
	}
}

func TestParseSelector(t *testing.T) {
	for _, tt := range []struct {
		in, want string
	}{
		{"8080", "8080/tcp"},
		{"8080/udp", "8080/udp"},
		{"127.0.0.1:8080", "127.0.0.1:8080/tcp"},
		{"0.0.0.0:5353/udp", "0.0.0.0:5353/udp"},
		{"[::1]:8080", "[::1]:8080/tcp"},
		{"8080:80", "8080/tcp"},
		{"8080:80/udp", "8080/udp"},
		{"127.0.0.1:8080:80", "127.0.0.1:8080/tcp"},
		{"[::1]:8080:80/udp", "[::1]:8080/udp"},
		{"", "error: host port is missing"},
		{"0", "error: 0 is not from 1 to 65535"},
		{"x", "error: \"x\" is not a number"},
		{"8080/sctp", "error: protocol \"sctp\""},
		{"::1:8080", "error: brackets"},
		{"224.0.0.1:80", "error: not a unicast address"},
	} {
		got, err := ParseSelector(tt.in)
		if want, ok := strings.CutPrefix(tt.want, "error: "); ok {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("ParseSelector(%q) = %v, %v, want an error with %q", tt.in, got, err, want)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ParseSelector(%q) = %v, %v, want %s", tt.in, got, err, tt.want)
		}
	}
	sel, _ := ParseSelector("8080")
	for _, tt := range []struct {
		spec string
		want bool
	}{
		{"8080:80", true}, {"0.0.0.0:8080:81", true}, {"8080:80/udp", false}, {"8081:80", false},
	} {
		if got := sel.Matches(spec(t, tt.spec)); got != tt.want {
			t.Errorf("8080.Matches(%s) = %t, want %t", tt.spec, got, tt.want)
		}
	}
	sel, _ = ParseSelector("0.0.0.0:8080")
	if sel.Matches(spec(t, "8080:80")) || !sel.Matches(spec(t, "0.0.0.0:8080:80")) {
		t.Errorf("0.0.0.0:8080 matches by address: got %t, %t", sel.Matches(spec(t, "8080:80")), sel.Matches(spec(t, "0.0.0.0:8080:80")))
	}
}
