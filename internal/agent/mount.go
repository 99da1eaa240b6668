package agent

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"
)

// MaxMounts bounds the host folders of one VM.
const MaxMounts = 8

// MaxMountPath bounds a guest folder's path.
const MaxMountPath = 256

// Mount asks the guest to mount one host folder: the virtio-fs device
// Tag, at Path, read-only or not.
type Mount struct {
	Tag      string `json:"tag"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// MountTag is the virtio-fs tag of a VM's i-th host folder.
func MountTag(i int) string { return fmt.Sprintf("banger%d", i) }

var (
	tagRE  = regexp.MustCompile(`^banger[0-9]{1,2}$`)
	pathRE = regexp.MustCompile(`^[A-Za-z0-9._@+=~/-]+$`)
)

// Guest folders no host folder may cover: the system's own trees, and
// root's ssh keys (banger logs in with them).
var (
	forbiddenTrees = []string{"/proc", "/sys", "/dev", "/run", "/boot", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/root/.ssh"}
	forbiddenDirs  = []string{"/", "/root", "/var", "/tmp"}
)

// CheckGuestPath says whether p may be where a host folder is mounted in a
// guest: an absolute, clean path of letters, digits and . _ @ + = ~ - /,
// at most MaxMountPath bytes, that is not /, /root, /var or /tmp and is
// not inside /proc, /sys, /dev, /run, /boot, /etc, /usr, the /bin, /sbin
// and /lib trees, or /root/.ssh. (Under /root, such as /root/src, is fine.)
func CheckGuestPath(p string) error {
	switch {
	case p == "":
		return errors.New("guest folder is empty")
	case len(p) > MaxMountPath:
		return fmt.Errorf("guest folder %.40q... is longer than %d bytes", p, MaxMountPath)
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("guest folder %q is not absolute", p)
	case !pathRE.MatchString(p):
		return fmt.Errorf("guest folder %q has characters other than letters, digits and . _ @ + = ~ - /", p)
	case path.Clean(p) != p:
		return fmt.Errorf("guest folder %q is not clean: write %q", p, path.Clean(p))
	}
	for _, d := range forbiddenDirs {
		if p == d {
			return fmt.Errorf("guest folder %s would hide the guest's own %s: pick a folder inside it, such as /root/src or /srv/data", p, p)
		}
	}
	for _, t := range forbiddenTrees {
		if p == t || strings.HasPrefix(p, t+"/") {
			return fmt.Errorf("guest folder %s is inside %s, which the guest needs for itself: pick another, such as /root/src or /srv/data", p, t)
		}
	}
	return nil
}

// Check says whether m is a mount the guest may make.
func (m Mount) Check() error {
	if !tagRE.MatchString(m.Tag) {
		return fmt.Errorf("mount tag %q is not banger0 to banger99", m.Tag)
	}
	return CheckGuestPath(m.Path)
}

// CheckMounts checks a whole mount request: each mount, their number, and
// that no guest folder is another's, or inside another's.
func CheckMounts(ms []Mount) error {
	if len(ms) > MaxMounts {
		return fmt.Errorf("%d host folders: at most %d", len(ms), MaxMounts)
	}
	tags := map[string]bool{}
	for i, m := range ms {
		if err := m.Check(); err != nil {
			return err
		}
		if tags[m.Tag] {
			return fmt.Errorf("mount tag %s is given twice", m.Tag)
		}
		tags[m.Tag] = true
		for _, o := range ms[:i] {
			if o.Path == m.Path || strings.HasPrefix(m.Path, o.Path+"/") || strings.HasPrefix(o.Path, m.Path+"/") {
				return fmt.Errorf("guest folders %s and %s overlap: give each host folder a folder of its own", o.Path, m.Path)
			}
		}
	}
	return nil
}
