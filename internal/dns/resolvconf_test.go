package dns

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/banger/banger/internal/vmtest"
)

func TestUpstreamsFromResolvConf(t *testing.T) {
	tests := []struct {
		name string
		conf string
		want []string
	}{
		{"empty", "", nil},
		{"one", "nameserver 10.255.255.53\n", []string{"10.255.255.53:53"}},
		{"systemd stub", "# managed by systemd-resolved\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n", []string{"127.0.0.53:53"}},
		{"several in order", "nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 192.0.2.3", []string{"192.0.2.1:53", "192.0.2.2:53", "192.0.2.3:53"}},
		{"ipv6", "nameserver 2001:db8::1\nnameserver fe80::1%eth0\n", []string{"[2001:db8::1]:53", "[fe80::1%eth0]:53"}},
		{"comments and blanks", "  # nameserver 192.0.2.9\n\n; nameserver 192.0.2.8\nnameserver 192.0.2.1 # primary\n", []string{"192.0.2.1:53"}},
		{"tabs", "nameserver\t192.0.2.1\n", []string{"192.0.2.1:53"}},
		{"duplicates", "nameserver 192.0.2.1\nnameserver 192.0.2.1\n", []string{"192.0.2.1:53"}},
		{"invalid entries skipped", "nameserver\nnameserver dns.example\nnameserver 192.0.2.1\n", []string{"192.0.2.1:53"}},
		{"other keywords", "domain example\nsearch a b\nnameservers 192.0.2.1\noptions ndots:2\n", nil},
		{"mapped v4", "nameserver ::ffff:192.0.2.1\n", []string{"192.0.2.1:53"}},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		path := filepath.Join(dir, "resolv.conf")
		if err := os.WriteFile(path, []byte(tt.conf), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := UpstreamsFromResolvConf(path)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("UpstreamsFromResolvConf(%s) = %q, %v, want %q, nil", tt.name, got, err, tt.want)
		}
	}
	if got, err := UpstreamsFromResolvConf(filepath.Join(dir, "missing")); err == nil {
		t.Errorf("UpstreamsFromResolvConf(missing) = %q, nil, want an error", got)
	}
}

func TestDefaultResolvConfPrefersResolved(t *testing.T) {
	dir := t.TempDir()
	resolved, etc := filepath.Join(dir, "resolved.conf"), filepath.Join(dir, "resolv.conf")
	defer func(old []string) { resolvConfs = old }(resolvConfs)
	resolvConfs = []string{resolved, etc}
	os.WriteFile(etc, []byte("nameserver 127.0.0.53\n"), 0o644)
	tests := []struct {
		setup func()
		want  []string
	}{
		{func() {}, []string{"127.0.0.53:53"}},
		{func() { os.WriteFile(resolved, []byte("nameserver 192.0.2.1\n"), 0o644) }, []string{"192.0.2.1:53"}},
	}
	for i, tt := range tests {
		tt.setup()
		got, err := DefaultUpstreams()
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("DefaultUpstreams() step %d = %q, %v, want %q, nil", i, got, err, tt.want)
		}
	}
}

// TestDefaultUpstreamsReload forwards with Upstreams unset through a fake
// resolv.conf whose upstreams are fake servers on 127.88.0.x:53.
func TestDefaultUpstreamsReload(t *testing.T) {
	vmtest.Require(t, "listening on port 53 of loopback", vmtest.Root())
	answering := func(ip string) string {
		pc, l, err := listenPair(ip + ":53")
		if err != nil {
			t.Skipf("listening on %s:53: %v", ip, err)
		}
		return serveFake(t, pc, l, func(w mdns.ResponseWriter, req *mdns.Msg) {
			m := new(mdns.Msg)
			m.SetReply(req)
			rr, _ := mdns.NewRR(req.Question[0].Name + " 60 IN TXT " + ip)
			m.Answer = append(m.Answer, rr)
			w.WriteMsg(m)
		})
	}
	answering("127.88.0.1")
	answering("127.88.0.2")

	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	defer func(old []string) { resolvConfs = old }(resolvConfs)
	resolvConfs = []string{filepath.Join(dir, "missing"), conf}
	os.WriteFile(conf, []byte("nameserver 127.88.0.1\n"), 0o644)

	s := startServer(t, &Server{})
	tests := []struct {
		conf string
		want []string
	}{
		{"", []string{"TXT \"127.88.0.1\""}},
		{"nameserver 127.88.0.2\n", []string{"TXT \"127.88.0.2\""}},
	}
	for i, tt := range tests {
		if tt.conf != "" {
			os.WriteFile(conf, []byte(tt.conf), 0o644)
			later := time.Now().Add(time.Duration(i) * time.Minute)
			os.Chtimes(conf, later, later)
		}
		r := query(t, "udp", s.Addr(), "outside.example.", mdns.TypeTXT)
		if got := rdata(r.Answer); !slices.Equal(got, tt.want) {
			t.Errorf("query(outside.example. TXT) step %d = %q, want %q", i, got, tt.want)
		}
	}
}

func TestSplitDNSCommands(t *testing.T) {
	got := SplitDNSCommands("br-banger", "172.30.0.1")
	want := [][]string{
		{"resolvectl", "dns", "br-banger", "172.30.0.1"},
		{"resolvectl", "domain", "br-banger", "~vm"},
		{"resolvectl", "default-route", "br-banger", "false"},
	}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("SplitDNSCommands(br-banger, 172.30.0.1) = %q, want %q", got, want)
	}
}

func TestResolvedActive(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  bool
	}{
		{"nothing", nil, false},
		{"stub without daemon", map[string]string{ResolvedStubConf: "", "proc/1/comm": "systemd\n"}, false},
		{"daemon without stub", map[string]string{"proc/77/comm": "systemd-resolve\n"}, false},
		{"stub and daemon", map[string]string{ResolvedStubConf: "", "proc/1/comm": "systemd\n", "proc/77/comm": "systemd-resolve\n"}, true},
	}
	for _, tt := range tests {
		root := t.TempDir()
		for name, content := range tt.files {
			p := filepath.Join(root, name)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if got := resolvedActive(root); got != tt.want {
			t.Errorf("resolvedActive(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}
