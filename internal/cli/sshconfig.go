package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/atomicfile"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/sshconfig"
)

func (a *app) newSSHConfigCmd() *cobra.Command {
	var install, uninstall bool
	cmd := &cobra.Command{
		Use:   "ssh-config [NAME...] [--install | --uninstall]",
		Short: "Print ssh config for VMs, or include it in ~/.ssh/config",
		Long: `Print OpenSSH client config for VMs (all of them without NAME), so that
stock tools reach them with banger's key and pinned host keys: ssh NAME,
ssh NAME.vm, scp, sftp, rsync, git and editors' remote modes.

Each block pins the host key bangerd recorded for the VM under NAME.vm
(HostKeyAlias), whichever name you type, with StrictHostKeyChecking yes: a
guest whose host key changed is refused.

--install writes the config of every VM to a file banger keeps current
(` + "`banger ssh-config --install`" + ` again, and banger's own vm create, start and
delete rewrite it) and adds one Include line for it at the top of
~/.ssh/config, changing nothing else; it is idempotent. --uninstall removes
exactly that line and the file.`,
		Example: `  banger ssh-config testbox > cfg && ssh -F cfg testbox
  banger ssh-config --install      # then: ssh testbox, scp f testbox:, rsync -a dir/ testbox:dir/
  banger ssh-config --uninstall`,
		ValidArgsFunction: a.completeVMs(0, nil),
		RunE: func(cmd *cobra.Command, args []string) error {
			if install && uninstall {
				return usagef(cmd, "ssh-config takes one of --install or --uninstall")
			}
			if (install || uninstall) && len(args) > 0 {
				return usagef(cmd, "ssh-config --install and --uninstall cover every VM: drop the names %s", strings.Join(args, " "))
			}
			ctx := cmd.Context()
			if uninstall {
				return a.uninstallSSHConfig()
			}
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			if install {
				return a.installSSHConfig(ctx, c)
			}
			hosts, err := sshHosts(ctx, c, dedupe(args))
			if err != nil {
				return err
			}
			_, err = a.stdout.Write(sshconfig.Render(hosts))
			return err
		},
	}
	cmd.Flags().BoolVar(&install, "install", false, "keep a file of every VM's config and include it from ~/.ssh/config")
	cmd.Flags().BoolVar(&uninstall, "uninstall", false, "remove the Include line and the file --install made")
	return cmd
}

// managedSSHConfig is the file --install includes.
func managedSSHConfig() string {
	return filepath.Join(config.DefaultPaths().StateDir, "ssh_config")
}

// userSSHConfig is ~/.ssh/config.
func userSSHConfig() (string, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding your ~/.ssh/config: %w: set HOME", err)
	}
	return filepath.Join(home, ".ssh", "config"), nil
}

// sshHosts returns the blocks of the named VMs, or of all of them. A VM
// without an address yet is left out when not named.
func sshHosts(ctx context.Context, c *rpc.Client, names []string) ([]sshconfig.Host, error) {
	all := len(names) == 0
	if all {
		vms, err := c.ListVMs(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing vms: %w", err)
		}
		for _, vm := range vms {
			names = append(names, vm.Name)
		}
		slices.Sort(names)
	}
	var hosts []sshconfig.Host
	for _, n := range names {
		info, err := c.SSHInfo(ctx, n)
		if err != nil {
			if all && rpc.IsCode(err, rpc.CodeNotFound) {
				continue // deleted meanwhile
			}
			return nil, fmt.Errorf("getting ssh details of vm %s: %w", n, err)
		}
		if info.IP == "" {
			if all {
				continue
			}
			return nil, fmt.Errorf("vm %s has no IP address yet: check it with: banger vm show %s", n, n)
		}
		hosts = append(hosts, sshconfig.Host{Name: info.Name, IP: info.IP, User: info.User, KeyPath: info.KeyPath, KnownHosts: info.KnownHosts, HostKeyAlias: info.HostAlias})
	}
	return hosts, nil
}

// writeManagedSSHConfig rewrites the included file with every VM.
func writeManagedSSHConfig(ctx context.Context, c *rpc.Client, path string) (int, error) {
	hosts, err := sshHosts(ctx, c, nil)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return 0, fmt.Errorf("writing %s: %w", path, err)
	}
	return len(hosts), atomicfile.Write(path, sshconfig.Render(hosts), 0o600)
}

func (a *app) installSSHConfig(ctx context.Context, c *rpc.Client) error {
	user, err := userSSHConfig()
	if err != nil {
		return err
	}
	managed := managedSSHConfig()
	n, err := writeManagedSSHConfig(ctx, c, managed)
	if err != nil {
		return fmt.Errorf("installing ssh config: %w", err)
	}
	line := sshconfig.IncludeLine(managed)
	changed, err := sshconfig.Install(user, line)
	if err != nil {
		return fmt.Errorf("installing ssh config: %w", err)
	}
	if changed {
		fmt.Fprintf(a.stdout, "added %q to %s\n", line, user)
	} else {
		fmt.Fprintf(a.stdout, "%s already includes %s\n", user, managed)
	}
	fmt.Fprintf(a.stdout, "wrote %s (%d %s); try: ssh NAME\n", managed, n, plural(n, "VM", "VMs"))
	return nil
}

func (a *app) uninstallSSHConfig() error {
	user, err := userSSHConfig()
	if err != nil {
		return err
	}
	managed := managedSSHConfig()
	line := sshconfig.IncludeLine(managed)
	changed, err := sshconfig.Uninstall(user, line)
	if err != nil {
		return fmt.Errorf("uninstalling ssh config: %w", err)
	}
	if err := os.Remove(managed); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("uninstalling ssh config: %w", err)
	}
	if changed {
		fmt.Fprintf(a.stdout, "removed %q from %s\n", line, user)
	} else {
		fmt.Fprintf(a.stdout, "%s did not include %s\n", user, managed)
	}
	return nil
}

// refreshSSHConfig rewrites the --install file after a command changed
// the VMs, when it is installed (the file exists). It never fails the
// command: a stale file only costs a 'banger ssh-config --install'.
func (a *app) refreshSSHConfig(ctx context.Context, c *rpc.Client) {
	path := managedSSHConfig()
	if _, err := os.Stat(path); err != nil {
		return
	}
	if _, err := writeManagedSSHConfig(context.WithoutCancel(ctx), c, path); err != nil {
		fmt.Fprintf(a.stderr, "warning: refreshing %s: %v (run: banger ssh-config --install)\n", path, err)
	}
}
