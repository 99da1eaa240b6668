package cli

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/portfwd"
	"github.com/banger/banger/internal/rpc"
)

const publishHelp = `A published port is [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]: bangerd listens
on HOSTIP:HOSTPORT and relays each connection (or UDP datagram) to GUESTPORT
on the VM's address. HOSTIP is 127.0.0.1 unless you give one, so only this
host reaches the port; give 0.0.0.0 (or a host address) to let other hosts in.
An IPv6 host address goes in brackets: [::1]:8080:80. The protocol is tcp
unless /udp follows.`

func (a *app) newVMPortCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "port",
		Aliases: []string{"ports"},
		Short:   "Publish a VM's ports on the host",
		Long: `Publish a VM's ports on the host: list, add and remove them.

` + publishHelp + `

Published ports are kept with the VM: bangerd listens on them while the VM
runs (also after bangerd restarts) and stops at vm stop and vm delete. A host
port that something else uses is refused, and nothing changes.`,
		Example: `  banger vm port add testbox 8080:80 5353:53/udp
  banger vm port list testbox
  banger vm port rm testbox 8080`,
		Args: subcommandArgs,
		RunE: showHelp,
	}
	cmd.AddCommand(a.newVMPortAddCmd(), a.newVMPortRmCmd(), a.newVMPortListCmd())
	return cmd
}

func (a *app) newVMPortAddCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "add NAME SPEC...",
		Short: "Publish more of a VM's ports on the host",
		Long: `Publish more of a VM's ports on the host. A running VM's ports answer at
once; a stopped VM's from its next start.

` + publishHelp,
		Example: `  # Host loopback 8080 to the guest's web server on 80
  banger vm port add testbox 8080:80

  # opencode on the host's 4096, and a UDP service, reachable from other hosts
  banger vm port add testbox 4096:4096 0.0.0.0:5353:53/udp`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usagef(cmd, "vm port add needs a VM name and at least one port, for example: banger vm port add testbox 8080:80")
			}
			return nil
		},
		ValidArgsFunction: a.completeVMs(1, nil),
		RunE: func(cmd *cobra.Command, args []string) error {
			ports, err := parsePublish(args[1:])
			if err != nil {
				return usagef(cmd, "%s", err)
			}
			ctx := cmd.Context()
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			vm, err := c.AddPorts(ctx, args[0], ports)
			if err != nil {
				return fmt.Errorf("publishing ports of vm %s: %w", args[0], err)
			}
			if asJSON {
				return printJSON(a.stdout, vm.Ports)
			}
			for _, p := range ports {
				when := "answering now"
				if !listening(vm, p) {
					when = "from its next start"
				}
				fmt.Fprintf(a.stdout, "%s: published %s (%s)\n", vm.Name, portLine(p), when)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM's ports as JSON")
	return cmd
}

func (a *app) newVMPortRmCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "rm NAME PORT...",
		Aliases: []string{"remove"},
		Short:   "Stop publishing some of a VM's ports",
		Long: `Stop publishing some of a VM's ports: bangerd stops listening on them and
ends their connections. PORT is [HOSTIP:]HOSTPORT[/tcp|/udp] (a whole
publish spec works too): without HOSTIP it names that host port on every
address the VM publishes it on. A PORT the VM does not publish is an error,
and then nothing is removed.`,
		Example: `  banger vm port rm testbox 8080
  banger vm port rm testbox 0.0.0.0:5353/udp`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usagef(cmd, "vm port rm needs a VM name and at least one port, for example: banger vm port rm testbox 8080")
			}
			return nil
		},
		ValidArgsFunction: a.completePorts,
		RunE: func(cmd *cobra.Command, args []string) error {
			var refs []rpc.PortRef
			for _, s := range args[1:] {
				sel, err := portfwd.ParseSelector(s)
				if err != nil {
					return usagef(cmd, "%s", err)
				}
				ref := rpc.PortRef{Proto: sel.Proto, HostPort: int(sel.HostPort)}
				if sel.HostIP.IsValid() {
					ref.HostIP = sel.HostIP.String()
				}
				refs = append(refs, ref)
			}
			ctx := cmd.Context()
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			before, err := c.GetVM(ctx, args[0])
			if err != nil {
				return fmt.Errorf("removing ports of vm %s: %w", args[0], err)
			}
			vm, err := c.RemovePorts(ctx, args[0], refs)
			if err != nil {
				return fmt.Errorf("removing ports of vm %s: %w", args[0], err)
			}
			if asJSON {
				return printJSON(a.stdout, vm.Ports)
			}
			for _, p := range before.Ports {
				if !hasPort(vm.Ports, p) {
					fmt.Fprintf(a.stdout, "%s: removed %s\n", vm.Name, portLine(p))
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM's remaining ports as JSON")
	return cmd
}

func (a *app) newVMPortListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list NAME",
		Aliases: []string{"ls"},
		Short:   "List the ports a VM publishes",
		Long: `List the ports a VM publishes on the host, and whether bangerd listens on
them now (it does while the VM runs).`,
		Example: `  banger vm port list testbox
  banger vm port ls testbox --json | jq -r '.[] | "\(.host_ip):\(.host_port)"'`,
		Args:              oneNameArg,
		ValidArgsFunction: a.completeVMs(1, nil),
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, args []string) error {
			vm, err := c.GetVM(ctx, args[0])
			if err != nil {
				return fmt.Errorf("listing ports of vm %s: %w", args[0], err)
			}
			if asJSON {
				if vm.Ports == nil {
					vm.Ports = []rpc.Port{}
				}
				return printJSON(a.stdout, vm.Ports)
			}
			if len(vm.Ports) == 0 {
				fmt.Fprintf(a.stderr, "%s publishes no ports. Add one with: banger vm port add %s HOSTPORT:GUESTPORT\n", vm.Name, vm.Name)
				return nil
			}
			tw := newTable(a.stdout)
			fmt.Fprintln(tw, "HOST\tGUEST\tPROTO\tSTATE")
			for _, p := range vm.Ports {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", hostAddr(p), p.GuestPort, p.Proto, portState(p))
			}
			return tw.Flush()
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the ports as JSON")
	return cmd
}

// parsePublish reads publish specs into the API's ports, refusing specs
// that collide with each other.
func parsePublish(in []string) ([]rpc.Port, error) {
	var specs []portfwd.Spec
	for _, s := range in {
		sp, err := portfwd.ParseSpec(s)
		if err != nil {
			return nil, err
		}
		specs = append(specs, sp)
	}
	if err := portfwd.Check(specs); err != nil {
		return nil, err
	}
	out := make([]rpc.Port, 0, len(specs))
	for _, s := range specs {
		out = append(out, rpc.Port{Proto: s.Proto, HostIP: s.HostIP.String(), HostPort: int(s.HostPort), GuestPort: int(s.GuestPort)})
	}
	return out, nil
}

// hostAddr is a port's HOSTIP:HOSTPORT, IPv6 in brackets.
func hostAddr(p rpc.Port) string {
	if ip, err := netip.ParseAddr(p.HostIP); err == nil {
		return netip.AddrPortFrom(ip, uint16(p.HostPort)).String()
	}
	return p.HostIP + ":" + strconv.Itoa(p.HostPort)
}

// portLine reads "127.0.0.1:8080 -> 80/tcp".
func portLine(p rpc.Port) string {
	return fmt.Sprintf("%s -> %d/%s", hostAddr(p), p.GuestPort, p.Proto)
}

func portState(p rpc.Port) string {
	if p.Listening {
		return "listening"
	}
	return "not listening"
}

func samePort(a, b rpc.Port) bool {
	return a.Proto == b.Proto && a.HostIP == b.HostIP && a.HostPort == b.HostPort && a.GuestPort == b.GuestPort
}

func hasPort(ps []rpc.Port, p rpc.Port) bool {
	for _, q := range ps {
		if samePort(p, q) {
			return true
		}
	}
	return false
}

// listening reports whether vm's view has p listening.
func listening(vm *rpc.VM, p rpc.Port) bool {
	for _, q := range vm.Ports {
		if samePort(p, q) {
			return q.Listening
		}
	}
	return false
}

// completePorts completes a VM name, then the ports it publishes.
func (a *app) completePorts(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) == 0 {
		return a.completeVMs(1, nil)(cmd, args, toComplete)
	}
	return a.completeFrom(cmd, func(ctx context.Context, c *rpc.Client) ([]cobra.Completion, error) {
		vm, err := c.GetVM(ctx, args[0])
		if err != nil {
			return nil, err
		}
		var out []cobra.Completion
		for _, p := range vm.Ports {
			ref := hostAddr(p) + "/" + p.Proto
			if strings.HasPrefix(ref, toComplete) {
				out = append(out, cobra.CompletionWithDesc(ref, "-> "+strconv.Itoa(p.GuestPort)))
			}
		}
		return out, nil
	})
}
