package cli

import (
	"fmt"
	"os/user"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/doctor"
)

func (a *app) newSudoersCmd() *cobra.Command {
	var build bool
	cmd := &cobra.Command{
		Use:   "sudoers",
		Short: "Print the sudoers rule bangerd needs to run as you",
		Long: `bangerd runs as you and asks sudo only for a few commands that need root:
ip (the bridge and TAP devices), nft (banger's own nftables tables) and
sysctl (IPv4 forwarding for NAT guests), plus resolvectl where systemd-resolved
runs. It runs without a terminal, so sudo cannot ask it for a password: those
commands must be allowed without one. sudoers prints a rule that allows
exactly them, by the paths banger runs them with, each with why.

--image-build adds the commands 'banger image build' runs in bangerd
(debootstrap, chroot, cp, rm, mkdir, mv, find, umount, mkfs.ext4, depmod):
together they amount to root, so allow them only if you build images through
bangerd. 'make runtime-bundle' needs none of this: it asks sudo in your
terminal.`,
		Example: `  banger sudoers
  banger sudoers | sudo tee /etc/sudoers.d/zz-banger-$USER >/dev/null && sudo chmod 0440 /etc/sudoers.d/zz-banger-$USER
  sudo visudo -cf /etc/sudoers.d/zz-banger-$USER`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			u, err := user.Current()
			if err != nil {
				return fmt.Errorf("finding your user name: %w", err)
			}
			if u.Uid == "0" {
				fmt.Fprintln(a.stderr, "banger runs as root here and needs no sudoers rule; for a user, run this as that user.")
			}
			ops := doctor.VMOps
			if build {
				ops = append(append([]string(nil), ops...), doctor.OpRuntimeBuild)
			}
			fmt.Fprint(a.stdout, doctor.Sudoers(u.Username, append(ops, doctor.OpSplitDNS)...))
			return nil
		},
	}
	cmd.Flags().BoolVar(&build, "image-build", false, "also allow what 'banger image build' runs (amounts to root)")
	return cmd
}
