package logfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// Last returns the last max bytes of the log open as cur, with its rotated
// generation at oldPath (a missing one is no error) counted before it, and
// the offset in cur that the answer ends at. When the answer is cut, it
// starts at the first whole line (one line longer than max is kept, cut).
// It reads only those bytes, however long the log is.
func Last(cur *os.File, oldPath string, max int64) ([]byte, int64, error) {
	fi, err := cur.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("reading the end of log %s: %w", cur.Name(), err)
	}
	curSec := io.NewSectionReader(cur, 0, fi.Size())
	oldSec := io.NewSectionReader(bytes.NewReader(nil), 0, 0)
	if old, err := os.Open(oldPath); err == nil {
		defer old.Close()
		if ofi, err := old.Stat(); err == nil && ofi.Mode().IsRegular() {
			oldSec = io.NewSectionReader(old, 0, ofi.Size())
		}
	}
	data, err := last(oldSec, curSec, max)
	if err != nil {
		return nil, 0, fmt.Errorf("reading the end of log %s: %w", cur.Name(), err)
	}
	return data, fi.Size(), nil
}

// last returns the last max bytes of old followed by cur, from the first
// whole line when cut. It reads one byte more than it returns, to tell
// whether the cut fell at a line's start.
func last(old, cur *io.SectionReader, max int64) ([]byte, error) {
	if max <= 0 {
		return nil, nil
	}
	total := old.Size() + cur.Size()
	n := min(total, max+1)
	buf := make([]byte, n)
	fromCur := min(n, cur.Size())
	fromOld := n - fromCur
	if err := readAt(old, buf[:fromOld], old.Size()-fromOld); err != nil {
		return nil, err
	}
	if err := readAt(cur, buf[fromOld:], cur.Size()-fromCur); err != nil {
		return nil, err
	}
	if n <= max {
		return buf, nil
	}
	// buf[0] is the byte before the answer: drop through the first newline.
	if i := bytes.IndexByte(buf, '\n'); i >= 0 && i < len(buf)-1 {
		return buf[i+1:], nil
	}
	return buf[1:], nil
}

func readAt(r io.ReaderAt, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF // the log shrank while it was read
	}
	return err
}
