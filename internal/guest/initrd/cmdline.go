package initrd

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/banger/banger/internal/guestconfig"
)

// DefaultRootWait is how long /init waits for the root device unless rootwait=<seconds> says otherwise.
const DefaultRootWait = 10 * time.Second

// Cmdline holds what /init takes from the kernel command line.
type Cmdline struct {
	// Root is root=: a device path such as /dev/vda, LABEL=<label> or UUID=<uuid>.
	Root string
	// FSType is rootfstype=, ext4 by default.
	FSType string
	// Flags is rootflags=, passed to mount as data.
	Flags string
	// ReadOnly is true unless rw is given (ro is the kernel's default too).
	ReadOnly bool
	// Init is init=, /sbin/init by default.
	Init string
	// RootWait is how long to wait for the root device.
	RootWait time.Duration
	// MachineID is banger.machine_id=: the id /init writes into a root
	// whose /etc/machine-id is empty (seedMachineID).
	MachineID string
}

// ParseCmdline parses a kernel command line such as the contents of /proc/cmdline.
// Later parameters override earlier ones; everything after "--" belongs to init.
func ParseCmdline(s string) (Cmdline, error) {
	c := Cmdline{FSType: "ext4", ReadOnly: true, Init: "/sbin/init", RootWait: DefaultRootWait}
	for _, p := range splitCmdline(s) {
		if p == "--" {
			break
		}
		k, v, hasValue := strings.Cut(p, "=")
		switch k {
		case "root":
			c.Root = v
		case "rootfstype":
			c.FSType = v
		case "rootflags":
			c.Flags = v
		case "ro":
			c.ReadOnly = true
		case "rw":
			c.ReadOnly = false
		case "init":
			c.Init = v
		case guestconfig.MachineIDArg:
			if !guestconfig.ValidMachineID(v) {
				return c, fmt.Errorf("parsing kernel command line: %s=%q is not 32 lowercase hex digits, not all zero", guestconfig.MachineIDArg, v)
			}
			c.MachineID = v
		case "rootwait":
			if !hasValue {
				c.RootWait = DefaultRootWait
				continue
			}
			secs, err := strconv.ParseFloat(v, 64)
			// !(secs >= 0) is also true of NaN; the bound keeps the
			// Duration from overflowing.
			if err != nil || !(secs >= 0 && secs < float64(math.MaxInt64/int64(time.Second))) {
				return c, fmt.Errorf("parsing kernel command line: rootwait=%q is not a number of seconds", v)
			}
			c.RootWait = time.Duration(secs * float64(time.Second))
		}
	}
	switch {
	case c.Root == "":
		return c, fmt.Errorf("parsing kernel command line: no root= parameter: add root=/dev/vda")
	case !strings.HasPrefix(c.Root, "/dev/") && !strings.HasPrefix(c.Root, "LABEL=") && !strings.HasPrefix(c.Root, "UUID="):
		return c, fmt.Errorf("parsing kernel command line: root=%s is not a /dev/ path, LABEL= or UUID=", c.Root)
	case c.Root == "LABEL=" || c.Root == "UUID=":
		return c, fmt.Errorf("parsing kernel command line: root=%s is empty", c.Root)
	case c.FSType == "":
		return c, fmt.Errorf("parsing kernel command line: rootfstype= is empty")
	case !strings.HasPrefix(c.Init, "/"):
		return c, fmt.Errorf("parsing kernel command line: init=%s is not an absolute path", c.Init)
	}
	return c, nil
}

// splitCmdline splits at spaces outside double quotes and drops the quotes,
// as the kernel does: foo="a b" is the parameter foo=a b.
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// ext4Identity returns the label and UUID in an ext2/3/4 superblock, given the
// first 2048 bytes of a device. ok is false when there is no such superblock.
func ext4Identity(head []byte) (label, uuid string, ok bool) {
	if len(head) < 2048 {
		return "", "", false
	}
	sb := head[1024:]
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xef53 {
		return "", "", false
	}
	u := sb[0x68 : 0x68+16]
	uuid = fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	label, _, _ = strings.Cut(string(sb[0x78:0x78+16]), "\x00")
	return label, uuid, true
}

// matchesRoot reports whether a device with this label and UUID is the one root= names.
func matchesRoot(root, label, uuid string) bool {
	if v, ok := strings.CutPrefix(root, "LABEL="); ok {
		return label == v
	}
	if v, ok := strings.CutPrefix(root, "UUID="); ok {
		return strings.EqualFold(uuid, v)
	}
	return false
}
