package agent

import (
	"strings"
	"testing"
)

func TestCheckGuestPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		want string // substring of the error; "" means accepted
	}{
		{"/root/src", ""},
		{"/srv/data", ""},
		{"/home/dev/my-project_2.0", ""},
		{"/mnt/a@b+c=d~e", ""},
		{"/opt", ""},
		{"/tmp/share", ""},
		{"", "empty"},
		{"root/src", "not absolute"},
		{"/root/src/", "not clean"},
		{"/root//src", "not clean"},
		{"/root/../etc", "not clean"},
		{"/root/my src", "characters other than"},
		{"/root/a,b", "characters other than"},
		{"/root/a:b", "characters other than"},
		{"/root/\x00", "characters other than"},
		{"/" + strings.Repeat("a", 256), "longer than 256 bytes"},
		{"/", "would hide the guest's own /"},
		{"/root", "would hide"},
		{"/tmp", "would hide"},
		{"/var", "would hide"},
		{"/var/www", ""},
		{"/proc", "inside /proc"},
		{"/proc/1", "inside /proc"},
		{"/sys/fs", "inside /sys"},
		{"/dev/shm", "inside /dev"},
		{"/run/user", "inside /run"},
		{"/etc/nginx", "inside /etc"},
		{"/usr/local/src", "inside /usr"},
		{"/lib64", "inside /lib64"},
		{"/root/.ssh", "inside /root/.ssh"},
		{"/root/.sshx", ""},
		{"/proces", ""},
	} {
		err := CheckGuestPath(tc.path)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("CheckGuestPath(%q) = %v, want nil", tc.path, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("CheckGuestPath(%q) = %v, want an error containing %q", tc.path, err, tc.want)
		}
	}
}

func TestCheckMounts(t *testing.T) {
	m := func(i int, p string) Mount { return Mount{Tag: MountTag(i), Path: p} }
	many := []Mount{}
	for i := 0; i <= MaxMounts; i++ {
		many = append(many, m(i, "/srv/"+string(rune('a'+i))))
	}
	for _, tc := range []struct {
		name string
		ms   []Mount
		want string
	}{
		{"two", []Mount{m(0, "/root/src"), {Tag: "banger1", Path: "/srv/docs", ReadOnly: true}}, ""},
		{"none", nil, ""},
		{"too many", many, "at most 8"},
		{"bad tag", []Mount{{Tag: "fs0", Path: "/srv"}}, `tag "fs0"`},
		{"tag twice", []Mount{m(0, "/srv/a"), m(0, "/srv/b")}, "given twice"},
		{"same folder", []Mount{m(0, "/srv/a"), m(1, "/srv/a")}, "overlap"},
		{"nested", []Mount{m(0, "/srv"), m(1, "/srv/a")}, "overlap"},
		{"nested the other way", []Mount{m(0, "/srv/a/b"), m(1, "/srv/a")}, "overlap"},
		{"siblings with a common prefix", []Mount{m(0, "/srv/a"), m(1, "/srv/ab")}, ""},
		{"bad path", []Mount{m(0, "/etc/x")}, "inside /etc"},
	} {
		err := CheckMounts(tc.ms)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("CheckMounts(%s) = %v, want nil", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("CheckMounts(%s) = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
