package vm

import (
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want string // substring of the error, "" for ok
	}{
		{"testbox", ""},
		{"a", ""},
		{"web-1", ""},
		{"0abc", ""},
		{strings.Repeat("a", 63), ""},
		{"", "needs a name"},
		{strings.Repeat("a", 64), "invalid VM name"},
		{"Bad", "invalid VM name"},
		{"-lead", "invalid VM name"},
		{"trail-", "invalid VM name"},
		{"under_score", "invalid VM name"},
		{"dot.ted", "invalid VM name"},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("ValidateName(%q) = %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestValidateShape(t *testing.T) {
	for _, tc := range []struct {
		vcpus, mem, max int
		hv              string
		want            string
	}{
		{2, 1024, 0, "qemu", ""},
		{3, 1024, 0, "qemu", ""},
		{3, 1024, 0, "firecracker", "even"},
		{1, 1024, 0, "firecracker", ""},
		{0, 1024, 0, "qemu", "--vcpus"},
		{33, 1024, 0, "qemu", "--vcpus"},
		{2, 64, 0, "qemu", "too small"},
		{2, 4096, 4096, "qemu", ""},
		{2, 4097, 4096, "qemu", "more than this host has"},
	} {
		err := ValidateShape(tc.vcpus, tc.mem, tc.max, tc.hv)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("ValidateShape(%d, %d, %d, %s) = %v, want %q", tc.vcpus, tc.mem, tc.max, tc.hv, err, tc.want)
		}
	}
}
