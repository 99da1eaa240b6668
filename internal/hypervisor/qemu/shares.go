package qemu

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"

	"github.com/banger/banger/internal/hypervisor"
)

// shareTag is what a virtio-fs tag may be: the guest mounts the device by
// it (Linux allows 36 bytes).
var shareTag = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,35}$`)

// errShares refuses to snapshot a VM with host folders: QEMU cannot
// migrate a vhost-user-fs device.
var errShares = errors.New("the VM has host folders (virtio-fs devices), which QEMU cannot migrate: it cannot be snapshotted")

// layoutShare is one virtio-fs device of a layout.
type layoutShare struct {
	Tag    string
	Socket string
}

// sharedRAM is the RAM of a VM with host folders and no memory file:
// virtiofsd maps guest memory, so it lives in a shared memfd.
func (l layout) sharedRAM() bool { return len(l.Shares) > 0 && l.MemFile == "" }

// modernMMIO makes every virtio-mmio transport a version 2 (virtio 1.0)
// one: microvm's default is the legacy transport, which virtiofsd
// (libvhost-user) refuses.
const modernMMIO = "virtio-mmio.force-legacy=false"

// shareArgs are the QEMU options of l's shares: modern virtio-mmio, the
// shared RAM, and a vhost-user-fs device per share on its server's socket.
func (l layout) shareArgs() []string {
	if len(l.Shares) == 0 {
		return nil
	}
	argv := []string{"-global", modernMMIO}
	if l.sharedRAM() {
		argv = append(argv, "-object", "memory-backend-memfd,id="+memoryBackendID+",size="+strconv.Itoa(l.MemoryMiB)+"M,share=on")
	}
	for i, s := range l.Shares {
		id := "fs" + strconv.Itoa(i)
		argv = append(argv,
			"-chardev", "socket,id="+id+",path="+opt(s.Socket),
			"-device", "vhost-user-fs-device,chardev="+id+",tag="+s.Tag+",queue-size=1024",
		)
	}
	return argv
}

// validateShares checks spec's shares.
func validateShares(spec hypervisor.Spec) []error {
	var errs []error
	tags := map[string]bool{}
	for _, s := range spec.Shares {
		if !shareTag.MatchString(s.Tag) {
			errs = append(errs, fmt.Errorf("share tag %q must be a letter followed by up to 35 letters, digits, '-' or '_'", s.Tag))
		}
		if tags[s.Tag] {
			errs = append(errs, fmt.Errorf("share tag %s is used twice", s.Tag))
		}
		tags[s.Tag] = true
		if !filepath.IsAbs(s.Socket) || len(s.Socket) > maxSocketPath {
			errs = append(errs, fmt.Errorf("share %s: socket %q must be an absolute path of at most %d bytes", s.Tag, s.Socket, maxSocketPath))
		}
	}
	return errs
}
