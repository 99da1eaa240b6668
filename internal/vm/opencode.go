package vm

import (
	"context"
	"log/slog"

	"github.com/banger/banger/internal/opencode"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/store"
)

// opencodeCap gives each VM's opencode server its own password: the server
// runs commands for whoever talks to it, and every local user of the host
// can reach the guest. For images whose server reads opencode.EnvFile, the
// password is written there, into the VM's own root disk (no mount:
// debugfs), and kept beside the disks; only the API's opencode endpoint
// hands it out. The server does not start without the file, so it never
// runs open by mistake. Clients use basic auth, user opencode.
type opencodeCap struct {
	NoCapability
	r   runner.Runner
	log *slog.Logger
}

func (*opencodeCap) Name() string { return "opencode password" }

func (c *opencodeCap) Create(ctx context.Context, vm *store.VM, p *Plan) error {
	takes, err := opencode.Takes(ctx, c.r, RootDisk(vm))
	if err != nil || !takes {
		return err
	}
	pw, err := opencode.NewPassword()
	if err != nil {
		return err
	}
	return opencode.Install(ctx, c.r, RootDisk(vm), vm.Dir, pw)
}
