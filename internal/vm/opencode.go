package vm

import (
	"context"
	"log/slog"

	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/opencode"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/store"
)

// opencodeCap gives each VM's opencode server its own password: the server
// runs commands for whoever talks to it, and every local user of the host
// can reach the guest. For images whose server reads opencode.EnvFile, the
// password is kept beside the disks (only the API's opencode endpoint hands
// it out) and reaches the guest's EnvFile: written into a raw root disk
// before its first boot (no mount: debugfs), or by the guest agent at
// readiness (a qcow2 overlay, a restored or forked guest). The server does
// not start without the file, so it never runs open by mistake. Clients
// use basic auth, user opencode.
type opencodeCap struct {
	NoCapability
	r   runner.Runner
	log *slog.Logger
}

func (*opencodeCap) Name() string { return "opencode password" }

func (c *opencodeCap) Create(ctx context.Context, vm *store.VM, p *Plan) error {
	var takes bool
	if p.fork != nil {
		takes = opencode.Password(p.fork.Dir) != ""
	} else {
		// The image's file: a VM's qcow2 overlay cannot be read without
		// its base, and holds the same until the guest writes.
		var err error
		if takes, err = opencode.Takes(ctx, c.r, p.Image.Rootfs); err != nil {
			return err
		}
	}
	if !takes {
		return nil
	}
	pw, err := opencode.NewPassword()
	if err != nil {
		return err
	}
	if vm.DiskFormat == string(hypervisor.DiskRaw) && p.warm == nil && p.fork == nil {
		return opencode.Install(ctx, c.r, RootDisk(vm), vm.Dir, pw)
	}
	return opencode.Keep(vm.Dir, pw)
}
