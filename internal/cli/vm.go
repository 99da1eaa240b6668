package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/egress"
	"github.com/banger/banger/internal/logfile"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/units"
)

func (a *app) newVMCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "vm",
		Aliases: []string{"vms"},
		Short:   "Create, use and delete VMs",
		Long:    "Create, use and delete VMs. Commands taking NAME accept a VM's name or its id, and complete VM names in your shell.",
		Example: `  banger vm create testbox --memory 2G
  banger vm ssh testbox
  banger vm list
  banger vm delete --force testbox`,
		Args: subcommandArgs,
		RunE: showHelp,
	}
	cmd.AddCommand(
		a.newVMCreateCmd(), a.newVMListCmd(), a.newVMShowCmd(),
		a.newVMStartCmd(), a.newVMStopCmd(), a.newVMSuspendCmd(), a.newVMResumeCmd(), a.newVMForkCmd(),
		a.newVMDeleteCmd(), a.newVMSetCmd(),
		a.newVMSSHCmd(), a.newVMCpCmd(), a.newVMLogsCmd(), a.newVMPortCmd(),
	)
	return cmd
}

func (a *app) newVMCreateCmd() *cobra.Command {
	var (
		req     rpc.CreateRequest
		asJSON  bool
		eg      egressFlags
		publish []string
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a VM and wait until it is ready for ssh",
		Long: `Create a VM and boot it, showing each stage as it runs, then wait until
the guest answers ssh. Without flags the VM gets the default image and the
daemon's default CPU and memory sizes.

Each VM has two disks: its root disk, a copy-on-write clone of the image
(the image's size unless --disk-size grows it; docker keeps its images and
containers there, in /var/lib/docker), and its own /root, 16G unless
--work-size (or bangerd's work_size) says otherwise. Both are sparse files:
they take host space only as the guest writes.

--publish makes a guest port answer on the host (repeat it for more):
` + publishHelp + `

The name may be given as an argument or with --name. If you press Ctrl-C
while waiting, the VM keeps booting in the background.

--mount HOSTDIR:GUESTDIR shares a host folder with the guest, mounted at
GUESTDIR at every boot (repeat it for more, up to 8; add :ro for read-only,
which both the guest and the host enforce). Files are live on both sides:
no copy is made. The guest's root acts on the folder as you (bangerd's
user; for a root bangerd, the folder's owner), so it reads and writes what
you may, and files it makes are yours; other guest users cannot create files.
GUESTDIR is an absolute path such as /root/src or /srv/data, not a system
folder (/, /root, /etc, /usr, /proc...). HOSTDIR must exist; it may not be
/ or hold banger's own files (so not your whole home). Host folders need
QEMU (virtiofsd): with hypervisor = auto such VMs boot on QEMU.

Warm creates: once an image has a snapshot of its VM taken when it was ready
(bangerd takes one in the background after the first create of an image, or
on demand with 'banger image warm'), a create with the default vCPUs, memory,
disk size and work size restores that snapshot instead of booting, and the guest agent
gives the new VM its own address, MAC, name, machine-id, SSH host keys and
opencode password. A snapshot that does not fit (other sizes, a changed
kernel, image or hypervisor) is never restored: the create boots cold and
says why. --cold boots cold anyway, and so does a VM with host folders.`,
		Example: `  # A VM with the default image
  banger vm create testbox

  # Bigger, with internet access through NAT, printed as JSON
  banger vm create --name build1 --vcpus 4 --memory 4G --disk-size 20G --work-size 64G --nat --json

  # Its web app on the host's loopback port 3000, and opencode on 4096
  banger vm create web --publish 3000:3000 --publish 4096:4096

  # The minimal image, without waiting for the guest
  banger vm create tiny --image minimal --memory 512M --no-wait

  # For a coding agent: only GitHub and npm are reachable
  banger vm create agent1 --egress-allow 'github.com,*.github.com,registry.npmjs.org'

  # Work on a checkout from the host, with reference docs read-only
  banger vm create dev --mount ./myproject:/root/myproject --mount ~/docs:/srv/docs:ro

  # A cold boot even where a snapshot of the image fits
  banger vm create fresh --cold`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef(cmd, "vm create takes one NAME, got %d: %s", len(args), strings.Join(args, " "))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if req.Name != "" && req.Name != args[0] {
					return usagef(cmd, "vm create got two names, %q and --name %q: give one", args[0], req.Name)
				}
				req.Name = args[0]
			}
			if req.Name == "" {
				return usagef(cmd, "vm create needs a name, for example: banger vm create testbox")
			}
			if req.VCPUs < 0 {
				return usagef(cmd, "--vcpus must be positive, got %d", req.VCPUs)
			}
			if cmd.Flags().Changed("vcpus") && req.VCPUs == 0 {
				return usagef(cmd, "--vcpus 0 is no VM: give 1 or more, or leave it out for bangerd's default")
			}
			if req.WorkSize != "" {
				if n, err := units.ParseSize(req.WorkSize); err != nil || n <= 0 {
					return usagef(cmd, "invalid --work-size %q: want a size such as 32G", req.WorkSize)
				}
			}
			ports, err := parsePublish(publish)
			if err != nil {
				return usagef(cmd, "--publish: %s", err)
			}
			req.Ports = ports
			p, err := eg.policy(cmd)
			if err != nil {
				return err
			}
			req.Egress = p
			ctx := cmd.Context()
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			defer a.refreshSSHConfig(ctx, c)
			return a.streamVM(ctx, req.Name, "creating", asJSON, req.NoWait, func(ctx context.Context, fn func(rpc.Event)) (*rpc.VM, error) {
				return c.CreateVM(ctx, req, fn)
			})
		},
	}
	f := cmd.Flags()
	f.SortFlags = false
	f.StringVar(&req.Name, "name", "", "the VM's name (or give it as the argument)")
	f.StringVar(&req.Image, "image", "", "image to boot (see: banger image list); default: the default image")
	f.IntVar(&req.VCPUs, "vcpus", 0, "number of virtual CPUs (default from bangerd's config)")
	f.Var(mibValue{&req.MemoryMiB}, "memory", "memory: MiB or with a unit: 1024, 512M, 2G (default from bangerd's config)")
	f.StringVar(&req.DiskSize, "disk-size", "", "grow the root disk to this size, for example 8G")
	f.StringVar(&req.WorkSize, "work-size", "", "size of the VM's /root disk, for example 64G (default from bangerd's work_size: 16G)")
	f.StringArrayVarP(&publish, "publish", "p", nil, "publish a guest port on the host: [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp] (repeatable)")
	f.BoolVar(&req.NAT, "nat", false, "give the VM internet access through NAT (the public internet; not the host or private ranges unless an egress flag opens them)")
	eg.add(f, false)
	f.Var(mountValue{&req.Mounts}, "mount", "share a host folder at a guest folder, :ro for read-only (repeatable), for example ./src:/root/src")
	f.BoolVar(&req.NoWait, "no-wait", false, "return once the VM boots, without waiting for ssh")
	f.BoolVar(&req.Cold, "cold", false, "boot the kernel even when a snapshot of the image fits (see below)")
	f.BoolVar(&asJSON, "json", false, "print the VM as JSON on stdout")
	cmd.RegisterFlagCompletionFunc("image", a.completeImages)
	cmd.RegisterFlagCompletionFunc("memory", cobra.FixedCompletions([]string{"512M", "1G", "2G", "4G", "8G"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RegisterFlagCompletionFunc("disk-size", cobra.FixedCompletions([]string{"8G", "16G", "32G", "64G"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RegisterFlagCompletionFunc("work-size", cobra.FixedCompletions([]string{"16G", "32G", "64G", "128G"}, cobra.ShellCompDirectiveNoFileComp))
	cmd.RegisterFlagCompletionFunc("publish", cobra.NoFileCompletions)
	return cmd
}

// streamVM runs a streamed create or start of one VM with live progress on
// stderr, and reports the VM when it is ready.
func (a *app) streamVM(ctx context.Context, name, doing string, asJSON, noWait bool, call func(context.Context, func(rpc.Event)) (*rpc.VM, error)) error {
	start := time.Now()
	p := newProgress(a.stderr, isTerminal(a.stderr))
	vm, err := call(ctx, p.Event)
	switch {
	case err != nil && ctx.Err() != nil:
		p.Close(interrupted)
		fmt.Fprintf(a.stderr, "\ninterrupted: %s keeps booting in the background (bangerd owns it).\n  check it:  banger vm show %s\n  delete it: banger vm delete --force %s\n", name, name, name)
		return &exitError{code: exitInterrupted}
	case err != nil:
		p.Close(failed)
		if vm != nil {
			return fmt.Errorf("%s vm %s: %w\nits console log may say why: banger vm logs %s", doing, name, err, name)
		}
		return fmt.Errorf("%s vm %s: %w", doing, name, err)
	}
	p.Close(succeeded)
	if vm == nil {
		vm = &rpc.VM{Name: name}
	}
	out := a.stdout
	if asJSON {
		if err := printJSON(a.stdout, vm); err != nil {
			return err
		}
		out = a.stderr
	}
	ip := ""
	if vm.IP != "" {
		ip = " (ip " + vm.IP + ")"
	}
	if noWait {
		fmt.Fprintf(out, "%s is booting%s\ncheck: banger vm show %s\n", vm.Name, ip, vm.Name)
		return nil
	}
	fmt.Fprintf(out, "%s is ready%s in %s\nssh: banger vm ssh %s\n", vm.Name, ip, units.Duration(time.Since(start)), vm.Name)
	return nil
}

func (a *app) newVMListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Example: `  banger vm list
  banger vm ls --json | jq -r '.[] | select(.state == "running") | .name'`,
		Args: noArgs,
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, _ []string) error {
			vms, err := c.ListVMs(ctx)
			if err != nil {
				return fmt.Errorf("listing vms: %w", err)
			}
			if vms == nil {
				vms = []rpc.VM{}
			}
			slices.SortFunc(vms, func(x, y rpc.VM) int { return strings.Compare(x.Name, y.Name) })
			if asJSON {
				return printJSON(a.stdout, vms)
			}
			if len(vms) == 0 {
				fmt.Fprintln(a.stderr, "No VMs yet. Create one with: banger vm create NAME")
				return nil
			}
			tw := newTable(a.stdout)
			fmt.Fprintln(tw, "NAME\tSTATE\tIMAGE\tIP\tVCPUS\tMEMORY\tNAT\tAGE")
			for _, vm := range vms {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n",
					vm.Name, orDash(vm.State), orDash(vm.Image), orDash(vm.IP), vm.VCPUs, units.MiB(vm.MemoryMiB), onOff(vm.NAT), units.Age(vm.CreatedAt))
			}
			return tw.Flush()
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VMs as a JSON array")
	return cmd
}

func (a *app) newVMShowCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "show NAME",
		Aliases: []string{"inspect"},
		Short:   "Show a VM's details",
		Long: "Show a VM's details: resources, network, files, how long each stage of its last boot took,\n" +
			"and, for images that run it, the address and password of its opencode server.",
		Example: `  banger vm show testbox
  banger vm show testbox --json | jq -r .ip
  curl -u opencode:$(banger vm show testbox --json | jq -r .opencode_password) testbox.vm:4096/global/health`,
		Args:              oneNameArg,
		ValidArgsFunction: a.completeVMs(1, nil),
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, args []string) error {
			vm, err := c.GetVM(ctx, args[0])
			if err != nil {
				return fmt.Errorf("showing vm %s: %w", args[0], err)
			}
			// Only this endpoint carries the password; a VM without one
			// answers not found.
			if auth, err := c.OpencodeAuth(ctx, vm.Name); err == nil {
				vm.OpencodePassword = auth.Password
			}
			if asJSON {
				return printJSON(a.stdout, vm)
			}
			return a.printVM(vm)
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}

func (a *app) printVM(vm *rpc.VM) error {
	tw := newTable(a.stdout)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("name", vm.Name)
	row("id", orDash(vm.ID))
	row("state", orDash(vm.State))
	if vm.Error != "" {
		row("error", vm.Error)
	}
	row("image", orDash(vm.Image))
	row("hypervisor", orDash(vm.Hypervisor))
	row("vcpus", fmt.Sprint(vm.VCPUs))
	row("memory", units.MiB(vm.MemoryMiB))
	disk := units.Bytes(vm.DiskSizeBytes)
	if vm.DiskFormat == "qcow2" {
		disk += " (copy-on-write overlays)"
	}
	row("disk", disk)
	row("/root disk", units.Bytes(vm.WorkSizeBytes))
	row("ip", orDash(vm.IP))
	row("mac", orDash(vm.MAC))
	if vm.TAP != "" {
		row("tap", vm.TAP)
	}
	if vm.PID != 0 {
		row("pid", fmt.Sprint(vm.PID))
	}
	row("nat", onOff(vm.NAT))
	if vm.NAT {
		row("egress", orDash(vm.Egress))
	}
	if vm.EgressStats != nil {
		printEgressStats(tw, vm.EgressStats)
	}
	for _, m := range vm.Mounts {
		mode := "read-write"
		if m.ReadOnly {
			mode = "read-only"
		}
		row("mount", fmt.Sprintf("%s -> %s (%s)", m.Host, m.Guest, mode))
	}
	for i, p := range vm.Ports {
		k := ""
		if i == 0 {
			k = "ports:"
		}
		fmt.Fprintf(tw, "%s\t%s (%s)\n", k, portLine(p), portState(p))
	}
	if vm.CreatedAt.IsZero() {
		row("created", "-")
	} else {
		row("created", fmt.Sprintf("%s (%s ago)", vm.CreatedAt.Local().Format(time.DateTime), units.Age(vm.CreatedAt)))
	}
	row("dir", orDash(vm.Dir))
	row("console log", orDash(vm.ConsoleLog))
	if vm.OpencodePassword != "" {
		row("opencode", fmt.Sprintf("http://%s.vm:4096, basic auth opencode:%s", vm.Name, vm.OpencodePassword))
	}
	if len(vm.Stages) > 0 {
		fmt.Fprintln(tw, "stages:\t")
		var total time.Duration
		for _, s := range vm.Stages {
			d := units.MS(s.DurationMS)
			total += d
			fmt.Fprintf(tw, "  %s\t%s\n", s.Name, units.Duration(d))
		}
		fmt.Fprintf(tw, "  total\t%s\n", units.Duration(total))
	}
	return tw.Flush()
}

func (a *app) newVMStartCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "start NAME...",
		Short: "Boot stopped VMs and wait until they are ready",
		Long: `Boot stopped VMs and wait until they answer ssh. Several VMs start in
parallel; one line per VM reports how it went, and banger exits 1 if any
failed. With one VM, its boot stages are shown as they run.`,
		Example: `  banger vm start testbox
  banger vm start web db cache`,
		Args:              nameArgs,
		ValidArgsFunction: a.completeVMs(0, func(vm rpc.VM) bool { return vm.State != "running" }),
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, args []string) error {
			defer a.refreshSSHConfig(ctx, c)
			names := dedupe(args)
			if len(names) == 1 && !asJSON {
				return a.streamVM(ctx, names[0], "starting", false, false, func(ctx context.Context, fn func(rpc.Event)) (*rpc.VM, error) {
					return c.StartVM(ctx, names[0], fn)
				})
			}
			return a.fanOut(ctx, names, asJSON, fanAction{
				verb: "starting",
				call: func(ctx context.Context, name string) (*rpc.VM, error) { return c.StartVM(ctx, name, nil) },
				ok: func(r rpc.Result) string {
					if r.VM != nil && r.VM.IP != "" {
						return fmt.Sprintf("%s started (ip %s)", r.Name, r.VM.IP)
					}
					return r.Name + " started"
				},
			})
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the per-VM results as JSON")
	return cmd
}

func (a *app) newVMStopCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stop NAME...",
		Short: "Stop VMs, keeping their disks",
		Long: `Stop VMs. Their disks stay, so "banger vm start" boots them again as they
were. Several VMs stop in parallel; banger exits 1 if any failed.`,
		Example: `  banger vm stop testbox
  banger vm stop $(banger vm ls --json | jq -r '.[].name')`,
		Args:              nameArgs,
		ValidArgsFunction: a.completeVMs(0, func(vm rpc.VM) bool { return vm.State != "stopped" }),
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, args []string) error {
			return a.fanOut(ctx, args, asJSON, fanAction{
				verb: "stopping",
				call: c.StopVM,
				ok:   func(r rpc.Result) string { return r.Name + " stopped" },
			})
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the per-VM results as JSON")
	return cmd
}

func (a *app) newVMSuspendCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "suspend NAME...",
		Short: "Save running VMs' memory to disk and free their RAM",
		Long: `Suspend running VMs: each guest is paused, its memory and devices are saved
into the VM's directory, and its hypervisor ends, so the VM takes no RAM or
CPU. 'banger vm resume' (or 'banger vm start') brings it back as it was:
its processes, tmux sessions and containers running, its clock set again.
A suspended VM stays suspended across a bangerd restart; 'banger vm stop'
discards its saved memory (like pulling the power: the disks stay, and the
next start boots).

The saved memory takes what the guest uses of its RAM (a few hundred MiB for
the docker image). Several VMs suspend in parallel; banger exits 1 if any
failed, and a VM whose suspend failed keeps running.`,
		Example: `  banger vm suspend testbox
  banger vm suspend $(banger vm ls --json | jq -r '.[] | select(.state == "running") | .name')`,
		Args:              nameArgs,
		ValidArgsFunction: a.completeVMs(0, func(vm rpc.VM) bool { return vm.State == "running" }),
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, args []string) error {
			return a.fanOut(ctx, args, asJSON, fanAction{
				verb: "suspending",
				call: c.SuspendVM,
				ok:   func(r rpc.Result) string { return r.Name + " suspended" },
			})
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the per-VM results as JSON")
	return cmd
}

func (a *app) newVMResumeCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "resume NAME...",
		Short: "Bring suspended VMs back, processes and all",
		Long: `Resume suspended VMs: each is restored from the memory saved in its
directory, with everything that ran in it, and is ready when it answers ssh
again. 'banger vm start' does the same for a suspended VM. A VM whose resume
fails stays suspended, with its saved memory. Several VMs resume in
parallel; with one, its stages are shown as they run.`,
		Example: `  banger vm resume testbox
  banger vm resume web db`,
		Args:              nameArgs,
		ValidArgsFunction: a.completeVMs(0, func(vm rpc.VM) bool { return vm.State == "suspended" }),
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, args []string) error {
			defer a.refreshSSHConfig(ctx, c)
			names := dedupe(args)
			if len(names) == 1 && !asJSON {
				return a.streamVM(ctx, names[0], "resuming", false, false, func(ctx context.Context, fn func(rpc.Event)) (*rpc.VM, error) {
					return c.ResumeVM(ctx, names[0], fn)
				})
			}
			return a.fanOut(ctx, names, asJSON, fanAction{
				verb: "resuming",
				call: func(ctx context.Context, name string) (*rpc.VM, error) { return c.ResumeVM(ctx, name, nil) },
				ok:   func(r rpc.Result) string { return r.Name + " resumed" },
			})
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the per-VM results as JSON")
	return cmd
}

func (a *app) newVMForkCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "fork SRC NEW",
		Short: "Copy a running VM, processes and all, into a new one",
		Long: `Fork a running VM: SRC is paused for a moment while its memory, devices and
disks are copied, then goes on running. The copy, NEW, runs what SRC ran
(its processes, tmux sessions, containers, files) as a machine of its own:
its own address, MAC, name, machine-id, SSH host keys and opencode password,
given by the guest agent before anything reaches it. NEW keeps SRC's image,
vCPUs, memory, disk size and NAT setting.

The copy's disks cost what SRC wrote to its own (copy-on-write over the same
image), and its memory is read from a snapshot that is removed once it runs.
Open network connections of SRC's do not follow into the copy.`,
		Example: `  banger vm fork testbox testbox-try
  banger vm fork build1 build2 --json | jq -r .ip`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef(cmd, "vm fork takes SRC and NEW, got %d argument(s): for example banger vm fork testbox testbox-copy", len(args))
			}
			return nil
		},
		ValidArgsFunction: a.completeVMs(1, func(vm rpc.VM) bool { return vm.State == "running" }),
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, args []string) error {
			defer a.refreshSSHConfig(ctx, c)
			return a.streamVM(ctx, args[1], "forking "+args[0]+" into", asJSON, false, func(ctx context.Context, fn func(rpc.Event)) (*rpc.VM, error) {
				return c.ForkVM(ctx, args[0], args[1], fn)
			})
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the new VM as JSON on stdout")
	return cmd
}

func (a *app) newVMDeleteCmd() *cobra.Command {
	var asJSON, force bool
	cmd := &cobra.Command{
		Use:     "delete NAME...",
		Aliases: []string{"rm"},
		Short:   "Delete VMs and their disks",
		Long: `Delete VMs with their disks. A running VM is only deleted with --force,
which stops it first. Several VMs are deleted in parallel; banger exits 1 if
any failed.`,
		Example: `  banger vm delete testbox
  banger vm rm -f web db`,
		Args:              nameArgs,
		ValidArgsFunction: a.completeVMs(0, nil),
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, args []string) error {
			defer a.refreshSSHConfig(ctx, c)
			return a.fanOut(ctx, args, asJSON, fanAction{
				verb: "deleting",
				call: func(ctx context.Context, name string) (*rpc.VM, error) {
					if !force {
						vm, err := c.GetVM(ctx, name)
						if err != nil {
							return nil, err
						}
						if vm.State == "running" {
							return nil, fmt.Errorf("vm %s is running: stop it first (banger vm stop %s) or delete it anyway with --force", name, name)
						}
					}
					return nil, c.DeleteVM(ctx, name)
				},
				ok: func(r rpc.Result) string { return r.Name + " deleted" },
			})
		}),
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "delete running VMs too, stopping them first")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the per-VM results as JSON")
	return cmd
}

func (a *app) newVMSetCmd() *cobra.Command {
	var (
		asJSON, nat, noNAT bool
		eg                 egressFlags
		workSize           string
	)
	cmd := &cobra.Command{
		Use:   "set (--nat | --no-nat | --egress-... | --work-size SIZE) NAME...",
		Short: "Change VMs' settings",
		Long: `Change settings of existing VMs. NAT and egress change at once, without a
reboot, on a running VM too.

NAT gives a VM outbound access through the host. What it may reach is its egress
policy:
  default   the public internet, but not the host's own addresses, private ranges
            (10/8, 172.16/12, 192.168/16), CGNAT, link-local (cloud metadata),
            loopback or multicast; every NAT VM starts with it
  allow     only what --egress-allow lists (domains are allowed at the addresses
            banger's DNS answered for them; other names get NXDOMAIN)
  deny      the default minus what --egress-deny lists
  open      everything the host reaches
Open connections are judged again under a new policy. Setting a policy other than
open turns NAT on. 'banger vm show' prints the policy and what it refused.

--work-size grows a stopped VM's /root disk to SIZE, keeping its files (stop
the VM first: its hypervisor has the disk open while it runs). The disk only
grows: a SIZE below its size is refused, and so is a running VM, and then
nothing changes. The disk stays sparse: it takes host space only as the
guest writes.`,
		Example: `  banger vm set --nat testbox
  banger vm set --no-nat web db
  banger vm set --egress-allow 'github.com,*.github.com' agent1
  banger vm set --egress-deny 'pastebin.com,203.0.113.0/24' agent1
  banger vm set --egress-allow 10.1.2.0/24:5432/tcp,github.com agent1   # a LAN database too
  banger vm set --egress-policy ./egress.toml agent1
  banger vm set --egress-open agent1

  # More room on /root
  banger vm stop testbox
  banger vm set --work-size 64G testbox
  banger vm start testbox`,
		Args:              nameArgs,
		ValidArgsFunction: a.completeVMs(0, nil),
		RunE: func(cmd *cobra.Command, args []string) error {
			if nat && noNAT {
				return usagef(cmd, "give --nat or --no-nat, not both")
			}
			p, err := eg.policy(cmd)
			if err != nil {
				return err
			}
			var req rpc.SetRequest
			var did []string
			if nat || noNAT {
				req.NAT = &nat
				did = append(did, "nat "+onOff(nat))
			}
			req.Egress = p
			if workSize != "" {
				n, err := units.ParseSize(workSize)
				if err != nil || n <= 0 {
					return usagef(cmd, "invalid --work-size %q: want a size such as 64G", workSize)
				}
				req.WorkSize = workSize
				did = append(did, "/root "+units.FormatSize(n))
			}
			if req.NAT == nil && req.Egress == nil && req.WorkSize == "" {
				return usagef(cmd, "vm set needs a setting: --nat, --no-nat, --work-size SIZE or an egress flag (--egress-allow, --egress-deny, --egress-policy, --egress-open, --egress-default)")
			}
			if noNAT && p != nil && p.Mode != string(egress.ModeOpen) {
				return usagef(cmd, "an egress policy is for outbound traffic, which --no-nat turns off: give one or the other")
			}
			ctx := cmd.Context()
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			return a.fanOut(ctx, args, asJSON, fanAction{
				verb: "changing settings of",
				call: func(ctx context.Context, name string) (*rpc.VM, error) { return c.SetVM(ctx, name, req) },
				ok: func(r rpc.Result) string {
					parts := slices.Clip(did)
					if r.VM != nil && req.Egress != nil {
						if req.NAT == nil {
							parts = append(parts, "nat "+onOff(r.VM.NAT))
						}
						parts = append(parts, "egress "+r.VM.Egress)
					}
					if len(parts) == 0 {
						return r.Name + ": changed"
					}
					return fmt.Sprintf("%s: %s", r.Name, strings.Join(parts, ", "))
				},
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&nat, "nat", false, "give the VMs outbound access through NAT")
	f.BoolVar(&noNAT, "no-nat", false, "remove the VMs' NAT")
	eg.add(f, true)
	f.StringVar(&workSize, "work-size", "", "grow the stopped VMs' /root disk to this size, for example 64G")
	cmd.RegisterFlagCompletionFunc("work-size", cobra.FixedCompletions([]string{"32G", "64G", "128G"}, cobra.ShellCompDirectiveNoFileComp))
	f.BoolVar(&asJSON, "json", false, "print the per-VM results as JSON")
	return cmd
}

func (a *app) newVMLogsCmd() *cobra.Command {
	var follow, raw bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's serial console",
		Long: `Print a VM's serial console: the kernel's and init's messages. With -f, keep printing
as the VM writes more, until Ctrl-C.

What a guest writes is untrusted: escape sequences and other control characters are
not passed to your terminal (ESC shows as ^[) unless you ask for --raw. bangerd keeps
each console log within console_log_max (8M by default), rotating the older part to
console.log.1; both are printed.`,
		Example: `  banger vm logs testbox
  banger vm logs -f testbox`,
		Args:              oneNameArg,
		ValidArgsFunction: a.completeVMs(1, nil),
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, args []string) error {
			out := io.Writer(a.stdout)
			if !raw {
				cw := &logfile.CleanWriter{W: a.stdout}
				defer cw.Flush()
				out = cw
			}
			if err := c.Logs(ctx, args[0], follow, out); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("reading console of vm %s: %w", args[0], err)
			}
			return nil
		}),
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().BoolVar(&raw, "raw", false, "pass the guest's bytes through unfiltered, control characters included")
	return cmd
}

// fanAction is one action applied to many VMs.
type fanAction struct {
	verb string // for error lines: "stopping"
	call func(ctx context.Context, name string) (*rpc.VM, error)
	ok   func(rpc.Result) string
}

// fanOut runs act on every name concurrently and reports one line per name in
// the order given: successes on stdout, failures on stderr. It fails with exit
// code 1 if any name failed.
func (a *app) fanOut(ctx context.Context, names []string, asJSON bool, act fanAction) error {
	names = dedupe(names)
	results := make([]rpc.Result, len(names))
	done := make([]chan struct{}, len(names))
	for i, name := range names {
		done[i] = make(chan struct{})
		go func() {
			defer close(done[i])
			vm, err := act.call(ctx, name)
			if err != nil {
				results[i] = rpc.Result{Name: name, Error: err.Error()}
				return
			}
			results[i] = rpc.Result{Name: name, OK: true, VM: vm}
		}()
	}
	nfailed := 0
	for i := range names {
		<-done[i]
		r := results[i]
		if !r.OK {
			nfailed++
		}
		switch {
		case asJSON:
		case r.OK:
			fmt.Fprintln(a.stdout, act.ok(r))
		default:
			fmt.Fprintf(a.stderr, "error: %s %s: %s\n", act.verb, r.Name, r.Error)
		}
	}
	if asJSON {
		if err := printJSON(a.stdout, results); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(a.stderr, "interrupted: bangerd carries on in the background; check with: banger vm list")
		return &exitError{code: exitInterrupted}
	}
	if nfailed > 0 {
		return &exitError{code: exitFailure}
	}
	return nil
}

// dedupe drops repeated names, keeping the first occurrence.
func dedupe(names []string) []string {
	seen := make(map[string]bool, len(names))
	out := make([]string, 0, len(names))
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// completeVMs completes VM names when bangerd already runs (completion never
// starts it). max > 0 limits how many names the command takes; keep, if not
// nil, selects the VMs worth offering.
func (a *app) completeVMs(max int, keep func(rpc.VM) bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if max > 0 && len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return a.completeFrom(cmd, func(ctx context.Context, c *rpc.Client) ([]cobra.Completion, error) {
			vms, err := c.ListVMs(ctx)
			var out []cobra.Completion
			for _, vm := range vms {
				if !strings.HasPrefix(vm.Name, toComplete) || slices.Contains(args, vm.Name) || (keep != nil && !keep(vm)) {
					continue
				}
				out = append(out, cobra.CompletionWithDesc(vm.Name, vm.State))
			}
			return out, err
		})
	}
}

// completeFrom completes with what list finds when bangerd already runs
// (completion never starts it), and with nothing after 2 seconds or on an
// error.
func (a *app) completeFrom(cmd *cobra.Command, list func(context.Context, *rpc.Client) ([]cobra.Completion, error)) ([]cobra.Completion, cobra.ShellCompDirective) {
	ctx, cancel := context.WithTimeout(cmdContext(cmd), 2*time.Second)
	defer cancel()
	c, up, err := a.runningClient(ctx)
	if err != nil || !up {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	out, err := list(ctx, c)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}
