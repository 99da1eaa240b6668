package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var sizeUnits = []struct {
	suffix string
	size   int64
}{
	{"T", 1 << 40},
	{"G", 1 << 30},
	{"M", 1 << 20},
	{"K", 1 << 10},
}

// ParseSize parses a byte count: a plain number of bytes ("1073741824") or a number with
// a binary unit K, M, G or T, optionally followed by "iB" or "B" ("512M", "8GiB", "1.5G").
func ParseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	iec := strings.HasSuffix(t, "IB")
	if iec {
		t = strings.TrimSuffix(t, "IB")
	} else {
		t = strings.TrimSuffix(t, "B")
	}
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.size
			break
		}
	}
	bad := fmt.Errorf("parsing size %q: want bytes or a number with K, M, G or T, like 8G or 512M", excerpt(s))
	if t == "" || iec && mult == 1 || strings.HasPrefix(t, "+") || strings.HasPrefix(t, "-") {
		return 0, bad
	}
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n > math.MaxInt64/mult {
			return 0, fmt.Errorf("parsing size %q: too large", excerpt(s))
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || strings.ContainsAny(t, "EXP") {
		return 0, bad
	}
	v := f * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("parsing size %q: too large", excerpt(s))
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("parsing size %q: not a whole number of bytes", excerpt(s))
	}
	return int64(v), nil
}

// maxExcerpt bounds how much of a bad input an error quotes: sizes reach
// bangerd from API clients and web forms.
const maxExcerpt = 64

// excerpt is s cut to maxExcerpt bytes, for quoting in errors.
func excerpt(s string) string {
	if len(s) > maxExcerpt {
		return s[:maxExcerpt] + "..."
	}
	return s
}

// FormatSize renders n for people: in the largest unit that divides it exactly ("8G",
// "1536M", "4097"), else with one decimal in the largest unit it reaches ("2.3G").
// Exact results parse back with ParseSize.
func FormatSize(n int64) string {
	for _, u := range sizeUnits {
		if n != 0 && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.suffix
		}
	}
	for _, u := range sizeUnits {
		if n >= u.size || -n >= u.size {
			return strconv.FormatFloat(float64(n)/float64(u.size), 'f', 1, 64) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// RoundUp returns n rounded up to a whole unit (G from 1G, M from 1M, else K),
// formatted so ParseSize accepts it: the smallest tidy size that is at least n.
// A unit whose rounding would pass the largest size gives way to a smaller one.
func RoundUp(n int64) string {
	for _, u := range sizeUnits[1:] {
		if n > math.MaxInt64-(u.size-1) {
			continue
		}
		if n >= u.size || u.suffix == "K" {
			return strconv.FormatInt((n+u.size-1)/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
