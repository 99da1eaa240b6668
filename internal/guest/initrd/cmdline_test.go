package initrd

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseCmdline(t *testing.T) {
	def := Cmdline{Root: "/dev/vda", FSType: "ext4", ReadOnly: true, Init: "/sbin/init", RootWait: DefaultRootWait}
	with := func(f func(*Cmdline)) Cmdline { c := def; f(&c); return c }
	tests := []struct {
		in      string
		want    Cmdline
		wantErr string
	}{
		{"root=/dev/vda", def, ""},
		{"console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw ip=10.0.0.2::10.0.0.1:255.255.255.0:vm:eth0:off:1.1.1.1\n",
			with(func(c *Cmdline) { c.ReadOnly = false }), ""},
		{"root=/dev/vdb rootfstype=ext2 rootflags=noatime,data=ordered ro init=/usr/bin/agent rootwait",
			with(func(c *Cmdline) {
				c.Root, c.FSType, c.Flags, c.Init = "/dev/vdb", "ext2", "noatime,data=ordered", "/usr/bin/agent"
			}), ""},
		{"root=/dev/vda rw ro", def, ""},
		{"root=/dev/vdz root=/dev/vda", def, ""},
		{"root=LABEL=rootfs rootwait=2.5", with(func(c *Cmdline) { c.Root, c.RootWait = "LABEL=rootfs", 2500*time.Millisecond }), ""},
		{`root=UUID=0b4e-11 init="/sbin/my init"`, with(func(c *Cmdline) { c.Root, c.Init = "UUID=0b4e-11", "/sbin/my init" }), ""},
		{"root=/dev/vda -- init=/bin/sh rw", def, ""},
		{"console=ttyS0", Cmdline{}, "no root="},
		{"root=vda", Cmdline{}, "root=vda is not"},
		{"root=PARTUUID=1234", Cmdline{}, "is not a /dev/ path"},
		{"root=LABEL=", Cmdline{}, "is empty"},
		{"root=/dev/vda rootwait=soon", Cmdline{}, `rootwait="soon"`},
		// A wait that does not fit a Duration used to wrap around to a negative one.
		{"root=/dev/vda rootwait=1e300", Cmdline{}, `rootwait="1e300"`},
		{"root=/dev/vda rootwait=NaN", Cmdline{}, `rootwait="NaN"`},
		{"root=/dev/vda rootwait=inf", Cmdline{}, `rootwait="inf"`},
		{"root=/dev/vda rootwait=-1", Cmdline{}, `rootwait="-1"`},
		{"root=/dev/vda init=sbin/init", Cmdline{}, "not an absolute path"},
		{"root=/dev/vda rootfstype=", Cmdline{}, "rootfstype= is empty"},
		{"root=/dev/vda banger.machine_id=0123456789abcdef0123456789abcdef",
			with(func(c *Cmdline) { c.MachineID = "0123456789abcdef0123456789abcdef" }), ""},
		{"root=/dev/vda banger.machine_id=00000000000000000000000000000000", Cmdline{}, "banger.machine_id"},
		{"root=/dev/vda banger.machine_id=../../etc/shadow", Cmdline{}, "banger.machine_id"},
	}
	for _, tt := range tests {
		got, err := ParseCmdline(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseCmdline(%q) = %v, want error containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseCmdline(%q) = %+v, %v, want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestSplitCmdline(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  a  b\tc\n", []string{"a", "b", "c"}},
		{`a="x y" "b c" d=""`, []string{"a=x y", "b c", "d="}},
	}
	for _, tt := range tests {
		if got := splitCmdline(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("splitCmdline(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func superblock(label string, uuid [16]byte) []byte {
	b := make([]byte, 2048)
	binary.LittleEndian.PutUint16(b[1024+0x38:], 0xef53)
	copy(b[1024+0x68:], uuid[:])
	copy(b[1024+0x78:], label)
	return b
}

func TestExt4Identity(t *testing.T) {
	uuid := [16]byte{0x0b, 0x4e, 0x1f, 0x2a, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}
	tests := []struct {
		name      string
		in        []byte
		label, id string
		ok        bool
	}{
		{"labelled", superblock("rootfs", uuid), "rootfs", "0b4e1f2a-3344-5566-7788-99aabbccddee", true},
		{"16-byte label", superblock("0123456789abcdef", uuid), "0123456789abcdef", "0b4e1f2a-3344-5566-7788-99aabbccddee", true},
		{"no magic", make([]byte, 2048), "", "", false},
		{"short", make([]byte, 100), "", "", false},
	}
	for _, tt := range tests {
		label, id, ok := ext4Identity(tt.in)
		if label != tt.label || id != tt.id || ok != tt.ok {
			t.Errorf("ext4Identity(%s) = %q, %q, %v, want %q, %q, %v", tt.name, label, id, ok, tt.label, tt.id, tt.ok)
		}
	}
}

func TestMatchesRoot(t *testing.T) {
	tests := []struct {
		root, label, uuid string
		want              bool
	}{
		{"LABEL=rootfs", "rootfs", "x", true},
		{"LABEL=rootfs", "other", "x", false},
		{"UUID=0B4E1F2A-3344-5566-7788-99AABBCCDDEE", "", "0b4e1f2a-3344-5566-7788-99aabbccddee", true},
		{"UUID=0b4e1f2a", "", "0b4e1f2a-3344-5566-7788-99aabbccddee", false},
		{"/dev/vda", "rootfs", "x", false},
	}
	for _, tt := range tests {
		if got := matchesRoot(tt.root, tt.label, tt.uuid); got != tt.want {
			t.Errorf("matchesRoot(%q, %q, %q) = %v, want %v", tt.root, tt.label, tt.uuid, got, tt.want)
		}
	}
}

func TestSeedMachineID(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef"
	for _, tt := range []struct {
		name  string
		make  func(path string) error
		wrote bool
		want  string // the file's content after; "" for no file
	}{
		{"empty file", func(p string) error { return os.WriteFile(p, nil, 0o644) }, true, id + "\n"},
		{"an id already", func(p string) error { return os.WriteFile(p, []byte("fedcba9876543210fedcba9876543210\n"), 0o444) }, false, "fedcba9876543210fedcba9876543210\n"},
		{"no file", func(string) error { return nil }, false, ""},
		{"a link", func(p string) error { return os.Symlink("/run/machine-id", p) }, false, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(root, "etc", "machine-id")
			if err := tt.make(path); err != nil {
				t.Fatal(err)
			}
			wrote, err := seedMachineID(root, id)
			if err != nil || wrote != tt.wrote {
				t.Fatalf("seedMachineID = %v, %v; want %v", wrote, err, tt.wrote)
			}
			got, _ := os.ReadFile(path)
			if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSymlink != 0 {
				got = nil
			}
			if string(got) != tt.want {
				t.Errorf("etc/machine-id after = %q, want %q", got, tt.want)
			}
		})
	}
}
