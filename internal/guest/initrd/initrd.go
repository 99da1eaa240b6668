// Package initrd is the initramfs /init that loads the virtio modules, mounts the root disk and switches to the real init.
package initrd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ConfigPath is where the initramfs carries the Config for /init.
const ConfigPath = "/etc/banger-init.json"

// Config is the contents of ConfigPath.
type Config struct {
	// Modules are paths relative to /lib/modules/<kernel release>, in load order.
	Modules []string `json:"modules"`
}

const newRoot = "/newroot"

var (
	start             = time.Now()
	console io.Writer = os.Stderr
)

func logf(format string, args ...any) {
	fmt.Fprintf(console, "banger-init: "+format+"\n", args...)
}

// Main runs /init. It never returns: it execs the real init, or on failure
// prints the error and reboots the machine (which ends a banger VM).
func Main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "banger-init: must run as PID 1 from the initramfs, not by hand")
		os.Exit(2)
	}
	err := run()
	logf("error: %v", err)
	logf("rebooting")
	unix.Sync()
	unix.IoctlSetInt(1, unix.TCSBRK, 1) // tcdrain: let the message reach the console
	time.Sleep(200 * time.Millisecond)
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	os.Exit(1) // PID 1 exiting panics the kernel, which panic= turns into a reboot
}

func run() error {
	if err := mountEarly(); err != nil {
		return err
	}
	if err := openConsole(); err != nil {
		return err
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return fmt.Errorf("reading kernel release: %w", err)
	}
	release := unix.ByteSliceToString(uts.Release[:])
	logf("starting on kernel %s", release)

	n, err := loadModules(filepath.Join("/lib/modules", release))
	if err != nil {
		return err
	}
	logf("loaded %d modules (%v)", n, since())

	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("reading kernel command line: %w", err)
	}
	cl, err := ParseCmdline(string(b))
	if err != nil {
		return err
	}
	dev, err := waitRoot(cl.Root, cl.RootWait)
	if err != nil {
		return err
	}
	if err := mountRoot(dev, cl); err != nil {
		return err
	}
	mode := "rw"
	if cl.ReadOnly {
		mode = "ro"
	}
	logf("mounted %s (%s, %s) on %s (%v)", dev, cl.FSType, mode, newRoot, since())
	if cl.MachineID != "" && !cl.ReadOnly {
		if wrote, err := seedMachineID(newRoot, cl.MachineID); err != nil {
			logf("not writing the machine id: %v", err)
		} else if wrote {
			logf("wrote the machine id %s: the image had none", cl.MachineID)
		}
	}
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		if err := moveMount(m); err != nil {
			return err
		}
	}
	if err := switchRoot(); err != nil {
		return err
	}
	if _, err := os.Stat(cl.Init); err != nil {
		return fmt.Errorf("starting init: %w: set init= on the kernel command line to the image's init", err)
	}
	logf("switching to %s (%v)", cl.Init, since())
	argv := append([]string{cl.Init}, os.Args[1:]...)
	if err := unix.Exec(cl.Init, argv, os.Environ()); err != nil {
		return fmt.Errorf("executing %s: %w", cl.Init, err)
	}
	return nil
}

func since() time.Duration { return time.Since(start).Round(time.Millisecond) }

// mountEarly mounts devtmpfs, proc and sysfs; already mounted ones are fine.
func mountEarly() error {
	for _, m := range []struct {
		fstype, target string
		flags          uintptr
	}{
		{"devtmpfs", "/dev", unix.MS_NOSUID},
		{"proc", "/proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	} {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", m.target, err)
		}
		err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, "")
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return nil
}

// openConsole makes /dev/console stdin, stdout and stderr, as the kernel does
// for init when the initramfs has a /dev/console node (ours has none).
func openConsole() error {
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening /dev/console: %w", err)
	}
	for i := 0; i <= 2; i++ {
		if err := unix.Dup3(fd, i, 0); err != nil {
			return fmt.Errorf("attaching /dev/console to fd %d: %w", i, err)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
	console = os.Stdout
	return nil
}

// loadModules loads the modules ConfigPath lists, in order.
func loadModules(dir string) (int, error) {
	b, err := os.ReadFile(ConfigPath)
	if errors.Is(err, os.ErrNotExist) {
		logf("no %s: loading no modules", ConfigPath)
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", ConfigPath, err)
	}
	var cfg Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		return 0, fmt.Errorf("parsing %s: %w", ConfigPath, err)
	}
	for _, rel := range cfg.Modules {
		p := filepath.Join(dir, rel)
		if err := loadModule(p); err != nil {
			return 0, err
		}
	}
	return len(cfg.Modules), nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("loading module: %w: the initramfs does not match the running kernel, rebuild it", err)
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("loading module %s: %w", path, err)
	}
	return nil
}

// waitRoot polls until the root device appears and returns its path.
func waitRoot(root string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		dev, err := findRoot(root)
		if err == nil {
			return dev, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("waiting for root device %s: not there after %v (%w): check the VM's disks and root=", root, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func findRoot(root string) (string, error) {
	if strings.HasPrefix(root, "/dev/") {
		if _, err := os.Stat(root); err != nil {
			return "", err
		}
		return root, nil
	}
	names, err := os.ReadDir("/sys/class/block")
	if err != nil {
		return "", err
	}
	for _, n := range names {
		dev := "/dev/" + n.Name()
		head, err := readHead(dev)
		if err != nil {
			continue
		}
		if label, uuid, ok := ext4Identity(head); ok && matchesRoot(root, label, uuid) {
			return dev, nil
		}
	}
	return "", fmt.Errorf("no block device has %s", root)
}

func readHead(dev string) ([]byte, error) {
	f, err := os.Open(dev)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, 2048)
	if _, err := io.ReadFull(f, head); err != nil {
		return nil, err
	}
	return head, nil
}

func mountRoot(dev string, cl Cmdline) error {
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", newRoot, err)
	}
	var flags uintptr
	if cl.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(dev, newRoot, cl.FSType, flags, cl.Flags); err != nil {
		return fmt.Errorf("mounting root %s (%s) on %s: %w: check root= and rootfstype=", dev, cl.FSType, newRoot, err)
	}
	return nil
}

// moveMount moves the mount at m (e.g. /dev) into the new root. When the new
// root has no such directory and cannot get one, the mount is dropped instead.
func moveMount(m string) error {
	target := newRoot + m
	if err := os.Mkdir(target, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		logf("warning: no %s in the root file system (%v): unmounting %s", m, err, m)
		return unix.Unmount(m, unix.MNT_DETACH)
	}
	if err := unix.Mount(m, target, "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving %s to %s: %w", m, target, err)
	}
	return nil
}

// seedMachineID writes id into root's etc/machine-id when that is an empty
// file, as an image built for many machines ships it: systemd would make
// one up at boot and treat the boot as its first, applying every unit's
// preset. An id already there (a VM's later boots), a link, or no such
// file (an image without systemd's convention) is left alone.
func seedMachineID(root, id string) (bool, error) {
	path := filepath.Join(root, "etc", "machine-id")
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || fi.Size() != 0 {
		return false, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return false, err
	}
	if _, err := f.WriteString(id + "\n"); err != nil {
		f.Close()
		return false, err
	}
	return true, f.Close()
}

// switchRoot makes newRoot the root like busybox switch_root: free the
// initramfs, move the new root over /, chroot into it.
func switchRoot() error {
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("switching root: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return fmt.Errorf("switching root: statfs /: %w", err)
	}
	if st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC {
		var root unix.Stat_t
		if err := unix.Lstat("/", &root); err != nil {
			return fmt.Errorf("switching root: stat /: %w", err)
		}
		deleteContents("/", root.Dev)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switching root: moving %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switching root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switching root: chdir /: %w", err)
	}
	return nil
}

// deleteContents removes everything under dir that lives on device dev,
// leaving other mounts (the new root) alone. Errors are ignored: this only frees memory.
func deleteContents(dir string, dev uint64) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil || st.Dev != dev {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			deleteContents(p, dev)
			unix.Rmdir(p)
			continue
		}
		unix.Unlink(p)
	}
}
