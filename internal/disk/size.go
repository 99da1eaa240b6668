package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/banger/banger/internal/runner"
	"github.com/banger/banger/internal/units"
)

// Size returns the apparent size of the file at path.
func Size(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("reading size of %s: %w", path, err)
	}
	return fi.Size(), nil
}

// Grow enlarges the ext4 image at path to size bytes: it extends the file (sparsely),
// checks the filesystem with e2fsck and resizes it with resize2fs. It refuses to shrink
// and does nothing when the image already has that size. The image must not be in use.
func Grow(ctx context.Context, r runner.Runner, path string, size int64) error {
	cur, err := Size(path)
	if err != nil {
		return fmt.Errorf("growing %s: %w", path, err)
	}
	if size < cur {
		return fmt.Errorf("growing %s: disk size %s is smaller than the image (%s): pick --disk-size %s or more",
			path, units.FormatSize(size), units.FormatSize(cur), units.RoundUp(cur))
	}
	if size == cur {
		return nil
	}
	if err := os.Truncate(path, size); err != nil {
		return fmt.Errorf("growing %s to %s: %w", path, units.FormatSize(size), err)
	}
	// resize2fs insists on a freshly checked filesystem. Exit status 1 means e2fsck
	// fixed something, which is fine for an image nobody has mounted. Until
	// resize2fs runs nothing but the file's length changed: a failure puts it back.
	if _, err := r.Run(ctx, "e2fsck", "-f", "-y", path); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			return errors.Join(fmt.Errorf("checking filesystem of %s: %w", path, err), os.Truncate(path, cur))
		}
	}
	if _, err := r.Run(ctx, "resize2fs", path); err != nil {
		return fmt.Errorf("resizing filesystem of %s to %s: %w", path, units.FormatSize(size), err)
	}
	return nil
}
