package virtiofs

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// HelperName is argv[0] of the helper: bangerd re-executed by Start,
// which sets up virtiofsd's namespace and then becomes virtiofsd.
const HelperName = "banger-virtiofs-helper"

// The helper's stages. The first waits until bangerd has written the
// namespace's maps and executes the second, which then holds the
// namespace's capabilities (a process gains them at exec only as the
// namespace's root).
const (
	stageWait  = "wait"
	stageMount = "mount"
)

// The helper's descriptors (Start's ExtraFiles).
const (
	fdSocket = 3 // the vhost-user listening socket, for virtiofsd
	fdGo     = 4 // bangerd writes goLine once the maps are written
	fdStatus = 5 // the helper writes why it failed; closed at exec
)

// IsHelper reports whether this process is the helper: the daemon's main
// calls HelperMain then, before anything else.
func IsHelper() bool { return len(os.Args) > 0 && filepath.Base(os.Args[0]) == HelperName }

// HelperMain runs the helper; on success it never returns, it becomes
// virtiofsd. Its arguments: stage, source folder, "ro" or "rw", the
// virtiofsd binary, the socket path (which names the process).
//
// The mount stage makes the namespace's mounts private, binds the source
// folder onto itself and, for "ro", makes that mount and every mount below
// it read-only (the kernel then refuses every write, whatever virtiofsd is
// asked), with nosuid and nodev in both cases; virtiofsd's own sandbox
// then makes that folder its root (pivot_root).
func HelperMain() int {
	if err := helper(os.Args[1:]); err != nil {
		status := os.NewFile(fdStatus, "status")
		fmt.Fprintf(status, "%v", err)
		fmt.Fprintf(os.Stderr, "%s: %v\n", HelperName, err)
		return 1
	}
	return 0
}

func helper(args []string) error {
	if len(args) != 5 {
		return fmt.Errorf("want 5 arguments (stage, source, ro|rw, virtiofsd, socket), got %d", len(args))
	}
	stage, source, mode, bin, socket := args[0], args[1], args[2], args[3], args[4]
	if mode != "ro" && mode != "rw" {
		return fmt.Errorf("mode %q: want ro or rw", mode)
	}
	sh := Share{Source: source, ReadOnly: mode == "ro", Socket: socket}
	switch stage {
	case stageWait:
		return waitForMaps(args)
	case stageMount:
		return mountAndExec(sh, bin)
	}
	return fmt.Errorf("unknown stage %q", stage)
}

// waitForMaps waits for bangerd's go, checks that this process is now the
// namespace's root and executes the mount stage.
func waitForMaps(args []string) error {
	goPipe := os.NewFile(fdGo, "go")
	buf := make([]byte, len(goLine))
	if _, err := io.ReadFull(goPipe, buf); err != nil {
		return fmt.Errorf("bangerd did not finish the user namespace: %w", err)
	}
	if string(buf) != goLine {
		return fmt.Errorf("bangerd did not finish the user namespace: it sent %q", buf)
	}
	goPipe.Close()
	if os.Getuid() != 0 || os.Getgid() != 0 {
		return fmt.Errorf("the user namespace maps this process to uid %d gid %d, not root", os.Getuid(), os.Getgid())
	}
	argv := append([]string{HelperName, stageMount}, args[1:]...)
	if err := syscall.Exec("/proc/self/exe", argv, os.Environ()); err != nil {
		return fmt.Errorf("executing the mount stage: %w", err)
	}
	return nil
}

// mountAndExec prepares the mount namespace and executes virtiofsd.
func mountAndExec(sh Share, bin string) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making the mounts private: %w", err)
	}
	if err := unix.Mount(sh.Source, sh.Source, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding %s: %w", sh.Source, err)
	}
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if sh.ReadOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(unix.AT_FDCWD, sh.Source, unix.AT_RECURSIVE, attr); err != nil {
		return fmt.Errorf("setting the attributes of %s: %w", sh.Source, err)
	}
	// virtiofsd keeps a descriptor per file the guest has looked up: give
	// it the hard limit (syscall's Setrlimit, so that exec keeps it).
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	unix.CloseOnExec(fdStatus)
	if err := syscall.Exec(bin, sh.Argv(), []string{"LC_ALL=C"}); err != nil {
		return fmt.Errorf("executing %s: %w", bin, err)
	}
	return nil
}
