package qemu

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/hypervisor"
)

// Machine is the -M value of every VM: devices are described to the guest
// as ACPI nodes (the Debian cloud kernel cannot take them from the command
// line, so QEMU must not add virtio_mmio.device= parameters).
const Machine = "microvm,pit=on,pic=on,rtc=on,acpi=on,auto-kernel-cmdline=off"

// memoryBackendID is the id of the memory-backend-file object that holds
// guest RAM when it lives in a file. It is the id QEMU gives the microvm
// machine's own RAM, so that the RAM block has one name in every VM and a
// snapshot of any of them loads into any other.
const memoryBackendID = "microvm.ram"

// Agent channel kinds, as a snapshot records them.
const (
	agentSerial = "virtio-serial"
	agentVsock  = "vsock"
)

// layout is everything one QEMU command line is built from: what Start
// derives from a spec, what Snapshot reads back from a running QEMU's
// command line, and what Restore rebuilds with another VM's files.
type layout struct {
	Name      string
	Dir       string // sockets, pid file, log
	Accel     string
	CPU       string
	Machine   string // without memory-backend=
	MemoryMiB int
	VCPUs     int
	Kernel    string
	Initrd    string
	Cmdline   string // the final -append
	Console   string
	Disks     []layoutDisk
	NICs      []layoutNIC
	// Agent is agentSerial or agentVsock; CID is the vsock guest CID.
	Agent string
	CID   uint32
	// MemFile holds guest RAM when set; MemShared maps it shared (a
	// template VM) rather than private (a restore of a template).
	MemFile   string
	MemShared bool
	// Incoming starts QEMU paused, waiting for migrate-incoming.
	Incoming bool
	// Shares are virtio-fs devices (host folders); they put guest RAM in
	// a shared memfd unless MemFile holds it.
	Shares []layoutShare
}

type layoutDisk struct {
	ID       string
	Path     string
	Format   hypervisor.DiskFormat
	ReadOnly bool
}

type layoutNIC struct {
	ID  string
	TAP string
	MAC string
}

// layoutOf is the layout Start boots spec with.
func (b *Backend) layoutOf(spec hypervisor.Spec) layout {
	accel := b.accel()
	cmdline := spec.Cmdline
	if accel == "tcg" {
		cmdline = strings.TrimSpace(cmdline + " " + TCGCmdline)
	}
	l := layout{
		Name:      spec.ID,
		Dir:       spec.Dir,
		Accel:     accel,
		CPU:       cpuFor(accel),
		Machine:   Machine,
		MemoryMiB: spec.MemoryMiB,
		VCPUs:     spec.VCPUs,
		Kernel:    spec.Kernel,
		Initrd:    spec.Initrd,
		Cmdline:   cmdline,
		Console:   consolePath(spec),
		Agent:     agentSerial,
		MemFile:   spec.MemoryFile,
		MemShared: spec.MemoryFile != "",
	}
	if b.useVsock() {
		l.Agent, l.CID = agentVsock, spec.AgentCID
	}
	for _, d := range spec.Disks {
		l.Disks = append(l.Disks, layoutDisk{ID: d.ID, Path: d.Path, Format: d.FileFormat(), ReadOnly: d.ReadOnly})
	}
	for _, n := range spec.NICs {
		l.NICs = append(l.NICs, layoutNIC{ID: n.ID, TAP: n.TAP, MAC: n.MAC})
	}
	for _, sh := range spec.Shares {
		l.Shares = append(l.Shares, layoutShare{Tag: sh.Tag, Socket: sh.Socket})
	}
	return l
}

// cpuFor is the CPU model under accel.
func cpuFor(accel string) string {
	if accel == "kvm" {
		return "host"
	}
	return TCGCPU
}

// argv is the QEMU command line of l, starting with bin.
func (l layout) argv(bin string) []string {
	machine := l.Machine
	if l.MemFile != "" || l.sharedRAM() {
		machine += ",memory-backend=" + memoryBackendID
	}
	argv := []string{
		bin,
		"-name", opt(l.Name),
		"-accel", l.Accel,
		"-M", machine,
		"-cpu", l.CPU,
		"-m", strconv.Itoa(l.MemoryMiB),
		"-smp", strconv.Itoa(l.VCPUs),
	}
	if l.MemFile != "" {
		share := "off"
		if l.MemShared {
			share = "on"
		}
		argv = append(argv, "-object", "memory-backend-file,id="+memoryBackendID+",size="+strconv.Itoa(l.MemoryMiB)+"M,mem-path="+opt(l.MemFile)+",share="+share)
	}
	argv = append(argv,
		"-nodefaults", "-no-user-config", "-display", "none",
		// A guest reboot ends the VM. Linux resets through the keyboard
		// controller (reboot=k, and the fallback after ACPI); without one
		// it ends in a real-mode BIOS restart that QEMU never sees, and the
		// guest boots again.
		"-no-reboot", "-device", "i8042",
		"-kernel", l.Kernel,
	)
	if l.Initrd != "" {
		argv = append(argv, "-initrd", l.Initrd)
	}
	argv = append(argv,
		"-append", l.Cmdline,
		"-chardev", "file,id=con,path="+opt(l.Console)+",append=on",
		"-serial", "chardev:con",
	)
	for _, d := range l.Disks {
		// Host page cache with flushes passed through: fast under a
		// mostly idle host, and what the guest fsyncs is on disk. Discard
		// keeps sparse clones sparse.
		drive := "id=" + d.ID + ",file=" + opt(d.Path) + ",format=" + string(d.Format) + ",if=none,cache=writeback,aio=threads"
		if d.ReadOnly {
			drive += ",readonly=on"
		} else {
			drive += ",discard=unmap"
		}
		argv = append(argv, "-drive", drive, "-device", "virtio-blk-device,drive="+d.ID)
	}
	for _, n := range l.NICs {
		argv = append(argv,
			"-netdev", "tap,id="+n.ID+",ifname="+opt(n.TAP)+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev="+n.ID+",mac="+n.MAC,
		)
	}
	argv = append(argv, l.shareArgs()...)
	argv = append(argv,
		"-object", "rng-random,filename=/dev/urandom,id=rng0",
		"-device", "virtio-rng-device,rng=rng0",
	)
	if l.Agent == agentVsock {
		argv = append(argv, "-device", "vhost-vsock-device,guest-cid="+strconv.FormatUint(uint64(l.CID), 10))
	} else {
		argv = append(argv,
			"-device", "virtio-serial-device",
			"-chardev", "socket,id=agent,path="+opt(filepath.Join(l.Dir, AgentSocket))+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name="+agent.SerialName,
		)
	}
	if l.Incoming {
		// Paused until Restore continues it, loading state only when
		// migrate-incoming says from where (after the capabilities).
		argv = append(argv, "-S", "-incoming", "defer")
	}
	argv = append(argv,
		"-chardev", qmpChardev(l.Dir),
		"-mon", "chardev=qmp,mode=control",
		// After -daemonize QEMU's stderr goes to the -D file instead of
		// /dev/null, so start-up and run-time errors are kept.
		"-D", filepath.Join(l.Dir, LogFile),
		"-daemonize", "-pidfile", filepath.Join(l.Dir, PIDFile),
	)
	return argv
}

// parseLayout reads back the layout of a command line that argv built: the
// machine a running QEMU has, from /proc/<pid>/cmdline. It refuses what
// argv never writes, so a snapshot never records a machine Restore cannot
// rebuild.
func parseLayout(args []string) (layout, error) {
	var l layout
	if len(args) == 0 {
		return l, errors.New("empty command line")
	}
	drives := map[string]layoutDisk{}
	var driveOrder []string
	netdevs := map[string]string{} // id -> ifname
	var nicOrder []layoutNIC
	var memSize int
	var memBackend string
	bad := func(flag, val string, why string) error {
		return fmt.Errorf("%s %q: %s", flag, clip(val, 200), why)
	}
	for i := 1; i < len(args); i++ {
		flag := args[i]
		val := ""
		switch flag {
		case "-nodefaults", "-no-user-config", "-no-reboot", "-daemonize", "-S":
			continue
		}
		if !strings.HasPrefix(flag, "-") || i+1 >= len(args) {
			return l, fmt.Errorf("unexpected argument %q", clip(flag, 80))
		}
		i++
		val = args[i]
		switch flag {
		case "-name":
			l.Name = unopt(val)
		case "-accel":
			l.Accel = val
		case "-M":
			kv := splitOpts(val)
			var kept []string
			for _, p := range kv {
				if k, v, ok := strings.Cut(p, "="); ok && k == "memory-backend" {
					memBackend = v
					continue
				}
				kept = append(kept, p) // still escaped
			}
			l.Machine = strings.Join(kept, ",")
		case "-cpu":
			l.CPU = val
		case "-m":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 {
				return l, bad(flag, val, "not a size in MiB")
			}
			l.MemoryMiB = n
		case "-smp":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 {
				return l, bad(flag, val, "not a vCPU count")
			}
			l.VCPUs = n
		case "-kernel":
			l.Kernel = val
		case "-initrd":
			l.Initrd = val
		case "-append":
			l.Cmdline = val
		case "-incoming":
			l.Incoming = true
		case "-global":
			if val == modernMMIO {
				return l, errShares
			}
			return l, bad(flag, val, "not a property banger sets")
		case "-serial", "-mon", "-display":
		case "-D":
			l.Dir = filepath.Dir(val)
		case "-pidfile":
		case "-chardev":
			kind, kv := optKind(val)
			switch {
			case kind == "file" && kv["id"] == "con":
				l.Console = kv["path"]
			case kind == "socket" && kv["id"] == "agent":
				l.Agent = agentSerial
			case kind == "socket" && kv["id"] == "qmp":
			case kind == "socket" && strings.HasPrefix(kv["id"], "fs"):
				return l, errShares
			default:
				return l, bad(flag, val, "not a chardev banger makes")
			}
		case "-object":
			kind, kv := optKind(val)
			switch kind {
			case "rng-random":
			case "memory-backend-memfd":
				return l, errShares
			case "memory-backend-file":
				if kv["id"] != memoryBackendID {
					return l, bad(flag, val, "not banger's memory backend")
				}
				size := strings.TrimSuffix(kv["size"], "M")
				n, err := strconv.Atoi(size)
				if err != nil {
					return l, bad(flag, val, "size is not in MiB")
				}
				memSize = n
				l.MemFile = kv["mem-path"]
				l.MemShared = kv["share"] == "on"
			default:
				return l, bad(flag, val, "not an object banger makes")
			}
		case "-drive":
			_, kv := optKind("drive," + val)
			d := layoutDisk{ID: kv["id"], Path: kv["file"], Format: hypervisor.DiskFormat(kv["format"]), ReadOnly: kv["readonly"] == "on"}
			if d.ID == "" || d.Path == "" || !d.Format.Valid() || d.Format == "" {
				return l, bad(flag, val, "not a drive banger makes")
			}
			drives[d.ID] = d
			driveOrder = append(driveOrder, d.ID)
		case "-netdev":
			kind, kv := optKind(val)
			if kind != "tap" || kv["id"] == "" {
				return l, bad(flag, val, "not a tap netdev")
			}
			netdevs[kv["id"]] = kv["ifname"]
		case "-device":
			kind, kv := optKind(val)
			switch kind {
			case "vhost-user-fs-device":
				return l, errShares
			case "i8042", "virtio-rng-device", "virtio-serial-device", "virtserialport":
			case "virtio-blk-device":
				if _, ok := drives[kv["drive"]]; !ok {
					return l, bad(flag, val, "names no drive defined before it")
				}
			case "virtio-net-device":
				tap, ok := netdevs[kv["netdev"]]
				if !ok {
					return l, bad(flag, val, "names no netdev defined before it")
				}
				nicOrder = append(nicOrder, layoutNIC{ID: kv["netdev"], TAP: tap, MAC: kv["mac"]})
			case "vhost-vsock-device":
				n, err := strconv.ParseUint(kv["guest-cid"], 10, 32)
				if err != nil {
					return l, bad(flag, val, "no guest-cid")
				}
				l.Agent, l.CID = agentVsock, uint32(n)
			default:
				return l, bad(flag, val, "not a device banger makes")
			}
		default:
			return l, fmt.Errorf("unexpected option %s", clip(flag, 80))
		}
	}
	for _, id := range driveOrder {
		l.Disks = append(l.Disks, drives[id])
	}
	l.NICs = nicOrder
	var errs []error
	if l.Machine == "" || l.Accel == "" || l.CPU == "" || l.MemoryMiB == 0 || l.VCPUs == 0 || l.Kernel == "" {
		errs = append(errs, errors.New("no machine, accelerator, cpu, memory, vcpus or kernel"))
	}
	if l.Agent == "" {
		errs = append(errs, errors.New("no agent channel"))
	}
	if (memBackend != "") != (l.MemFile != "") || memBackend != "" && memBackend != memoryBackendID {
		errs = append(errs, errors.New("memory-backend and its object do not match"))
	}
	if l.MemFile != "" && memSize != l.MemoryMiB {
		errs = append(errs, fmt.Errorf("memory backend of %d MiB for -m %d", memSize, l.MemoryMiB))
	}
	return l, errors.Join(errs...)
}

// splitOpts splits a QEMU option list at single commas; ",," is a comma
// inside a value and stays escaped in the parts.
func splitOpts(s string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteString(",,")
				i++
				continue
			}
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(parts, cur.String())
}

// optKind splits "kind,key=value,..." into the kind and its unescaped keys.
func optKind(s string) (string, map[string]string) {
	parts := splitOpts(s)
	kv := map[string]string{}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		kv[k] = unopt(v)
	}
	return parts[0], kv
}

// unopt undoes opt.
func unopt(s string) string { return strings.ReplaceAll(s, ",,", ",") }

// clip shortens s to n bytes for an error message.
func clip(s string, n int) string {
	if len(s) > n {
		s = s[:n] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
