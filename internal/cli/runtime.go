package cli

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/bundle/build"
	"github.com/banger/banger/internal/bundle/dist"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/image/rootfs"
	"github.com/banger/banger/internal/runner"
)

func newRuntimeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "runtime",
		Short: "Build, install, pack and show the runtime bundle",
		Long: `The runtime bundle is the directory VMs boot from: the guest kernel and its
modules, the initramfs, the root images, the work-seed disk, the guest agent
and the SSH key pair banger logs in with. bundle.json in it records every
file's sha256 and size.

banger looks for the bundle in this order: runtime_dir in the config file,
$BANGER_RUNTIME, build/runtime of the banger source checkout you are in,
then ~/.local/share/banger/runtime, /usr/local/lib/banger/runtime and
/usr/lib/banger/runtime.`,
		Example: `  # Build it from Debian packages (what make runtime-bundle runs)
  banger runtime build --init build/bin/banger-init --agent build/runtime/banger-vsock-agent

  # Or install a prebuilt one
  banger runtime install --manifest build/dist/runtime-bundle.toml

  # Which bundle banger uses, and whether it is intact
  banger runtime show`,
		Args: subcommandArgs,
		RunE: showHelp,
	}
	cmd.AddCommand(newRuntimeBuildCmd(), newRuntimeInstallCmd(), newRuntimeDistCmd(), newRuntimeShowCmd(),
		newRuntimeVoidKernelCmd(), newRuntimeRootfsVoidCmd())
	return cmd
}

// runtimeLogger logs progress to the command's stderr; --debug adds detail.
func runtimeLogger(cmd *cobra.Command) *slog.Logger {
	level := slog.LevelInfo
	if f := cmd.Flag("debug"); f != nil && f.Value.String() == "true" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		},
	}))
}

func newRuntimeBuildCmd() *cobra.Command {
	var (
		opts   build.Options
		images []string
	)
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the runtime bundle from Debian packages",
		Long: `Build the runtime bundle into --out: fetch the Debian cloud kernel, extract
its ELF vmlinux, copy its modules, write the initramfs with banger-init,
build the root images with debootstrap, make the SSH key pair (kept across
rebuilds) and the work-seed disk, copy the agent, and write bundle.json.

Downloads, debootstrap trees and finished images are cached in --cache, and
outputs that did not change are left alone, so a rebuild with nothing new
takes seconds. Every file is written under a temporary name and renamed into
place, so an interrupted build leaves no half-written file. Building images
needs the debootstrap and e2fsprogs packages, and root for debootstrap and
chroot: run it as yourself and it asks sudo for exactly those steps (run
'sudo -v' first); everything it writes is yours.`,
		Example: `  # What make runtime-bundle runs
  banger runtime build --out build/runtime --init build/bin/banger-init \
    --agent build/runtime/banger-vsock-agent

  # Only the minimal image, from a local mirror
  banger runtime build --init build/bin/banger-init --agent build/runtime/banger-vsock-agent \
    --image minimal --mirror http://mirror.example/debian`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, im := range images {
				for _, k := range strings.Split(im, ",") {
					k = strings.TrimSpace(k)
					if k != string(rootfs.KindDocker) && k != string(rootfs.KindMinimal) {
						return usagef(cmd, "--image %q: use docker or minimal", k)
					}
					opts.Images = append(opts.Images, rootfs.Kind(k))
				}
			}
			// Bad flags are refused before sudo is asked for anything.
			if err := opts.Check(); err != nil {
				return err
			}
			if err := doctor.Require(cmd.Context(), runner.Default, doctor.OpRuntimeBuild); err != nil {
				return err
			}
			opts.Log = runtimeLogger(cmd)
			slog.SetDefault(opts.Log) // the kernel and rootfs steps log there too
			if err := build.Build(cmd.Context(), runner.Default, opts); err != nil {
				return err
			}
			out, _ := filepath.Abs(opts.Out)
			fmt.Fprintf(cmd.OutOrStdout(), "runtime bundle ready in %s\n", out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Out, "out", filepath.Join("build", "runtime"), "bundle directory to build into")
	f.StringVar(&opts.CacheDir, "cache", "", "cache directory (default ${XDG_CACHE_HOME:-~/.cache}/banger)")
	f.StringVar(&opts.Init, "init", "", "static banger-init binary for the initramfs (make builds build/bin/banger-init)")
	f.StringVar(&opts.Agent, "agent", "", "static banger-vsock-agent binary (make builds build/runtime/banger-vsock-agent)")
	f.StringVar(&opts.Mirror, "mirror", "", "Debian mirror for debootstrap (default "+rootfs.DefaultMirror+")")
	f.StringArrayVar(&images, "image", nil, "image to build, docker or minimal; repeat for both (default both)")
	return cmd
}

func newRuntimeInstallCmd() *cobra.Command {
	var manifest, out string
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install a prebuilt runtime bundle from a manifest",
		Long: `Install the prebuilt bundle that a manifest (runtime-bundle.toml, written by
banger runtime dist) describes. The archive may be a path, relative to the
manifest, or an http(s) URL. Its sha256 is checked while it is fetched; it
is unpacked next to --out and verified, then swapped in, so a failed install
leaves the old bundle as it was.

Archives carry no SSH key: install keeps the key of the bundle it replaces,
or generates a new pair, and rebuilds the work-seed disk for it (which needs
mkfs.ext4 from e2fsprogs).`,
		Example: `  # Into ~/.local/share/banger/runtime, where banger finds it
  banger runtime install --manifest runtime-bundle.toml

  # Into the source checkout (what make runtime-bundle RUNTIME_MANIFEST=... runs)
  banger runtime install --manifest build/dist/runtime-bundle.toml --out build/runtime`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if manifest == "" {
				return usagef(cmd, "runtime install needs --manifest FILE, for example: banger runtime install --manifest build/dist/runtime-bundle.toml")
			}
			if out == "" {
				out = bundle.DefaultInstalled(nil)[0]
			}
			slog.SetDefault(runtimeLogger(cmd))
			if err := dist.Install(cmd.Context(), manifest, out); err != nil {
				return err
			}
			abs, _ := filepath.Abs(out)
			fmt.Fprintf(cmd.OutOrStdout(), "runtime bundle installed in %s\n", abs)
			return nil
		},
	}
	cmd.Flags().StringVar(&manifest, "manifest", "", "runtime-bundle.toml describing the archive (required)")
	cmd.Flags().StringVar(&out, "out", "", "directory to install into (default ${XDG_DATA_HOME:-~/.local/share}/banger/runtime)")
	return cmd
}

func newRuntimeDistCmd() *cobra.Command {
	var runtimeDir, out string
	cmd := &cobra.Command{
		Use:   "dist",
		Short: "Pack the runtime bundle into a .tar.gz with a manifest",
		Long: `Verify the runtime bundle and pack it into --out as
banger-runtime-<kernel-version>.tar.gz, without its SSH key pair, and write
--out/runtime-bundle.toml pointing at it with its sha256. Give both files to
banger runtime install on another machine.`,
		Example: `  banger runtime dist
  banger runtime dist --runtime build/runtime --out build/dist`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir, err := discoverRuntime(cmd.ErrOrStderr(), runtimeDir)
			if err != nil {
				return err
			}
			manifest, err := dist.Dist(cmd.Context(), dir, out)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "packed %s\nmanifest: %s\ninstall with: banger runtime install --manifest %s\n", dir, manifest, manifest)
			return nil
		},
	}
	cmd.Flags().StringVar(&runtimeDir, "runtime", "", "bundle directory to pack (default: the one banger runtime show finds)")
	cmd.Flags().StringVar(&out, "out", filepath.Join("build", "dist"), "directory for the archive and its manifest")
	return cmd
}

// runtimeShow is the JSON form of banger runtime show.
type runtimeShow struct {
	Dir           string         `json:"dir"`
	Warnings      []string       `json:"warnings,omitempty"`
	KernelVersion string         `json:"kernel_version"`
	BootArgs      string         `json:"boot_args"`
	DefaultImage  string         `json:"default_image"`
	Images        []bundle.Image `json:"images"`
	Firecracker   string         `json:"firecracker,omitempty"`
	Verified      bool           `json:"verified"`
	OK            bool           `json:"ok"`
	Error         string         `json:"error,omitempty"`
}

func newRuntimeShowCmd() *cobra.Command {
	var (
		runtimeDir string
		asJSON     bool
		verify     bool
	)
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show which runtime bundle banger uses and check it",
		Long: `Show the runtime bundle banger finds, its kernel and images, and check that
every file bundle.json lists exists with the recorded size. --verify also
compares sha256 sums, which reads every file. Exits 1 when the check fails.`,
		Example: `  banger runtime show
  banger runtime show --verify --json
  BANGER_RUNTIME=/srv/banger/runtime banger runtime show`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			stdout := cmd.OutOrStdout()
			dir, warnings, err := discover(runtimeDir)
			if err != nil {
				return err
			}
			b, err := bundle.Load(dir)
			if err != nil {
				return err
			}
			check := b.Check
			if verify {
				check = b.Verify
			}
			checkErr := check()
			s := runtimeShow{
				Dir: dir, Warnings: warnings, KernelVersion: b.KernelVersion, BootArgs: b.BootArgs,
				DefaultImage: b.DefaultImage, Images: b.Images, Firecracker: b.Firecracker,
				Verified: verify, OK: checkErr == nil,
			}
			if checkErr != nil {
				s.Error = checkErr.Error()
			}
			if asJSON {
				if err := printJSON(stdout, s); err != nil {
					return err
				}
				if checkErr != nil {
					return &exitError{code: exitFailure}
				}
				return nil
			}
			for _, w := range warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
			}
			tw := newTable(stdout)
			fmt.Fprintf(tw, "bundle:\t%s\n", dir)
			fmt.Fprintf(tw, "kernel:\t%s\n", b.KernelVersion)
			fmt.Fprintf(tw, "boot args:\t%s\n", b.BootArgs)
			if b.Firecracker != "" {
				fmt.Fprintf(tw, "firecracker:\t%s\n", b.Path(b.Firecracker))
			}
			for i, im := range b.Images {
				label := ""
				if i == 0 {
					label = "images:"
				}
				def := ""
				if im.Name == b.DefaultImage {
					def = " (default)"
				}
				desc := ""
				if im.Description != "" {
					desc = ": " + im.Description
				}
				fmt.Fprintf(tw, "%s\t%s%s%s\n", label, im.Name, def, desc)
			}
			what := "files present with the recorded sizes"
			if verify {
				what = "files present with the recorded sizes and sha256 sums"
			}
			if checkErr != nil {
				fmt.Fprintf(tw, "check:\tFAILED\n")
				tw.Flush()
				return checkErr
			}
			fmt.Fprintf(tw, "check:\tok (%d artifacts: %s)\n", len(b.Artifacts), what)
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&runtimeDir, "runtime", "", "bundle directory (default: discovered; see banger runtime --help)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	cmd.Flags().BoolVar(&verify, "verify", false, "also compare every file's sha256 (slower)")
	return cmd
}

// discover finds the bundle: the flag, then the config's runtime_dir, then
// the usual places.
func discover(flag string) (string, []string, error) {
	explicit := flag
	if explicit == "" {
		cfg, err := config.Load(config.DefaultPaths().ConfigFile)
		if err != nil {
			return "", nil, err
		}
		explicit = cfg.RuntimeDir
	}
	return bundle.Discover(bundle.DiscoverOptions{Explicit: explicit})
}

// discoverRuntime is discover that prints the warnings to w.
func discoverRuntime(w io.Writer, flag string) (string, error) {
	dir, warnings, err := discover(flag)
	if err != nil {
		return "", err
	}
	for _, warn := range warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
	return dir, nil
}
