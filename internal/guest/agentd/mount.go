package agentd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/agent"
)

// mount answers OpMount: it checks the whole request first (so a bad one
// mounts nothing), then mounts each folder.
func (s *Server) mount(ms []agent.Mount) agent.Response {
	if err := agent.CheckMounts(ms); err != nil {
		return agent.Response{Error: fmt.Sprintf("refusing to mount: %v", err)}
	}
	fn := s.Mount
	if fn == nil {
		fn = MountVirtiofs
	}
	var errs []string
	for _, m := range ms {
		if err := fn(m); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		s.log().Info("mounted host folder", "tag", m.Tag, "path", m.Path, "read_only", m.ReadOnly)
	}
	if len(errs) > 0 {
		return agent.Response{Error: strings.Join(errs, "; ")}
	}
	return agent.Response{OK: true}
}

// MountVirtiofs mounts the virtio-fs device m.Tag at m.Path (made if
// missing), nosuid and nodev, read-only when asked. A folder already
// mounted so is left alone; another mount there is an error.
func MountVirtiofs(m agent.Mount) error {
	cur, err := mountAt(m.Path)
	if err != nil {
		return fmt.Errorf("mounting %s on %s: %w", m.Tag, m.Path, err)
	}
	if cur != nil {
		if cur.fstype == "virtiofs" && cur.source == m.Tag && cur.readOnly == m.ReadOnly {
			return nil
		}
		return fmt.Errorf("mounting %s on %s: %s (%s) is mounted there already", m.Tag, m.Path, cur.source, cur.fstype)
	}
	if err := os.MkdirAll(m.Path, 0o755); err != nil {
		return fmt.Errorf("mounting %s: %w", m.Tag, err)
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
	if m.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	err = unix.Mount(m.Tag, m.Path, "virtiofs", flags, "")
	switch {
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("mounting %s on %s: the guest kernel has no virtiofs: rebuild the bundle ('make runtime-bundle'), whose initramfs loads it", m.Tag, m.Path)
	case err != nil:
		return fmt.Errorf("mounting %s on %s: %w", m.Tag, m.Path, err)
	}
	// mount(2) does not wait for the server: ask it something, so that a
	// server that is gone is an error now rather than a hang later.
	answered := make(chan error, 1)
	go func() {
		var st unix.Statfs_t
		answered <- unix.Statfs(m.Path, &st)
	}()
	select {
	case err = <-answered:
	case <-time.After(mountAnswer):
		err = fmt.Errorf("no answer in %v (is its virtiofsd gone?)", mountAnswer)
	}
	if err != nil {
		unix.Unmount(m.Path, unix.MNT_DETACH)
		return fmt.Errorf("mounting %s on %s: %w", m.Tag, m.Path, err)
	}
	return nil
}

// mountAnswer bounds the first request to a new mount.
const mountAnswer = 20 * time.Second

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	target, fstype, source string
	readOnly               bool
}

// mountAt returns the topmost mount at target, or nil.
func mountAt(target string) (*mountEntry, error) {
	ms, err := mounts()
	if err != nil {
		return nil, err
	}
	var top *mountEntry
	for i := range ms {
		if ms[i].target == target {
			top = &ms[i]
		}
	}
	return top, nil
}

// mounts parses /proc/self/mountinfo, in mount order.
func mounts() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMountinfo(f)
}

func parseMountinfo(r io.Reader) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(io.LimitReader(r, 4<<20))
	for sc.Scan() {
		// id parent major:minor root target options [optional...] - fstype source superoptions
		before, after, ok := strings.Cut(sc.Text(), " - ")
		l, r := strings.Fields(before), strings.Fields(after)
		if !ok || len(l) < 6 || len(r) < 2 {
			continue
		}
		ro := false
		for _, o := range strings.Split(l[5], ",") {
			ro = ro || o == "ro"
		}
		out = append(out, mountEntry{target: unescape(l[4]), fstype: r[0], source: unescape(r[1]), readOnly: ro})
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// UnmountVirtiofs unmounts every virtio-fs mount, the last made first
// (PID 1 of the minimal image does, before it unmounts /root).
func UnmountVirtiofs() error {
	ms, err := mounts()
	if err != nil {
		return err
	}
	var errs []error
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].fstype != "virtiofs" {
			continue
		}
		if err := unix.Unmount(ms[i].target, 0); err != nil {
			unix.Unmount(ms[i].target, unix.MNT_DETACH)
			errs = append(errs, fmt.Errorf("unmounting %s: %w", ms[i].target, err))
		}
	}
	return errors.Join(errs...)
}
