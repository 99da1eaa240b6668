package logfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/banger/banger/internal/atomicfile"
)

// RotatedSuffix names the one older generation Rotate keeps: console.log.1.
const RotatedSuffix = ".1"

// Rotate keeps the log at path within max bytes, for a writer that appends
// to it with O_APPEND (a hypervisor writing a guest's console). When the
// log is larger, its last max bytes, from the first whole line, replace
// path.1 and path is emptied: the writer carries on at its start. At most
// about 2*max bytes are on disk, whatever the writer writes; what it writes
// between the copy and the truncation is lost. It reports whether it
// rotated; a missing log is not an error.
func Rotate(path string, max int64) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("rotating log %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("rotating log %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return false, fmt.Errorf("rotating log %s: not a regular file", path)
	}
	size := fi.Size()
	if size <= max {
		return false, nil
	}
	keep := make([]byte, max)
	n, err := f.ReadAt(keep, size-max)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("rotating log %s: %w", path, err)
	}
	keep = keep[:n]
	if i := bytes.IndexByte(keep, '\n'); i >= 0 && i < len(keep)-1 {
		keep = keep[i+1:]
	}
	if err := atomicfile.Write(path+RotatedSuffix, keep, 0o600); err != nil {
		return false, fmt.Errorf("rotating log %s: %w", path, err)
	}
	if err := f.Truncate(0); err != nil {
		return false, fmt.Errorf("rotating log %s: emptying it: %w", path, err)
	}
	return true, nil
}
