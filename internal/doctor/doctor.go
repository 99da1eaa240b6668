// Package doctor checks the host for everything banger needs and says how to fix what is missing.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/dns"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/isolation"
	"github.com/banger/banger/internal/nat"
	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/virtiofs"
)

// Status is the outcome of one check.
type Status string

// Statuses.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Check is one line of the report.
type Check struct {
	Area   string `json:"area"`
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
	// Required marks what 'banger vm create' cannot do without.
	Required bool `json:"required"`
}

// Report is the whole doctor run.
type Report struct {
	Checks []Check `json:"checks"`
	// OK is false when a required check failed.
	OK bool `json:"ok"`
}

// Inputs are what the checks look at.
type Inputs struct {
	Config      config.Config
	Firecracker hypervisor.Backend
	QEMU        hypervisor.Backend
	R           runner.Runner
	// Env and WorkDir feed runtime bundle discovery.
	Env     func(string) string
	WorkDir string
	// UID is whose bangerd is checked; nil means this process's user.
	UID *int
	// Sudo checks sudo as bangerd sees it (no terminal); nil means
	// runner.Exec{Detached: true}.
	Sudo runner.Runner
}

func (in Inputs) names() network.Names { return in.Config.Names(*in.UID) }

func (in Inputs) sudo() runner.Runner {
	if in.Sudo == nil {
		return runner.Exec{Detached: true}
	}
	return in.Sudo
}

// Run performs every check.
func Run(ctx context.Context, in Inputs) Report {
	if in.R == nil {
		in.R = runner.Default
	}
	if in.Env == nil {
		in.Env = os.Getenv
	}
	if in.UID == nil {
		uid := os.Geteuid()
		in.UID = &uid
	}
	var r Report
	add := func(c Check) { r.Checks = append(r.Checks, c) }

	add(checkBundle(in))
	selected := checkHypervisors(ctx, in, add)
	checkTools(selected, add)
	add(checkPrivileges(ctx, in))
	add(checkTUN())
	checkNetwork(ctx, in, add)
	checkDNS(ctx, in, add)
	checkImageBuild(ctx, in, add)
	add(checkMounts())

	r.OK = true
	for _, c := range r.Checks {
		if c.Required && c.Status == Fail {
			r.OK = false
		}
	}
	return r
}

func checkBundle(in Inputs) Check {
	c := Check{Area: "runtime", Name: "runtime bundle", Required: true}
	dir, warnings, err := bundle.Discover(bundle.DiscoverOptions{Explicit: in.Config.RuntimeDir, Env: in.Env, WorkDir: in.WorkDir})
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, err.Error(), "run 'make runtime-bundle' in the banger checkout, or set BANGER_RUNTIME"
		return c
	}
	b, err := bundle.Load(dir)
	if err == nil {
		err = b.Check()
	}
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, err.Error(), "rebuild it with 'make runtime-bundle'"
		return c
	}
	c.Status = OK
	c.Detail = fmt.Sprintf("%s (kernel %s; images %s)", dir, b.KernelVersion, strings.Join(b.ImageNames(), ", "))
	if len(warnings) > 0 {
		c.Status = Warn
		c.Detail += "; " + strings.Join(warnings, "; ")
	}
	return c
}

// checkHypervisors reports each backend and KVM, and returns the name of
// the one 'vm create' would use ("" when none).
func checkHypervisors(ctx context.Context, in Inputs, add func(Check)) string {
	version := func(bin string, args ...string) string {
		out, err := in.R.Run(ctx, bin, args...)
		if err != nil {
			return ""
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	fc := Check{Area: "hypervisor", Name: "firecracker"}
	if err := in.Firecracker.Available(); err != nil {
		fc.Status, fc.Detail = Warn, err.Error()
		fc.Fix = "optional: install firecracker on a host with hardware KVM; banger uses qemu otherwise"
	} else {
		fc.Status, fc.Detail = OK, version(firecrackerBinary(in.Config), "--version")
	}
	add(fc)

	q := Check{Area: "hypervisor", Name: "qemu"}
	if err := in.QEMU.Available(); err != nil {
		q.Status, q.Detail, q.Fix = Warn, err.Error(), "apt-get install qemu-system-x86"
	} else {
		bin := in.Config.QEMUBinary
		if bin == "" {
			bin = "qemu-system-x86_64"
		}
		q.Status, q.Detail = OK, version(bin, "--version")
	}
	add(q)

	k := Check{Area: "hypervisor", Name: "kvm"}
	if err := hypervisor.KVMUsable(); err != nil {
		k.Status, k.Detail = Warn, err.Error()
		k.Fix = "guests run under QEMU's TCG software emulation (slower); enable VT-x/AMD-V or nested virtualization for KVM"
	} else {
		k.Status, k.Detail = OK, "hardware KVM works"
	}
	add(k)

	sel := Check{Area: "hypervisor", Name: "selected", Required: true}
	b, err := hypervisor.Select(in.Config.Hypervisor, in.Firecracker, in.QEMU)
	if err != nil {
		sel.Status, sel.Detail, sel.Fix = Fail, err.Error(), "apt-get install qemu-system-x86"
		add(sel)
		return ""
	}
	sel.Status = OK
	sel.Detail = fmt.Sprintf("%s (config: hypervisor = %s)", b.Name(), in.Config.Hypervisor)
	add(sel)
	return b.Name()
}

func firecrackerBinary(c config.Config) string {
	if c.FirecrackerBinary != "" {
		return c.FirecrackerBinary
	}
	return "firecracker"
}

func checkTools(selected string, add func(Check)) {
	for _, t := range Tools {
		c := Check{Area: "tools", Name: t.Bin}
		for _, f := range t.For {
			if f == OpCreate || (f == OpQEMU && selected != "firecracker") {
				c.Required = true
			}
		}
		path, err := LookPath(t.Bin)
		if err == nil {
			c.Status, c.Detail = OK, path
		} else {
			c.Status = Warn
			if c.Required {
				c.Status = Fail
			}
			c.Detail = fmt.Sprintf("not found; needed for %s", strings.Join(t.For, ", "))
			c.Fix = "apt-get install " + t.Package
		}
		add(c)
	}
}

func checkTUN() Check {
	c := Check{Area: "privileges", Name: "tun device", Required: true}
	if err := RequireTUN(); err != nil {
		c.Status, c.Detail, c.Fix = Fail, err.Error(), "sudo chmod 0666 "+TUNDevice
		return c
	}
	c.Status, c.Detail = OK, TUNDevice+" opens for this user"
	return c
}

// VMOps are the operations bangerd runs for VMs, whose privileged tools
// must run through sudo without a prompt.
var VMOps = []string{OpCreate, OpNAT, OpIsolation, OpDNSRedirect}

func checkPrivileges(ctx context.Context, in Inputs) Check {
	c := Check{Area: "privileges", Name: "sudo", Required: true}
	if *in.UID == 0 {
		c.Status, c.Detail = OK, "running as root"
		return c
	}
	sudo := in.sudo()
	probes := Probes(VMOps...)
	var have []string
	for _, p := range probes {
		have = append(have, p[0])
	}
	if err := runner.CheckPrivileged(ctx, sudo, probes...); err != nil {
		c.Status, c.Detail = Fail, "bangerd (no terminal) cannot run "+strings.Join(have, ", ")+" through sudo: "+err.Error()
		c.Fix = "allow them without a password: banger sudoers | sudo tee /etc/sudoers.d/zz-banger-$USER >/dev/null && sudo chmod 0440 /etc/sudoers.d/zz-banger-$USER"
		return c
	}
	c.Status, c.Detail = OK, "sudo -n runs "+strings.Join(have, ", ")+" for bangerd without a password"
	return c
}

func checkNetwork(ctx context.Context, in Inputs, add func(Check)) {
	names := in.names()
	br := Check{Area: "network", Name: "bridge " + names.Bridge}
	out, err := in.R.Run(ctx, "ip", "-j", "addr", "show", "dev", names.Bridge)
	var links []struct {
		OperState string `json:"operstate"`
		AddrInfo  []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err != nil || json.Unmarshal(out, &links) != nil || len(links) == 0 {
		br.Status, br.Detail = Warn, "not created yet"
		br.Fix = "bangerd creates it when it starts (subnet " + names.Subnet.String() + ")"
	} else {
		var addrs []string
		for _, a := range links[0].AddrInfo {
			addrs = append(addrs, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
		}
		br.Status, br.Detail = OK, fmt.Sprintf("%s, %s", strings.ToLower(links[0].OperState), strings.Join(addrs, " "))
	}
	add(br)

	n := Check{Area: "network", Name: "nat (nftables)"}
	if err := nat.Check(ctx, in.R); err != nil {
		n.Status, n.Detail, n.Fix = Warn, err.Error(), "needed only for 'vm create --nat': apt-get install nftables"
	} else if out, err := in.R.RunPrivileged(ctx, "nft", "list", "table", "ip", names.Table); err == nil {
		n.Status, n.Detail = OK, fmt.Sprintf("table ip %s present (%d NAT guests)", names.Table, strings.Count(string(out), "masquerade"))
	} else {
		n.Status, n.Detail = OK, "nft works; banger's table is created when bangerd starts"
	}
	add(n)

	add(checkIsolation(ctx, in))

	f := Check{Area: "network", Name: "ip_forward"}
	if on, err := nat.ForwardingEnabled(); err != nil {
		f.Status, f.Detail = Warn, err.Error()
	} else if on {
		f.Status, f.Detail = OK, "net.ipv4.ip_forward = 1"
	} else {
		f.Status, f.Detail = OK, "net.ipv4.ip_forward = 0 (banger turns it on when the first NAT guest starts)"
	}
	add(f)
}

// checkIsolation reports whether other guests are kept off the guests'
// private ports (guest_private_ports), reading banger's bridge table back.
func checkIsolation(ctx context.Context, in Inputs) Check {
	c := Check{Area: "network", Name: "guest isolation"}
	want := in.Config.GuestPrivatePorts
	if len(want) == 0 {
		c.Status, c.Detail = OK, "off (guest_private_ports = []): guests reach each other on every port"
		return c
	}
	if err := nat.Check(ctx, in.R); err != nil {
		c.Status, c.Detail, c.Fix = Warn, fmt.Sprintf("guests can reach each other's ports %v: %v", want, err), "apt-get install nftables, then restart bangerd"
		return c
	}
	m := isolation.Manager{R: in.R, Table: in.names().Table}
	got, err := m.Active(ctx)
	switch {
	case err != nil:
		c.Status, c.Detail = Warn, err.Error()
	case len(got) == 0:
		c.Status, c.Detail, c.Fix = Warn, fmt.Sprintf("tables bridge and inet %s are absent: guests can reach each other's ports %v", m.Table, want), "bangerd creates them when it starts and before each boot"
	case !slices.Equal(got, want):
		c.Status, c.Detail, c.Fix = Warn, fmt.Sprintf("ports %v are closed between guests, but guest_private_ports is %v", got, want), "restart bangerd to apply the config"
	default:
		c.Status, c.Detail = OK, fmt.Sprintf("ports %v reachable from the host only, not from other guests", got)
	}
	return c
}

func checkDNS(ctx context.Context, in Inputs, add func(Check)) {
	names := in.names()
	gw := names.Gateway().String()
	ask := func(addr string) (string, error) {
		m := new(mdns.Msg)
		m.SetQuestion("ns.vm.", mdns.TypeSOA)
		resp, _, err := (&mdns.Client{Timeout: time.Second}).ExchangeContext(ctx, m, addr)
		if err != nil {
			return "", err
		}
		return mdns.RcodeToString[resp.Rcode], nil
	}
	// What guests and the host's resolver ask: the bridge address, port 53.
	c := Check{Area: "dns", Name: "vm. zone"}
	bridgeAddr := net.JoinHostPort(gw, "53")
	port := in.Config.BridgeDNSPort(*in.UID)
	via := ""
	if port != 53 {
		r := dns.Redirect{R: in.R, Table: names.Table + "_dns", Gateway: names.Gateway()}
		if p, err := r.Active(ctx); err == nil && p != 0 {
			via = fmt.Sprintf(", redirected by table ip %s to port %d", r.Table, p)
		} else {
			via = fmt.Sprintf(" (no redirect to port %d in table ip %s yet)", port, r.Table)
		}
	}
	switch rc, err := ask(bridgeAddr); {
	case !in.Config.DNSOnBridge:
		c.Status, c.Detail = Warn, "off on the bridge (dns_on_bridge = false): guests get the host's resolvers and cannot resolve each other"
	case err != nil:
		c.Status, c.Detail = Warn, fmt.Sprintf("no answer from %s%s: %v", bridgeAddr, via, err)
		c.Fix = "bangerd serves it while it runs: 'banger daemon start' (its log says why if it cannot)"
	default:
		c.Status, c.Detail = OK, fmt.Sprintf("bangerd answers on %s%s (%s)", bridgeAddr, via, rc)
	}
	add(c)
	for _, addr := range in.Config.DNSListen {
		e := Check{Area: "dns", Name: "dns_listen " + addr}
		if rc, err := ask(addr); err != nil {
			e.Status, e.Detail = Warn, fmt.Sprintf("no answer: %v", err)
			if p, perr := netip.ParseAddrPort(addr); perr == nil && p.Port() < 1024 && *in.UID != 0 {
				e.Fix = "ports below 1024 need root: drop it from dns_listen; the host resolves .vm names at " + bridgeAddr
			}
		} else {
			e.Status, e.Detail = OK, "bangerd answers ("+rc+")"
		}
		add(e)
	}

	s := Check{Area: "dns", Name: "host resolver"}
	switch {
	case !dns.ResolvedActive():
		s.Status, s.Detail = OK, "systemd-resolved is not running; query bangerd directly (dig @"+gw+" testbox.vm) or add it to your resolver for the vm domain"
	default:
		out, err := in.R.Run(ctx, "resolvectl", "domain", names.Bridge)
		if err == nil && strings.Contains(string(out), "~vm") {
			s.Status, s.Detail = OK, "systemd-resolved sends ~vm to bangerd on "+names.Bridge
		} else {
			var fix []string
			for _, argv := range dns.SplitDNSCommands(names.Bridge, gw) {
				fix = append(fix, strings.Join(argv, " "))
			}
			s.Status, s.Detail = Warn, "systemd-resolved runs but does not route ~vm to bangerd"
			s.Fix = "bangerd does this at start when resolved_split_dns = true; by hand: " + strings.Join(fix, "; ")
		}
	}
	add(s)
}

func checkImageBuild(ctx context.Context, in Inputs, add func(Check)) {
	c := Check{Area: "images", Name: "image build"}
	missing := MissingTools(OpRuntimeBuild)
	switch {
	case len(missing) > 0:
		c.Status = Warn
		c.Detail = "cannot build images: " + RequireTools(OpRuntimeBuild).Error()
		c.Fix = "apt-get install " + strings.Join(Packages(missing), " ")
	case *in.UID == 0:
		c.Status, c.Detail = OK, "debootstrap, mkfs.ext4 and apt are present"
	default:
		if err := runner.CheckPrivileged(ctx, in.sudo(), Probes(OpRuntimeBuild)...); err != nil {
			c.Status, c.Detail = Warn, "images are built with debootstrap and chroot through sudo, which bangerd cannot run without a password: "+err.Error()
			c.Fix = "'make runtime-bundle' asks sudo in your terminal; for 'banger image build' allow them: banger sudoers --image-build"
		} else {
			c.Status, c.Detail = OK, "tools present; sudo -n runs the image-build steps"
		}
	}
	add(c)
}

// checkMounts says whether this host can serve host folders (vm create
// --mount): virtiofsd, and for an ordinary user newgidmap and a
// subordinate gid range.
func checkMounts() Check {
	c := Check{Area: "vm", Name: "host folders"}
	err := (&virtiofs.Server{}).Check()
	if err == nil {
		c.Status, c.Detail = OK, "virtiofsd can serve host folders to QEMU guests (vm create --mount)"
		return c
	}
	c.Status, c.Detail = Warn, "vm create --mount is unavailable: "+err.Error()
	// The error ends with the command that fixes it.
	if _, cmd, ok := strings.Cut(err.Error(), ": run '"); ok {
		c.Fix, _, _ = strings.Cut(cmd, "'")
	}
	return c
}
