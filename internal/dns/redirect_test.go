package dns

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/banger/banger/internal/vmtest"
)

func TestRedirectScript(t *testing.T) {
	gw := netip.MustParseAddr("172.30.236.1")
	r := Redirect{Table: "banger_u1000_dns", Bridge: "banger1000", Gateway: gw, Port: 10053}
	got, err := r.Script()
	want := []string{
		"add table ip banger_u1000_dns", "delete table ip banger_u1000_dns", "add table ip banger_u1000_dns",
		"add chain ip banger_u1000_dns prerouting { type nat hook prerouting priority dstnat; policy accept; }",
		"add chain ip banger_u1000_dns output { type nat hook output priority -100; policy accept; }",
		`add rule ip banger_u1000_dns prerouting iifname "banger1000" ip daddr 172.30.236.1 udp dport 53 dnat to 172.30.236.1:10053 comment "banger:dns"`,
		`add rule ip banger_u1000_dns output ip daddr 172.30.236.1 udp dport 53 dnat to 172.30.236.1:10053 comment "banger:dns"`,
		`add rule ip banger_u1000_dns prerouting iifname "banger1000" ip daddr 172.30.236.1 tcp dport 53 dnat to 172.30.236.1:10053 comment "banger:dns"`,
		`add rule ip banger_u1000_dns output ip daddr 172.30.236.1 tcp dport 53 dnat to 172.30.236.1:10053 comment "banger:dns"`,
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Script() = %v\n%q\nwant\n%q", err, got, want)
	}
	for _, bad := range []Redirect{
		{Table: "a b", Bridge: "b", Gateway: gw, Port: 10053},
		{Table: "t", Bridge: `b"x`, Gateway: gw, Port: 10053},
		{Table: "t", Bridge: "b", Gateway: netip.MustParseAddr("fd00::1"), Port: 10053},
		{Table: "t", Bridge: "b", Gateway: gw, Port: 53},
		{Table: "t", Bridge: "b", Gateway: gw, Port: 0},
	} {
		if s, err := bad.Script(); err == nil {
			t.Errorf("Script(%+v) = %q, want an error", bad, s)
		}
	}
}

// TestRedirectReal applies the table with the real nft in a namespace the
// test makes, with a DNS server on an unprivileged port of the bridge
// address: queries to the bridge address's port 53 from the host (output)
// and from a "guest" namespace on the bridge (prerouting) reach it.
func TestRedirectReal(t *testing.T) {
	vmtest.Require(t, "the DNS redirect with real nft", vmtest.Root(), vmtest.Tool("nft", "nftables"))
	host, guest := vmtest.NewNS(t), vmtest.NewNS(t)
	for _, args := range [][]string{
		{"-n", host.Name, "link", "add", "br-dns", "type", "bridge"},
		{"-n", host.Name, "addr", "add", "10.99.0.1/24", "dev", "br-dns"},
		{"-n", host.Name, "link", "set", "br-dns", "up"},
		{"-n", host.Name, "link", "add", "vg", "type", "veth", "peer", "name", "eth0", "netns", guest.Name},
		{"-n", host.Name, "link", "set", "vg", "master", "br-dns", "up"},
		{"-n", guest.Name, "addr", "add", "10.99.0.2/24", "dev", "eth0"},
		{"-n", guest.Name, "link", "set", "eth0", "up"},
	} {
		if out, err := vmtest.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	gw := netip.MustParseAddr("10.99.0.1")
	srv := &Server{Addrs: []string{"10.99.0.1:10053"}, Upstreams: []string{}, Lookup: func(name string) (netip.Addr, bool) {
		return netip.MustParseAddr("10.99.0.7"), name == "box"
	}}
	if err := host.Do(srv.Start); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	r := &Redirect{R: host.Runner(), Table: "banger_u7_dns", Bridge: "br-dns", Gateway: gw, Port: 10053}
	ctx := context.Background()
	for i := 0; i < 2; i++ { // idempotent
		if err := r.Ensure(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := r.Active(ctx); err != nil || p != 10053 {
		t.Fatalf("Active() = %d, %v; want 10053", p, err)
	}
	ask := func(ns *vmtest.NS, net string) (*mdns.Msg, error) {
		m := new(mdns.Msg)
		m.SetQuestion("box.vm.", mdns.TypeA)
		var resp *mdns.Msg
		err := ns.Do(func() error {
			var err error
			resp, _, err = (&mdns.Client{Net: net, Timeout: 2 * time.Second}).Exchange(m, "10.99.0.1:53")
			return err
		})
		return resp, err
	}
	for _, tc := range []struct {
		who string
		ns  *vmtest.NS
		net string
	}{{"host udp", host, "udp"}, {"host tcp", host, "tcp"}, {"guest udp", guest, "udp"}, {"guest tcp", guest, "tcp"}} {
		resp, err := ask(tc.ns, tc.net)
		if err != nil || len(resp.Answer) != 1 || resp.Answer[0].(*mdns.A).A.String() != "10.99.0.7" {
			t.Errorf("%s: box.vm via 10.99.0.1:53 = %v, %v; want 10.99.0.7", tc.who, resp, err)
		}
	}
	if err := r.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove(ctx); err != nil {
		t.Fatalf("Remove() of a removed table = %v, want nil", err)
	}
	if p, err := r.Active(ctx); err != nil || p != 0 {
		t.Fatalf("Active() after Remove = %d, %v; want 0", p, err)
	}
	if _, err := ask(guest, "udp"); err == nil {
		t.Errorf("guest query to port 53 answered after the redirect was removed")
	}
}
