package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/banger/banger/internal/egress"
	"github.com/banger/banger/internal/rpc"
)

// egressFlags are the egress policy flags of vm create and vm set.
type egressFlags struct {
	allow, deny, file string
	open, reset       bool // vm set only
}

func (e *egressFlags) add(f *pflag.FlagSet, set bool) {
	f.StringVar(&e.allow, "egress-allow", "", "reach only these: comma-separated domains (github.com, *.npmjs.org), IPv4 networks, each with an optional :port[/tcp|/udp]; turns NAT on")
	f.StringVar(&e.deny, "egress-deny", "", "reach everything public except these (same form as --egress-allow); turns NAT on")
	f.StringVar(&e.file, "egress-policy", "", "read the egress policy from a TOML file (mode, allow, deny) that a project can commit; turns NAT on")
	if set {
		f.BoolVar(&e.open, "egress-open", false, "filter nothing: the VM reaches whatever the host reaches, private ranges and the host included")
		f.BoolVar(&e.reset, "egress-default", false, "back to the default policy: the public internet, not the host or private ranges")
	}
}

// policy is the policy the flags ask for, nil when they ask for none.
func (e *egressFlags) policy(cmd *cobra.Command) (*rpc.Egress, error) {
	f := cmd.Flags()
	allowSet, denySet := f.Changed("egress-allow"), f.Changed("egress-deny")
	given := 0
	for _, b := range []bool{allowSet || denySet, e.file != "", e.open, e.reset} {
		if b {
			given++
		}
	}
	if given > 1 {
		return nil, usagef(cmd, "give one of --egress-allow/--egress-deny, --egress-policy, --egress-open and --egress-default")
	}
	var p egress.Policy
	switch {
	case given == 0:
		return nil, nil
	case e.file != "":
		var err error
		if p, err = egress.LoadFile(e.file); err != nil {
			return nil, err
		}
	case e.open:
		p = egress.Open()
	case e.reset:
		p = egress.Policy{Mode: egress.ModeDefault}
	default:
		var err error
		if p, err = egress.FromFlags(e.allow, allowSet, e.deny, denySet); err != nil {
			return nil, usagef(cmd, "%v", err)
		}
	}
	return wirePolicy(p), nil
}

// wirePolicy is p as the API takes it.
func wirePolicy(p egress.Policy) *rpc.Egress {
	w := &rpc.Egress{Mode: string(p.Effective())}
	for _, e := range p.Allow {
		w.Allow = append(w.Allow, e.String())
	}
	for _, e := range p.Deny {
		w.Deny = append(w.Deny, e.String())
	}
	return w
}

// printEgressStats writes what a VM's policy refused, as vm show prints it.
func printEgressStats(w io.Writer, st *rpc.EgressStats) {
	reasons := make([]string, 0, len(st.Refused))
	for r := range st.Refused {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	var parts []string
	for _, r := range reasons {
		if c := st.Refused[r]; c.Packets > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", r, c.Packets))
		}
	}
	refused := "nothing"
	if len(parts) > 0 {
		refused = strings.Join(parts, ", ") + " packets"
	}
	fmt.Fprintf(w, "egress refused:\t%s; %d names; %d addresses learned\n", refused, st.NamesRefused, st.Learned)
	for _, d := range st.Recent {
		what := d.Name
		if what == "" {
			what = d.Addr
		}
		fmt.Fprintf(w, "  %s\t%s (%s)\n", d.Time.Local().Format("15:04:05"), what, d.Reason)
	}
}
