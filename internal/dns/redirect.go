package dns

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/banger/banger/internal/runner"
)

// redirectComment marks the rules Redirect writes.
const redirectComment = "banger:dns"

// Redirect sends DNS for the bridge address's port 53 to the port where an
// unprivileged bangerd listens (it cannot bind 53), for queries from guests
// on the bridge and from the host itself, through banger's own nftables
// table "ip <Table>":
//
//	table ip banger_u1000_dns {
//		chain prerouting {
//			type nat hook prerouting priority dstnat; policy accept;
//			iifname "banger1000" ip daddr 172.30.236.1 udp dport 53 dnat to 172.30.236.1:10053 comment "banger:dns"
//			iifname "banger1000" ip daddr 172.30.236.1 tcp dport 53 dnat to 172.30.236.1:10053 comment "banger:dns"
//		}
//		chain output {
//			type nat hook output priority -100; policy accept;
//			ip daddr 172.30.236.1 udp dport 53 dnat to 172.30.236.1:10053 comment "banger:dns"
//			ip daddr 172.30.236.1 tcp dport 53 dnat to 172.30.236.1:10053 comment "banger:dns"
//		}
//	}
//
// Replies are un-NATed by conntrack, so clients see answers from port 53.
// It never touches anything outside that table.
type Redirect struct {
	R runner.Runner
	// Table is the table's name (the owner's network.Names.Table + "_dns").
	Table string
	// Bridge is the guests' bridge.
	Bridge string
	// Gateway is the bridge's address, where guests and the host ask.
	Gateway netip.Addr
	// Port is where bangerd's DNS server listens on Gateway.
	Port int
}

var nameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,63}$`)

func (r *Redirect) runner() runner.Runner {
	if r.R == nil {
		return runner.Default
	}
	return r.R
}

// Script is the nft script Ensure applies: it replaces the whole table in
// one transaction, so it is idempotent and never leaves half a table.
func (r *Redirect) Script() ([]string, error) {
	if !nameRE.MatchString(r.Table) {
		return nil, fmt.Errorf("dns redirect: table name %q is not valid", r.Table)
	}
	if !nameRE.MatchString(strings.ReplaceAll(r.Bridge, "-", "_")) || len(r.Bridge) > 15 {
		return nil, fmt.Errorf("dns redirect: bridge name %q is not valid", r.Bridge)
	}
	if !r.Gateway.Is4() {
		return nil, fmt.Errorf("dns redirect: gateway %v is not an IPv4 address", r.Gateway)
	}
	if r.Port < 1 || r.Port > 65535 || r.Port == 53 {
		return nil, fmt.Errorf("dns redirect: port %d is not a port other than 53", r.Port)
	}
	t := "ip " + r.Table
	to := netip.AddrPortFrom(r.Gateway, uint16(r.Port)).String()
	s := []string{
		"add table " + t, "delete table " + t, "add table " + t,
		"add chain " + t + " prerouting { type nat hook prerouting priority dstnat; policy accept; }",
		"add chain " + t + " output { type nat hook output priority -100; policy accept; }",
	}
	for _, proto := range []string{"udp", "tcp"} {
		s = append(s,
			fmt.Sprintf(`add rule %s prerouting iifname "%s" ip daddr %s %s dport 53 dnat to %s comment "%s"`, t, r.Bridge, r.Gateway, proto, to, redirectComment),
			fmt.Sprintf(`add rule %s output ip daddr %s %s dport 53 dnat to %s comment "%s"`, t, r.Gateway, proto, to, redirectComment))
	}
	return s, nil
}

// Ensure puts the table in place, replacing any older one.
func (r *Redirect) Ensure(ctx context.Context) error {
	script, err := r.Script()
	if err != nil {
		return err
	}
	if _, err := r.runner().RunPrivileged(ctx, "nft", strings.Join(script, "\n")); err != nil {
		return fmt.Errorf("dns redirect: applying nftables table ip %s: %w", r.Table, err)
	}
	return nil
}

// Remove deletes the table; a table that is already gone is not an error.
func (r *Redirect) Remove(ctx context.Context) error {
	if !nameRE.MatchString(r.Table) {
		return fmt.Errorf("dns redirect: table name %q is not valid", r.Table)
	}
	t := "ip " + r.Table
	if _, err := r.runner().RunPrivileged(ctx, "nft", "add table "+t+"\ndelete table "+t); err != nil {
		return fmt.Errorf("dns redirect: removing nftables table %s: %w", t, err)
	}
	return nil
}

var dnatRE = regexp.MustCompile(`dnat (?:ip )?to ([0-9.]+):([0-9]+)`)

// Active returns the port that the table in the kernel sends the gateway's
// port 53 to, or 0 when there is no such table.
func (r *Redirect) Active(ctx context.Context) (int, error) {
	out, err := r.runner().RunPrivileged(ctx, "nft", "list", "table", "ip", r.Table)
	if err != nil {
		if strings.Contains(err.Error(), "No such file or directory") {
			return 0, nil
		}
		return 0, fmt.Errorf("dns redirect: listing table ip %s: %w", r.Table, err)
	}
	port := 0
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.Contains(line, `comment "`+redirectComment+`"`) || !strings.Contains(line, "daddr "+r.Gateway.String()+" ") {
			continue
		}
		if m := dnatRE.FindStringSubmatch(line); m != nil && m[1] == r.Gateway.String() {
			p, _ := strconv.Atoi(m[2])
			if port != 0 && p != port {
				return 0, fmt.Errorf("dns redirect: table ip %s sends port 53 to both %d and %d: restart bangerd", r.Table, port, p)
			}
			port = p
		}
	}
	return port, nil
}
