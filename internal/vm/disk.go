package vm

import (
	"context"
	"fmt"
	"os"

	"github.com/banger/banger/internal/disk"
	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/store"
)

// diskCap gives each VM a copy-on-write clone of its image's rootfs, grown
// to the asked size, and its own /root disk cloned from the image's
// work-seed and grown to the VM's work size (sparse: the host pays only for
// what the guest writes). A stop keeps both; a delete removes them.
type diskCap struct {
	NoCapability
	images *Images
	r      runner.Runner
}

func (*diskCap) Name() string { return "disks" }

func (c *diskCap) Create(ctx context.Context, vm *store.VM, p *Plan) error {
	if err := os.MkdirAll(vm.Dir, 0o700); err != nil {
		return err
	}
	root := RootDisk(vm)
	if _, err := disk.Clone(p.Image.Rootfs, root); err != nil {
		return err
	}
	if size, _ := disk.Size(root); p.diskSize > size {
		if err := disk.Grow(ctx, c.r, root, p.diskSize); err != nil {
			return err
		}
	}
	seed, err := c.images.SeedFor(ctx, p.Bundle, p.Image)
	if err != nil {
		return err
	}
	work := WorkDisk(vm)
	if _, err := disk.Clone(seed, work); err != nil {
		return err
	}
	size, err := disk.Size(work)
	if err != nil {
		return err
	}
	if vm.WorkSizeBytes > size {
		if err := disk.Grow(ctx, c.r, work, vm.WorkSizeBytes); err != nil {
			return fmt.Errorf("growing /root: %w", err)
		}
		size = vm.WorkSizeBytes
	}
	vm.WorkSizeBytes = size // a seed rebuilt bigger than planned
	return nil
}

func (*diskCap) Destroy(_ context.Context, vm *store.VM) error {
	return os.RemoveAll(vm.Dir)
}
