package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/units"
)

func (a *app) newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "image",
		Aliases: []string{"images"},
		Short:   "List the images VMs boot from",
		Long:    "Images are the root filesystems VMs boot from; they come with the runtime bundle. Pick one with: banger vm create NAME --image IMAGE",
		Example: `  banger image list`,
		Args:    subcommandArgs,
		RunE:    showHelp,
	}
	cmd.AddCommand(a.newImageListCmd(), a.newImageBuildCmd(), a.newImageRegisterCmd(), a.newImageWarmCmd(), a.newImageDeleteCmd())
	return cmd
}

func (a *app) newImageBuildCmd() *cobra.Command {
	var req rpc.BuildImageRequest
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "build --name NAME [--kind docker|minimal] [--size 4G]",
		Short: "Build a Debian image with debootstrap",
		Long: `Build a Debian bookworm image in bangerd with debootstrap and mkfs.ext4 -d
(no loop mounts), the same recipe as the runtime bundle's images:

  docker   systemd, openssh-server, docker.io, tmux, git, curl and the banger
           agent (the default)
  minimal  sshd with the banger agent as PID 1 (boots fastest)

The debootstrap tree is cached under ~/.cache/banger, keyed by the recipe, so
a second build takes seconds. The image lives under banger's data directory
and is removed with 'banger image delete'. Building needs root (or warm sudo)
and network access to a Debian mirror.`,
		Example: `  banger image build --name web --kind docker --size 8G
  banger vm create --name api --image web`,
		Args: noArgs,
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, _ []string) error {
			start := time.Now()
			p := newProgress(a.stderr, isTerminal(a.stderr))
			img, err := c.BuildImage(ctx, req, p.Event)
			if err != nil {
				p.Close(failed)
				return fmt.Errorf("building image %s: %w", req.Name, err)
			}
			p.Close(succeeded)
			if asJSON {
				return printJSON(a.stdout, img)
			}
			fmt.Fprintf(a.stdout, "image %s built in %s (%s)\nuse it: banger vm create --name NAME --image %s\n", img.Name, units.Duration(time.Since(start)), img.Rootfs, img.Name)
			return nil
		}),
	}
	cmd.Flags().StringVar(&req.Name, "name", "", "image name (required)")
	cmd.Flags().StringVar(&req.Kind, "kind", "docker", "recipe: docker or minimal")
	cmd.Flags().StringVar(&req.Size, "size", "", "filesystem size, e.g. 4G (default: 4G docker, 1G minimal)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the image as JSON")
	cmd.MarkFlagRequired("name")
	return cmd
}

func (a *app) newImageRegisterCmd() *cobra.Command {
	var req rpc.RegisterImageRequest
	cmd := &cobra.Command{
		Use:   "register --name NAME --rootfs PATH [--work-seed PATH] [--kernel PATH --initrd PATH [--modules DIR]]",
		Short: "Register an existing ext4 rootfs as an image",
		Long: `Register an ext4 root filesystem you built yourself as an image VMs can boot
from. banger never changes or deletes the file: each VM boots a copy-on-write
clone of it. Registering an existing name updates it; the default image does
not change.

The image must follow banger's guest contract (docs/architecture.md): the
banger-vsock-agent service, sshd, and the network bootstrap from ip=. Without
--work-seed, VMs get the bundle's default /root seed.

An image may carry its own kernel: --kernel an ELF vmlinux and --initrd the
initramfs that loads its virtio drivers (banger's, as 'banger runtime void-kernel'
stages it), with --modules the lib/modules/<release> dir the rootfs carries.
Its VMs boot them instead of the bundle's, on either hypervisor; 'banger image
list' shows which kernel each image boots. banger reads these files at every
boot and never changes them.`,
		Example: `  banger image register --name local --rootfs /srv/images/rootfs.ext4
  banger vm create --name try --image local

  # An image with its own kernel (what make verify-void registers)
  banger image register --name void-exp --rootfs build/runtime/rootfs-void.ext4 \
    --work-seed build/runtime/work-seed-void.ext4 --kernel build/runtime/void-kernel/vmlinux \
    --initrd build/runtime/void-kernel/initrd.img --modules build/runtime/void-kernel/modules`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			for _, p := range []*string{&req.Rootfs, &req.WorkSeed, &req.Kernel, &req.Initrd, &req.Modules} {
				if *p != "" {
					abs, err := filepath.Abs(*p)
					if err != nil {
						return err
					}
					*p = abs
				}
			}
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			img, err := c.RegisterImage(ctx, req)
			if err != nil {
				return fmt.Errorf("registering image %s: %w", req.Name, err)
			}
			if img.Kernel != "" {
				fmt.Fprintf(a.stdout, "registered image %s (%s), booting its own kernel %s\n", img.Name, img.Rootfs, orDash(img.KernelVersion))
				return nil
			}
			fmt.Fprintf(a.stdout, "registered image %s (%s)\n", img.Name, img.Rootfs)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Name, "name", "", "image name (required)")
	cmd.Flags().StringVar(&req.Rootfs, "rootfs", "", "path to the ext4 root filesystem (required)")
	cmd.Flags().StringVar(&req.WorkSeed, "work-seed", "", "path to an ext4 image seeding each VM's /root")
	cmd.Flags().StringVar(&req.Kernel, "kernel", "", "the image's own ELF kernel (vmlinux), booted instead of the bundle's; needs --initrd")
	cmd.Flags().StringVar(&req.Initrd, "initrd", "", "the initramfs booted with --kernel")
	cmd.Flags().StringVar(&req.Modules, "modules", "", "the kernel's lib/modules/<release> dir (banger records its release)")
	cmd.MarkFlagRequired("name")
	cmd.MarkFlagRequired("rootfs")
	return cmd
}

func (a *app) newImageWarmCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "warm NAME",
		Short: "Snapshot an image's VM so that creates restore it instead of booting",
		Long: `Boot a VM of the image with the default vCPUs, memory and disk size, wait
until it is ready and its boot has settled, and snapshot it: later creates
with those sizes restore the snapshot (a warm create, under a second where a
cold boot takes many) and the guest agent gives each new VM its own identity.

bangerd does this by itself in the background after the first cold create of
an image (config warm_after_create), and again when the snapshot no longer
fits: after a rebuild of the bundle, the kernel or the image, a hypervisor
upgrade, or a change of the default sizes. 'banger image list' shows each
image's state (WARM: ready, building, stale, none). A snapshot that fits is
kept, and this command then only says so.

The snapshot lives under banger's data directory (templates/NAME): its disks
cost what the boot wrote, its memory what the guest used of its RAM. It is
removed with the image.`,
		Example: `  banger image warm docker
  banger image list`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeImageNames,
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, args []string) error {
			start := time.Now()
			p := newProgress(a.stderr, isTerminal(a.stderr))
			img, err := c.WarmImage(ctx, args[0], p.Event)
			if err != nil {
				p.Close(failed)
				return fmt.Errorf("warming image %s: %w", args[0], err)
			}
			p.Close(succeeded)
			if asJSON {
				return printJSON(a.stdout, img)
			}
			fmt.Fprintf(a.stdout, "image %s is warm (%s): creates with the default sizes restore its snapshot\n", img.Name, units.Duration(time.Since(start)))
			return nil
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the image as JSON")
	return cmd
}

func (a *app) newImageDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "delete NAME",
		Aliases:           []string{"rm"},
		Short:             "Forget a registered image (its files are kept)",
		Example:           `  banger image delete local`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeImageNames,
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, args []string) error {
			if err := c.DeleteImage(ctx, args[0]); err != nil {
				return fmt.Errorf("deleting image %s: %w", args[0], err)
			}
			fmt.Fprintf(a.stdout, "image %s deleted\n", args[0])
			return nil
		}),
	}
}

// completeImageNames completes an image name argument.
func (a *app) completeImageNames(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return a.completeImages(cmd, args, toComplete)
}

func (a *app) newImageListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List images",
		Example: `  banger image list
  banger image ls --json`,
		Args: noArgs,
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, _ []string) error {
			imgs, err := c.ListImages(ctx)
			if err != nil {
				return fmt.Errorf("listing images: %w", err)
			}
			if imgs == nil {
				imgs = []rpc.Image{}
			}
			if asJSON {
				return printJSON(a.stdout, imgs)
			}
			if len(imgs) == 0 {
				fmt.Fprintln(a.stderr, "No images. Install a runtime bundle: banger runtime --help")
				return nil
			}
			tw := newTable(a.stdout)
			fmt.Fprintln(tw, "NAME\tDEFAULT\tSIZE\tKERNEL\tWARM\tROOTFS")
			var stale []string
			for _, img := range imgs {
				def := ""
				if img.Default {
					def = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", img.Name, def, units.Bytes(img.Size), kernelOf(img), orDash(img.Warm), orDash(img.Rootfs))
				if img.WarmReason != "" {
					stale = append(stale, fmt.Sprintf("%s: %s", img.Name, img.WarmReason))
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, s := range stale {
				fmt.Fprintln(a.stdout, "stale snapshot of "+s)
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the images as a JSON array")
	return cmd
}

// completeImages completes --image when bangerd already runs.
func (a *app) completeImages(cmd *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return a.completeFrom(cmd, func(ctx context.Context, c *rpc.Client) ([]cobra.Completion, error) {
		imgs, err := c.ListImages(ctx)
		var out []cobra.Completion
		for _, img := range imgs {
			if strings.HasPrefix(img.Name, toComplete) {
				desc := units.Bytes(img.Size)
				if img.Default {
					desc += ", default"
				}
				out = append(out, cobra.CompletionWithDesc(img.Name, desc))
			}
		}
		return out, err
	})
}

// kernelOf says which kernel an image's VMs boot.
func kernelOf(img rpc.Image) string {
	switch {
	case img.Kernel == "":
		return "bundle " + orDash(img.KernelVersion)
	case img.KernelVersion != "":
		return "own " + img.KernelVersion
	default:
		return "own " + filepath.Base(img.Kernel)
	}
}
