package cli

import (
	"io"
	"os"
	"text/tabwriter"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/units"
)

// newTable returns a tabwriter for aligned columns.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
}

// isTerminal reports whether v is a file open on a terminal.
func isTerminal(v any) bool {
	f, ok := v.(*os.File)
	if !ok || f == nil {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// mibValue is a pflag.Value for memory sizes.
type mibValue struct{ mib *int }

func (v mibValue) String() string {
	if v.mib == nil || *v.mib == 0 {
		return ""
	}
	return units.MiB(*v.mib)
}

func (v mibValue) Set(s string) error {
	n, err := units.ParseMiB(s)
	if err != nil {
		return err
	}
	*v.mib = n
	return nil
}

func (v mibValue) Type() string { return "size" }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
