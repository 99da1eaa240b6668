package units

import (
	"testing"
	"time"
)

func TestParseMiB(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"1024", 1024, false},
		{"512M", 512, false},
		{"512mib", 512, false},
		{"1G", 1024, false},
		{"1.5G", 1536, false},
		{"2GiB", 2048, false},
		{" 4gb ", 4096, false},
		{"0", 0, true},
		{"-1G", 0, true},
		{"1.5", 0, true},
		{"G", 0, true},
		{"lots", 0, true},
		{"1T", 1 << 20, false}, // bounded by the host's memory elsewhere
		{"2048K", 2, false},
		{"1K", 0, true},
		{"1.5M", 0, true},
		{"", 0, true},
	} {
		got, err := ParseMiB(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseMiB(%q) = %d, %v, want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestFormatting(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{Duration(412 * time.Millisecond), "0.4s"},
		{Duration(12340 * time.Millisecond), "12.3s"},
		{Duration(125 * time.Second), "2m05s"},
		{MiB(512), "512M"},
		{MiB(1024), "1G"},
		{MiB(1536), "1.5G"},
		{Bytes(8 << 30), "8G"},
		{Bytes(300 << 20), "300M"},
		{Bytes(1536 << 20), "1.5G"},
		{Age(time.Now().Add(-90 * time.Minute)), "1h"},
		{Age(time.Now().Add(-72 * time.Hour)), "3d"},
	} {
		if tc.got != tc.want {
			t.Errorf("formatted %q, want %q", tc.got, tc.want)
		}
	}
}
