package units

import (
	"math"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1073741824", 1 << 30, true},
		{"8G", 8 << 30, true},
		{"8g", 8 << 30, true},
		{"8GiB", 8 << 30, true},
		{"8GB", 8 << 30, true},
		{"512M", 512 << 20, true},
		{"4K", 4096, true},
		{"2T", 2 << 40, true},
		{"1.5G", 3 << 29, true},
		{" 16M ", 16 << 20, true},
		{"0", 0, true},
		{"", 0, false},
		{"G", 0, false},
		{"-1G", 0, false},
		{"+1G", 0, false},
		{"1.1", 0, false},
		{"0.3K", 0, false},
		{"1e9", 0, false},
		{"8X", 0, false},
		{"8iB", 0, false},
		{"NaN", 0, false},
		{"9999999T", 0, false},
		{"9223372036854775807", 1<<63 - 1, true},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v, want %d (ok=%v)", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// TestSizeErrorsQuoteAnExcerpt: a huge bad size is not echoed whole (found
// by FuzzParseSize and FuzzParseMiB).
func TestSizeErrorsQuoteAnExcerpt(t *testing.T) {
	huge := strings.Repeat("x", 1<<20)
	for name, parse := range map[string]func(string) error{
		"ParseSize": func(s string) error { _, err := ParseSize(s); return err },
		"ParseMiB":  func(s string) error { _, err := ParseMiB(s); return err },
	} {
		for _, in := range []string{huge, huge + "G", strings.Repeat("9", 1<<20) + "T"} {
			err := parse(in)
			if err == nil {
				t.Errorf("%s(%d bytes) = nil, want an error", name, len(in))
				continue
			}
			if msg := err.Error(); len(msg) > 200 || !strings.Contains(msg, `xxx..."`) && !strings.Contains(msg, `999..."`) {
				t.Errorf("%s(%d bytes) = an error of %d bytes starting %.80q, want one quoting a short excerpt", name, len(in), len(msg), msg)
			}
		}
	}
}

func TestFormatSize(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{8 << 30, "8G"},
		{1536 << 20, "1536M"},
		{4096, "4K"},
		{2 << 40, "2T"},
		{1000, "1000"},
		{0, "0"},
		{5<<30 + 1, "5.0G"},
		{2<<30 + 300<<20 + 7, "2.3G"},
	}
	for _, tt := range tests {
		if got := FormatSize(tt.in); got != tt.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRoundUpSize(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{2 << 30, "2G"},
		{2<<30 + 1, "3G"},
		{300<<20 + 1, "301M"},
		{1, "1K"},
		{0, "0K"},
		{math.MaxInt64 - 1<<30, "8589934591G"},
		{math.MaxInt64, "9223372036854775807"}, // found by FuzzParseSize: 1G more overflowed
	}
	for _, tt := range tests {
		if got := RoundUp(tt.in); got != tt.want {
			t.Errorf("RoundUp(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
