package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/rpc"
)

func (a *app) newVMSSHCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ssh NAME [-- COMMAND...]",
		Short: "Log into a VM, or run a command in it, over ssh",
		Long: `Log into a running VM with the system ssh, or run COMMAND in it. banger
passes the VM's key and pins its host key, so there is nothing to set up or
confirm. The exit code is ssh's (the command's, when one runs).

Everything after NAME goes to the VM's shell; "--" before the command is
optional unless the command starts with a dash. BANGER_SSH overrides the ssh
binary.`,
		Example: `  banger vm ssh testbox
  banger vm ssh testbox -- uname -a
  banger vm ssh testbox -- 'docker ps && df -h'`,
		Args:              sshArgs,
		ValidArgsFunction: a.completeVMs(1, func(vm rpc.VM) bool { return vm.State == "running" }),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, command := args[0], args[1:]
			if len(command) > 0 && command[0] == "--" {
				command = command[1:]
			}
			return a.ssh(cmd.Context(), name, command)
		},
	}
	// Flags after NAME belong to the remote command.
	cmd.Flags().SetInterspersed(false)
	return cmd
}

func sshArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 || args[0] == "--" {
		return usagef(cmd, "vm ssh needs a VM name, for example: banger vm ssh testbox")
	}
	return nil
}

// sshBinary finds the ssh client: $BANGER_SSH, else ssh in PATH.
func sshBinary() (string, error) {
	if p := os.Getenv("BANGER_SSH"); p != "" {
		return p, nil
	}
	if err := doctor.RequireTools(doctor.OpSSH); err != nil {
		return "", err
	}
	return exec.LookPath("ssh")
}

// sshCommandArgs returns ssh's arguments for info. The host key is always
// checked against the known_hosts file bangerd pinned from the guest agent.
func sshCommandArgs(info *rpc.SSHInfo, tty bool, command []string) []string {
	args := []string{
		"-i", info.KeyPath,
		"-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + info.KnownHosts,
		"-o", "StrictHostKeyChecking=yes",
	}
	if info.HostAlias != "" {
		args = append(args, "-o", "HostKeyAlias="+info.HostAlias)
	}
	args = append(args, "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10")
	if tty {
		args = append(args, "-t")
	}
	user := info.User
	if user == "" {
		user = "root"
	}
	args = append(args, user+"@"+info.IP)
	return append(args, command...)
}

// requireRunning refuses a VM that cannot take an ssh connection.
func requireRunning(info *rpc.SSHInfo, name string) error {
	if info.State != "" && info.State != "running" {
		switch info.State {
		case "stopped", "error", "failed", "crashed":
			return fmt.Errorf("vm %s is %s, not running: start it with: banger vm start %s", name, info.State, name)
		default:
			return fmt.Errorf("vm %s is %s, not running yet: check it with: banger vm show %s", name, info.State, name)
		}
	}
	if info.IP == "" {
		return fmt.Errorf("vm %s has no IP address yet: check it with: banger vm show %s", name, name)
	}
	return nil
}

func (a *app) ssh(ctx context.Context, name string, command []string) error {
	c, err := a.client(ctx)
	if err != nil {
		return err
	}
	info, err := c.SSHInfo(ctx, name)
	if err != nil {
		return fmt.Errorf("getting ssh details of vm %s: %w", name, err)
	}
	if err := requireRunning(info, name); err != nil {
		return err
	}
	bin, err := sshBinary()
	if err != nil {
		return err
	}
	interactive := len(command) == 0
	args := sshCommandArgs(info, interactive && isTerminal(a.stdin), command)
	a.debugf("running %s %s", bin, strings.Join(args, " "))

	// Not CommandContext: ssh gets Ctrl-C itself (banger ignores it meanwhile)
	// and decides what it means for the session.
	cmd := exec.Command(bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = a.stdin, a.stdout, a.stderr
	runErr := cmd.Run()
	code := 0
	if runErr != nil {
		var ee *exec.ExitError
		if !errors.As(runErr, &ee) {
			return fmt.Errorf("running ssh for vm %s: %w", name, runErr)
		}
		code = ee.ExitCode()
		if code < 0 {
			code = exitFailure // killed by a signal
		}
	}
	if code == 255 {
		fmt.Fprintf(a.stderr, "ssh to %s failed (exit 255); its console may say why: banger vm logs %s\n", name, name)
	}
	if interactive {
		a.remindRunning(ctx, c, name)
	}
	if code != 0 {
		return &exitError{code: code}
	}
	return nil
}

// remindRunning tells the user, after an interactive session, that the VM
// still runs.
func (a *app) remindRunning(ctx context.Context, c *rpc.Client, name string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	vm, err := c.GetVM(ctx, name)
	if err != nil || vm.State != "running" {
		return
	}
	fmt.Fprintf(a.stderr, "%s is still running. Stop it with: banger vm stop %s\n", name, name)
}
