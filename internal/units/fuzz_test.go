package units

import (
	"math"
	"strings"
	"testing"
)

// maxErrLen bounds the error of a size parser: it quotes at most an excerpt
// of its input (sizes reach bangerd from API clients and web forms), each
// byte of which %q may spell as four.
const maxErrLen = 4*maxExcerpt + 128

// sizeSeeds are the inputs of TestParseSize and TestParseMiB.
var sizeSeeds = []string{
	"1073741824", "8G", "8g", "8GiB", "8GB", "512M", "4K", "2T", "1.5G", " 16M ", "0", "", "G",
	"-1G", "+1G", "1.1", "0.3K", "1e9", "8X", "8iB", "NaN", "9999999T", "9223372036854775807",
	"1024", "512", "2g", "0.5G", "1.5GiB", "1M", "1048576K", "2147483648", "-5", "512K", "1.0000001G",
	"Inf", "0x10", "1_000", "8388607T", "8388608T",
}

// FuzzParseSize: a size parses to a non-negative byte count, its exact
// rendering parses back to it, RoundUp never rounds down, and errors stay
// short whatever the input.
func FuzzParseSize(f *testing.F) {
	for _, s := range sizeSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			if n != 0 {
				t.Errorf("ParseSize(%q) = %d, %v, want 0 with the error", s, n, err)
			}
			if len(err.Error()) > maxErrLen {
				t.Errorf("ParseSize(%q) error is %d bytes, want at most %d", s, len(err.Error()), maxErrLen)
			}
			return
		}
		if n < 0 {
			t.Fatalf("ParseSize(%q) = %d, want >= 0", s, n)
		}
		if out := FormatSize(n); !strings.Contains(out, ".") {
			if back, err := ParseSize(out); err != nil || back != n {
				t.Errorf("ParseSize(FormatSize(%d) = %q) = %d, %v, want %d", n, out, back, err, n)
			}
		}
		up := RoundUp(n)
		back, err := ParseSize(up)
		if err != nil || back < n {
			t.Errorf("ParseSize(RoundUp(%d) = %q) = %d, %v, want at least %d", n, up, back, err, n)
		}
	})
}

// FuzzParseMiB: a memory size is 1 to MaxInt32 MiB and agrees with
// ParseSize when it carries a unit.
func FuzzParseMiB(f *testing.F) {
	for _, s := range sizeSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseMiB(s)
		if err != nil {
			if len(err.Error()) > maxErrLen {
				t.Errorf("ParseMiB(%q) error is %d bytes, want at most %d", s, len(err.Error()), maxErrLen)
			}
			return
		}
		if n < 1 || n > math.MaxInt32 {
			t.Fatalf("ParseMiB(%q) = %d, want 1 to %d", s, n, math.MaxInt32)
		}
		if b, err := ParseSize(s); err == nil && strings.ContainsAny(strings.ToUpper(s), "KMGT") && b != int64(n)<<20 {
			t.Errorf("ParseMiB(%q) = %d MiB, but ParseSize says %d bytes", s, n, b)
		}
	})
}
