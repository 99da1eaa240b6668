// Package units formats and parses the sizes, durations and ages banger shows people.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Duration formats d for progress output: 0.4s, 12.3s, 2m05s.
func Duration(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	d = d.Round(time.Second)
	return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
}

// MS converts the API's float milliseconds to a Duration.
func MS(ms float64) time.Duration {
	return time.Duration(ms * float64(time.Millisecond))
}

// Age formats the time since t the way ps and docker do: 45s, 12m, 5h, 3d.
func Age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(0, int(d.Seconds())))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

// MiB formats a memory size in MiB as the user would type it: 512M, 1G, 1.5G.
func MiB(mib int) string {
	switch {
	case mib <= 0:
		return "-"
	case mib%1024 == 0:
		return fmt.Sprintf("%dG", mib/1024)
	case mib > 1024:
		return strconv.FormatFloat(float64(mib)/1024, 'f', 1, 64) + "G"
	default:
		return fmt.Sprintf("%dM", mib)
	}
}

// Bytes formats a byte count with binary units: 812M, 8.0G.
func Bytes(n int64) string {
	if n <= 0 {
		return "-"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	units := "KMGTPE"
	v := float64(n)
	i := -1
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	if v >= 100 || v == math.Trunc(v) {
		return fmt.Sprintf("%.0f%c", v, units[i])
	}
	return fmt.Sprintf("%.1f%c", v, units[i])
}

// ParseMiB parses a memory size: a plain number is MiB; a number with a
// binary unit (K, M, G, T, optionally with B or iB, any case) is parsed by
// ParseSize and must be a whole number of MiB.
func ParseMiB(s string) (int, error) {
	t := strings.TrimSpace(s)
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n < 1 || n > math.MaxInt32 {
			return 0, fmt.Errorf("memory %q is not a whole positive number of MiB: use for example 512M or 2G", excerpt(s))
		}
		return int(n), nil
	}
	b, err := ParseSize(t)
	if err != nil {
		return 0, fmt.Errorf("memory %q is not a size: use MiB (1024) or a unit (512M, 2G)", excerpt(s))
	}
	if b < 1<<20 || b%(1<<20) != 0 || b/(1<<20) > math.MaxInt32 {
		return 0, fmt.Errorf("memory %q is not a whole positive number of MiB: use for example 512M or 2G", excerpt(s))
	}
	return int(b >> 20), nil
}
