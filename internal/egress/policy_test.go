package egress

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseEntry(t *testing.T) {
	p := netip.MustParsePrefix
	tests := []struct {
		in   string
		want Entry
		str  string
	}{
		{"github.com", Entry{Domain: "github.com"}, "github.com"},
		{" GitHub.COM. ", Entry{Domain: "github.com"}, "github.com"},
		{"*.npmjs.org", Entry{Domain: "*.npmjs.org"}, "*.npmjs.org"},
		{"_dmarc.example.com", Entry{Domain: "_dmarc.example.com"}, "_dmarc.example.com"},
		{"xn--bcher-kva.example", Entry{Domain: "xn--bcher-kva.example"}, "xn--bcher-kva.example"},
		{"github.com:443", Entry{Domain: "github.com", Port: 443}, "github.com:443"},
		{"github.com:22/TCP", Entry{Domain: "github.com", Port: 22, Proto: ProtoTCP}, "github.com:22/tcp"},
		{"203.0.113.7", Entry{Prefix: p("203.0.113.7/32")}, "203.0.113.7"},
		{"203.0.113.7/32", Entry{Prefix: p("203.0.113.7/32")}, "203.0.113.7"},
		{"10.1.0.0/16", Entry{Prefix: p("10.1.0.0/16")}, "10.1.0.0/16"},
		{"0.0.0.0/0", Entry{Prefix: p("0.0.0.0/0")}, "0.0.0.0/0"},
		{"10.1.0.0/16:5432/tcp", Entry{Prefix: p("10.1.0.0/16"), Port: 5432, Proto: ProtoTCP}, "10.1.0.0/16:5432/tcp"},
		{"192.0.2.53:53/udp", Entry{Prefix: p("192.0.2.53/32"), Port: 53, Proto: ProtoUDP}, "192.0.2.53:53/udp"},
		{"192.0.2.53:65535", Entry{Prefix: p("192.0.2.53/32"), Port: 65535}, "192.0.2.53:65535"},
	}
	for _, tt := range tests {
		got, err := ParseEntry(tt.in)
		if err != nil || got != tt.want || got.String() != tt.str {
			t.Errorf("ParseEntry(%q) = %+v (%q), %v; want %+v (%q)", tt.in, got, got.String(), err, tt.want, tt.str)
		}
		if back, err := ParseEntry(got.String()); err != nil || back != got {
			t.Errorf("ParseEntry(%q) = %+v, %v; want it to read back %+v", got.String(), back, err, got)
		}
	}
}

func TestParseEntryErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "empty"},
		{"   ", "empty"},
		{strings.Repeat("a", 301), "longer than 300"},
		{"github.com:0", `port "0" is not a number`},
		{"github.com:65536", `port "65536"`},
		{"github.com:http", `port "http"`},
		{"github.com:", `port ""`},
		{"github.com:080", `port "080"`},
		{"github.com:+80", `port "+80"`},
		{"github.com/tcp", "a protocol needs a port"},
		{":443", "no domain or address before the port"},
		{"2001:db8::1", "IPv6 is not supported"},
		{"[2001:db8::1]:443", "IPv6 is not supported"},
		{"2001:db8::/32", "IPv6 is not supported"},
		{"10.1.2.3/16", "host bits are set: write 10.1.0.0/16"},
		{"10.0.0.0/33", "not an IPv4 network"},
		{"10.0.0/8", "not an IPv4 network"},
		{"1.2.3", "not an IPv4 address"},
		{"1.2.3.256", "not an IPv4 address"},
		{"localhost", `"localhost" is not a fully qualified domain`},
		{"*.com", "covers a whole top-level domain"},
		{"*.*.example.com", "a wildcard must be the whole first label"},
		{"git*.example.com", "a wildcard must be the whole first label"},
		{"a..example.com", "empty label"},
		{".example.com", "empty label"},
		{"-a.example.com", `label "-a" starts or ends with '-'`},
		{"a-.example.com", `starts or ends with '-'`},
		{strings.Repeat("a", 64) + ".com", "longer than 63 bytes"},
		{strings.Repeat("abcdefghi.", 26) + "com", "at most 253 bytes"},
		{"bücher.example", `has 'ü'`},
		{"a b.example", `has ' '`},
		{"example.123", "its last label is a number"},
		{"example.com/tcp:80", "a '/' goes in a network"},
		{"example.com/24", "a '/' goes in a network"},
	}
	for _, tt := range tests {
		got, err := ParseEntry(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseEntry(%q) = %+v, %v; want an error containing %q", tt.in, got, err, tt.want)
			continue
		}
		if !strings.HasPrefix(err.Error(), fmt.Sprintf("egress entry %q: ", tt.in)) {
			t.Errorf("ParseEntry(%q) error = %q, want it to name the entry", tt.in, err)
		}
	}
}

func TestMatchesName(t *testing.T) {
	tests := []struct {
		entry, name string
		want        bool
	}{
		{"github.com", "github.com.", true},
		{"github.com", "github.com", true},
		{"github.com", "api.github.com.", false},
		{"github.com", "notgithub.com.", false},
		{"*.github.com", "api.github.com.", true},
		{"*.github.com", "a.b.github.com.", true},
		{"*.github.com", "github.com.", false},
		{"*.github.com", "xgithub.com.", false},
		{"10.0.0.0/8", "10.0.0.1", false},
	}
	for _, tt := range tests {
		e, err := ParseEntry(tt.entry)
		if err != nil {
			t.Fatal(err)
		}
		if got := e.MatchesName(tt.name); got != tt.want {
			t.Errorf("ParseEntry(%q).MatchesName(%q) = %v, want %v", tt.entry, tt.name, got, tt.want)
		}
	}
}

func TestParseList(t *testing.T) {
	tests := []struct {
		in, want string // want: FormatList of the result, or an error substring after "error: "
	}{
		{"", ""},
		{"  ", ""},
		{"github.com", "github.com"},
		{"github.com, *.npmjs.org ,10.0.0.0/8:5432", "github.com,*.npmjs.org,10.0.0.0/8:5432"},
		{"GitHub.com,github.com.,github.com", "github.com"},
		{"1.2.3.4,1.2.3.4/32", "1.2.3.4"},
		{"a.example,,b.example", "error: egress list: item 2 is empty"},
		{"a.example,", "error: egress list: item 2 is empty"},
		{"a.example,b..example", `error: egress list: item 2: egress entry "b..example": empty label`},
		{strings.Repeat("x", MaxListLen+1), "error: longer than"},
	}
	for _, tt := range tests {
		got, err := ParseList(tt.in)
		if want, isErr := strings.CutPrefix(tt.want, "error: "); isErr {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("ParseList(%.40q) = %v, %v; want an error containing %q", tt.in, got, err, want)
			}
			continue
		}
		if err != nil || FormatList(got) != tt.want {
			t.Errorf("ParseList(%q) = %q, %v; want %q", tt.in, FormatList(got), err, tt.want)
		}
	}
	var many []string
	for i := range MaxEntries + 1 {
		many = append(many, fmt.Sprintf("h%d.example", i))
	}
	if _, err := ParseList(strings.Join(many[:MaxEntries], ",")); err != nil {
		t.Errorf("ParseList(%d entries) = %v, want nil", MaxEntries, err)
	}
	if _, err := ParseList(strings.Join(many, ",")); err == nil || !strings.Contains(err.Error(), "more than 256 entries") {
		t.Errorf("ParseList(%d entries) = %v, want an error about the limit", MaxEntries+1, err)
	}
}

func TestValidate(t *testing.T) {
	l := func(s string) []Entry {
		e, err := ParseList(s)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	tests := []struct {
		p    Policy
		want string // "" for valid, else an error substring
	}{
		{Policy{}, ""},
		{Policy{Mode: ModeDefault, Allow: l("10.1.0.0/16")}, ""},
		{Policy{Mode: ModeDefault, Allow: l("github.com")}, "takes only addresses"},
		{Policy{Mode: ModeDefault, Deny: l("evil.example")}, "use mode deny"},
		{Policy{Mode: ModeDeny, Deny: l("evil.example,203.0.113.0/24")}, ""},
		{Policy{Mode: ModeDeny, Deny: l("evil.example"), Allow: l("10.1.0.0/16")}, ""},
		{Policy{Mode: ModeDeny, Allow: l("good.example")}, "takes only addresses"},
		{Policy{Mode: ModeAllow}, ""},
		{Policy{Mode: ModeAllow, Allow: l("*.github.com"), Deny: l("gist.github.com")}, ""},
		{Policy{Mode: ModeOpen}, ""},
		{Policy{Mode: ModeOpen, Allow: l("github.com")}, "takes no lists"},
		{Policy{Mode: "deny-all"}, `mode "deny-all" is not`},
		{Policy{Mode: ModeAllow, Allow: []Entry{{Domain: "github.com"}, {Domain: "github.com"}}}, "listed twice"},
		{Policy{Mode: ModeAllow, Allow: []Entry{{Domain: "GitHub.com"}}}, "malformed"},
		{Policy{Mode: ModeAllow, Allow: []Entry{{Prefix: netip.MustParsePrefix("10.1.2.3/8")}}}, "malformed"},
		{Policy{Mode: ModeAllow, Allow: []Entry{{Domain: "a.example", Proto: ProtoTCP}}}, "malformed"},
		{Policy{Mode: ModeAllow, Allow: []Entry{{}}}, "malformed"},
	}
	for _, tt := range tests {
		err := tt.p.Validate()
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%+v.Validate() = %v, want %q", tt.p, err, tt.want)
		}
	}
}

func TestPolicyString(t *testing.T) {
	l := func(s string) []Entry { e, _ := ParseList(s); return e }
	tests := []struct {
		p    Policy
		want string
	}{
		{Policy{}, "default"},
		{Policy{Mode: ModeDefault, Allow: l("10.1.0.0/16")}, "default opening 10.1.0.0/16"},
		{Policy{Mode: ModeAllow, Allow: l("github.com,*.github.com")}, "allow github.com,*.github.com"},
		{Policy{Mode: ModeAllow}, "allow nothing"},
		{Policy{Mode: ModeAllow, Allow: l("*.github.com"), Deny: l("gist.github.com")}, "allow *.github.com except gist.github.com"},
		{Policy{Mode: ModeDeny, Deny: l("evil.example")}, "deny evil.example"},
		{Policy{Mode: ModeDeny, Deny: l("evil.example"), Allow: l("10.0.0.0/8")}, "deny evil.example opening 10.0.0.0/8"},
		{Open(), "open"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.p, got, tt.want)
		}
	}
}

func TestPolicyJSON(t *testing.T) {
	p := Policy{Mode: ModeAllow, Allow: mustParse(t, "github.com:443,10.1.0.0/16:5432/tcp"), Deny: mustParse(t, "gist.github.com")}
	b, err := json.Marshal(p)
	if want := `{"mode":"allow","allow":["github.com:443","10.1.0.0/16:5432/tcp"],"deny":["gist.github.com"]}`; err != nil || string(b) != want {
		t.Fatalf("json.Marshal(%v) = %s, %v; want %s", p, b, err, want)
	}
	var back Policy
	if err := json.Unmarshal(b, &back); err != nil || back.String() != p.String() {
		t.Errorf("json.Unmarshal(%s) = %v, %v; want %v", b, back, err, p)
	}
	for _, bad := range []string{
		`{"mode":"allow","allow":["github..com"]}`,
		`{"mode":"open","allow":["github.com"]}`,
		`{"mode":"allow","extra":1}`,
	} {
		var p Policy
		if err := json.Unmarshal([]byte(bad), &p); err == nil {
			t.Errorf("json.Unmarshal(%s) = %v, nil; want an error", bad, p)
		}
	}
}

func mustParse(t *testing.T, s string) []Entry {
	t.Helper()
	e, err := ParseList(s)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestFromFlags(t *testing.T) {
	tests := []struct {
		allow             string
		allowSet, denySet bool
		deny              string
		want              string // Policy.String(), or "error: ..."
	}{
		{"", false, false, "", "default"},
		{"github.com", true, false, "", "allow github.com"},
		{"", true, false, "", "allow nothing"},
		{"", false, true, "evil.example", "deny evil.example"},
		{"*.github.com", true, true, "gist.github.com", "allow *.github.com except gist.github.com"},
		{"github..com", true, false, "", "error: --egress-allow: egress list: item 1"},
		{"", false, true, "evil.example:0", "error: --egress-deny: egress list: item 1"},
	}
	for _, tt := range tests {
		p, err := FromFlags(tt.allow, tt.allowSet, tt.deny, tt.denySet)
		if want, isErr := strings.CutPrefix(tt.want, "error: "); isErr {
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("FromFlags(%q, %v, %q, %v) = %v, %v; want an error starting %q", tt.allow, tt.allowSet, tt.deny, tt.denySet, p, err, want)
			}
			continue
		}
		if err != nil || p.String() != tt.want {
			t.Errorf("FromFlags(%q, %v, %q, %v) = %q, %v; want %q", tt.allow, tt.allowSet, tt.deny, tt.denySet, p, err, tt.want)
		}
	}
}

func TestParseFile(t *testing.T) {
	tests := []struct {
		file, want string // want: Policy.String(), or "error: ..."
	}{
		{`allow = ["github.com", "*.github.com", "10.1.2.0/24:5432/tcp"]`, "allow github.com,*.github.com,10.1.2.0/24:5432/tcp"},
		{"# a project's policy\nallow = [\"GitHub.com\", \"github.com\"]\n", "allow github.com"},
		{`deny = ["evil.example"]`, "deny evil.example"},
		{"mode = \"allow\"\nallow = [\"*.github.com\"]\ndeny = [\"gist.github.com\"]", "allow *.github.com except gist.github.com"},
		{"mode = \"deny\"\nallow = [\"10.1.0.0/16\"]\ndeny = [\"evil.example\"]", "deny evil.example opening 10.1.0.0/16"},
		{`mode = "default"`, "default"},
		{`mode = "open"`, "open"},
		{`mode = "allow"`, "allow nothing"},
		{"allow = [\"a.example\"]\ndeny = [\"b.example\"]", "error: it has both allow and deny"},
		{``, "error: it allows and denies nothing"},
		{`mode = ""`, "error: mode is empty"},
		{`mode = "closed"`, `error: egress policy: mode "closed" is not`},
		{`allow = ["github.com"]` + "\nports = [443]", `error: unknown key "ports"`},
		{"[allow]\nx = 1", "error: "},
		{`allow = ["github..com"]`, `error: allow item 1: egress entry "github..com": empty label`},
		{`deny = ["ok.example", "bad:0"]`, `error: deny item 2: egress entry "bad:0"`},
		{`allow = "github.com"`, "error: "},
		{"mode = \"open\"\ndeny = [\"x.example\"]", "error: egress policy: open filters nothing"},
	}
	for _, tt := range tests {
		p, err := ParseFile("egress.toml", []byte(tt.file))
		if want, isErr := strings.CutPrefix(tt.want, "error: "); isErr {
			if err == nil || !strings.HasPrefix(err.Error(), "reading egress policy egress.toml: ") || !strings.Contains(err.Error(), want) {
				t.Errorf("ParseFile(%q) = %v, %v; want an error containing %q", tt.file, p, err, want)
			}
			continue
		}
		if err != nil || p.String() != tt.want {
			t.Errorf("ParseFile(%q) = %q, %v; want %q", tt.file, p, err, tt.want)
		}
	}
	big := "allow = [" + strings.Repeat(`"a.example",`, MaxFileSize/12+1) + "]"
	if _, err := ParseFile("big.toml", []byte(big)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("ParseFile(%d bytes) = %v, want an error about the size", len(big), err)
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "egress.toml")
	if err := os.WriteFile(path, []byte("allow = [\"github.com\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p, err := LoadFile(path); err != nil || p.String() != "allow github.com" {
		t.Errorf("LoadFile(%s) = %v, %v; want allow github.com", path, p, err)
	}
	if _, err := LoadFile(filepath.Join(dir, "missing.toml")); err == nil || !strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("LoadFile(missing) = %v, want an error naming the file", err)
	}
}
