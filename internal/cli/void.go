package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/bundle/build"
	"github.com/banger/banger/internal/image/void"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/xbps"
)

// cacheOrDefault returns dir, or banger's cache directory when it is empty.
func cacheOrDefault(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	return build.DefaultCacheDir()
}

func newRuntimeVoidKernelCmd() *cobra.Command {
	var (
		opts  void.KernelOptions
		check bool
	)
	cmd := &cobra.Command{
		Use:   "void-kernel",
		Short: "Stage a Void Linux kernel from a Void repository (experimental)",
		Long: `Stage the Void kernel package (linux6.12) into --out: read the repository's
x86_64-repodata, resolve the package and its dependencies, download it
(checked against the index's sha256 before it is unpacked), extract the ELF
vmlinux from its bzImage, copy its config and modules, and write an initramfs
with banger-init and the virtio modules. kernel.json is written last: a
directory without it is half-made.

The mirror is $VOID_MIRROR (or --mirror), default ` + xbps.DefaultMirror + `;
file:// mirrors work. --check only checks a staging and prints its paths as
shell assignments.`,
		Example: `  # What make void-kernel runs
  banger runtime void-kernel --out build/runtime/void-kernel --init build/bin/banger-init

  # From a local mirror
  VOID_MIRROR=file:///srv/void banger runtime void-kernel --init build/bin/banger-init

  # Is the staging complete? Prints kernel_version=..., kernel=..., initrd=..., modules=...
  banger runtime void-kernel --check --out build/runtime/void-kernel`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if check {
				m, err := void.LoadKernel(opts.Out, true)
				if err != nil {
					return err
				}
				for _, kv := range [][2]string{
					{"kernel_version", m.KernelVersion},
					{"kernel", m.Path(m.Kernel)},
					{"initrd", m.Path(m.Initrd)},
					{"modules", m.Path(m.Modules)},
					{"package", m.Package},
				} {
					fmt.Fprintf(cmd.OutOrStdout(), "%s=%s\n", kv[0], shellQuote(kv[1]))
				}
				return nil
			}
			var err error
			if opts.CacheDir, err = cacheOrDefault(opts.CacheDir); err != nil {
				return err
			}
			opts.Log = runtimeLogger(cmd)
			slog.SetDefault(opts.Log)
			m, err := void.StageKernel(cmd.Context(), opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "void kernel %s staged in %s\n", m.KernelVersion, m.Dir())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Out, "out", filepath.Join("build", "runtime", "void-kernel"), "directory to stage into")
	f.StringVar(&opts.Init, "init", "", "static banger-init binary for the initramfs (make builds build/bin/banger-init)")
	f.StringVar(&opts.Mirror, "mirror", "", "Void mirror (default $VOID_MIRROR, else "+xbps.DefaultMirror+")")
	f.StringVar(&opts.Package, "package", void.KernelPackage, "kernel package")
	f.StringVar(&opts.CacheDir, "cache", "", "cache directory (default ${XDG_CACHE_HOME:-~/.cache}/banger)")
	f.BoolVar(&check, "check", false, "only check the staging in --out (sizes and sha256 sums) and print its paths")
	return cmd
}

func newRuntimeRootfsVoidCmd() *cobra.Command {
	var (
		opts   void.RootfsOptions
		sshKey string
	)
	cmd := &cobra.Command{
		Use:   "rootfs-void",
		Short: "Build the experimental Void Linux image from a Void repository",
		Long: `Build a Void Linux root image (x86_64 glibc, runit as init) and its
work-seed from a Void repository: the packages are resolved from the index,
downloaded and checked against its sha256s, and unpacked into a staging tree
(nothing from the repository runs on the host); then banger's runit stages
and services (sshd, the agent, docker, the opencode server), mise and opencode
are added, and the image is filled with mkfs.ext4 -d (no loop mount). root's
shell is bash; /bin/sh stays dash.

The kernel modules come from --kernel-dir when it holds a complete staging
(make void-kernel), else from the repository's kernel package; a half-made
staging is refused. Needs root. The default Debian images are not touched.`,
		Example: `  # What make rootfs-void runs
  sudo banger runtime rootfs-void --out build/runtime/rootfs-xbps.ext4 \
    --work-seed build/runtime/work-seed-xbps.ext4 --agent build/runtime/banger-vsock-agent \
    --ssh-key build/runtime/id_ed25519.pub --kernel-dir build/runtime/void-kernel`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if opts.CacheDir, err = cacheOrDefault(opts.CacheDir); err != nil {
				return err
			}
			if opts.WorkSeed != "" {
				if opts.AuthorizedKey, err = os.ReadFile(sshKey); err != nil {
					return fmt.Errorf("reading the bundle's public key: %w: build the bundle with 'make runtime-bundle' or pass --ssh-key", err)
				}
			}
			if opts.KernelDir != "" {
				if _, err := os.Stat(opts.KernelDir); errors.Is(err, fs.ErrNotExist) {
					fmt.Fprintf(cmd.ErrOrStderr(), "note: %s does not exist; the modules come from the repository's kernel package\n", opts.KernelDir)
				}
			}
			opts.Log = runtimeLogger(cmd)
			slog.SetDefault(opts.Log)
			if err := void.BuildRootfs(cmd.Context(), runner.Default, opts); err != nil {
				return err
			}
			out, _ := filepath.Abs(opts.Out)
			fmt.Fprintf(cmd.OutOrStdout(), "void rootfs ready: %s\n", out)
			if opts.WorkSeed != "" {
				seed, _ := filepath.Abs(opts.WorkSeed)
				fmt.Fprintf(cmd.OutOrStdout(), "work-seed: %s\n", seed)
			}
			return nil
		},
	}
	rt := filepath.Join("build", "runtime")
	f := cmd.Flags()
	f.StringVar(&opts.Out, "out", filepath.Join(rt, "rootfs-xbps.ext4"), "image to write")
	f.StringVar(&opts.WorkSeed, "work-seed", filepath.Join(rt, "work-seed-xbps.ext4"), `work-seed image to write ("" for none)`)
	f.StringVar(&sshKey, "ssh-key", filepath.Join(rt, bundle.FileSSHKey+".pub"), "public key the work-seed authorizes for root")
	f.StringVar(&opts.Agent, "agent", filepath.Join(rt, bundle.FileAgent), "static banger-vsock-agent binary")
	f.StringVar(&opts.KernelDir, "kernel-dir", filepath.Join(rt, "void-kernel"), "staged void kernel whose modules the image gets")
	f.StringVar(&opts.Mirror, "mirror", "", "Void mirror (default $VOID_MIRROR, else "+xbps.DefaultMirror+")")
	f.StringVar(&opts.Size, "size", void.DefaultRootfsSize, "image size")
	f.StringVar(&opts.CacheDir, "cache", "", "cache directory (default ${XDG_CACHE_HOME:-~/.cache}/banger)")
	return cmd
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
