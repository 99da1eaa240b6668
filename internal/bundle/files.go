package bundle

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/atomicfile"
)

// FileSum is the content identity of a file or tree.
type FileSum struct {
	SHA256 string
	Size   int64
}

// HashPath hashes a regular file, or a directory as a tree (see TreeHash).
func HashPath(path string) (FileSum, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return FileSum{}, fmt.Errorf("hashing %s: %w", path, err)
	}
	if fi.IsDir() {
		return treeHash(path)
	}
	f, err := os.Open(path)
	if err != nil {
		return FileSum{}, fmt.Errorf("hashing %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return FileSum{}, fmt.Errorf("hashing %s: %w", path, err)
	}
	return FileSum{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}

// HashCompare hashes src and reports whether dst is a regular file with the
// same content; a missing or different dst is not an error. The hash and the
// comparison run concurrently, so comparing costs little beyond hashing.
func HashCompare(src, dst string) (FileSum, bool, error) {
	var (
		sum     FileSum
		hashErr error
		wg      sync.WaitGroup
	)
	wg.Go(func() { sum, hashErr = HashPath(src) })
	same := false
	si, serr := os.Stat(src)
	di, derr := os.Stat(dst)
	if serr == nil && derr == nil && si.Mode().IsRegular() && di.Mode().IsRegular() && si.Size() == di.Size() {
		same = equalFiles(src, dst)
	}
	wg.Wait()
	if hashErr != nil {
		return FileSum{}, false, hashErr
	}
	return sum, same, nil
}

// equalFiles reports whether two files have the same bytes; errors count as different.
func equalFiles(a, b string) bool {
	fa, err := os.Open(a)
	if err != nil {
		return false
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false
	}
	defer fb.Close()
	bufA, bufB := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		n, errA := fill(fa, bufA)
		m, errB := fill(fb, bufB)
		if n != m || !bytes.Equal(bufA[:n], bufB[:m]) {
			return false
		}
		if errors.Is(errA, io.EOF) && errors.Is(errB, io.EOF) {
			return true
		}
		if errA != nil || errB != nil {
			return false
		}
	}
}

// HashAll hashes paths concurrently and returns their sums in order.
func HashAll(paths []string) ([]FileSum, error) {
	sums := make([]FileSum, len(paths))
	errs := make([]error, len(paths))
	ForEach(len(paths), func(i int) {
		sums[i], errs[i] = HashPath(paths[i])
	})
	return sums, errors.Join(errs...)
}

// ForEach calls f(0..n-1) on up to NumCPU goroutines and waits for all of them.
func ForEach(n int, f func(i int)) {
	workers := min(runtime.NumCPU(), n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				f(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// TreeEntry is one non-directory entry of a tree.
type TreeEntry struct {
	Rel    string
	Link   string // symlink target; empty for regular files
	Sum    FileSum
	IsLink bool
}

// WalkTree lists the regular files and symlinks under root in lexical order.
// Other file types are an error.
func WalkTree(root string) ([]TreeEntry, error) {
	var entries []TreeEntry
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.Type().IsRegular():
			entries = append(entries, TreeEntry{Rel: rel})
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			entries = append(entries, TreeEntry{Rel: rel, Link: target, IsLink: true})
		default:
			return fmt.Errorf("%s: unsupported file type %s", path, d.Type())
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walking %s: %w", root, err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Rel < entries[j].Rel })
	return entries, nil
}

// treeHash hashes a directory tree. The digest is the sha256 of one line per
// entry in lexical path order: "f <sha256> <size> <path>" for a regular file,
// "l <target> <path>" for a symlink. Empty directories do not count. The size
// is the sum of the regular files' sizes.
func treeHash(root string) (FileSum, error) {
	entries, err := WalkTree(root)
	if err != nil {
		return FileSum{}, fmt.Errorf("hashing tree: %w", err)
	}
	errs := make([]error, len(entries))
	ForEach(len(entries), func(i int) {
		if !entries[i].IsLink {
			entries[i].Sum, errs[i] = HashPath(filepath.Join(root, filepath.FromSlash(entries[i].Rel)))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return FileSum{}, fmt.Errorf("hashing tree %s: %w", root, err)
	}
	h := sha256.New()
	var total int64
	for _, e := range entries {
		if e.IsLink {
			fmt.Fprintf(h, "l %s %s\n", e.Link, e.Rel)
			continue
		}
		fmt.Fprintf(h, "f %s %d %s\n", e.Sum.SHA256, e.Sum.Size, e.Rel)
		total += e.Sum.Size
	}
	return FileSum{SHA256: hex.EncodeToString(h.Sum(nil)), Size: total}, nil
}

// pathSize is a file's size, or the total size of a tree's regular files.
func pathSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if !fi.IsDir() {
		return fi.Size(), nil
	}
	// A bundle may link to a tree kept elsewhere: walk what it points at.
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	var total int64
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}

// TempPath creates an empty temporary file next to final, named so that it
// is recognisably unfinished, and returns its path.
func TempPath(final string) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(final), atomicfile.TempPattern(filepath.Base(final)))
	if err != nil {
		return "", err
	}
	name := f.Name()
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

// CopyToTemp copies src into a new temporary file next to dst, keeping holes,
// and returns the temporary path and src's sum. The caller renames or removes it.
func CopyToTemp(src, dst string, perm fs.FileMode) (string, FileSum, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", FileSum{}, err
	}
	defer in.Close()
	tmp, err := TempPath(dst)
	if err != nil {
		return "", FileSum{}, err
	}
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		os.Remove(tmp)
		return "", FileSum{}, err
	}
	h := sha256.New()
	n, err := SparseCopy(out, io.TeeReader(in, h))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, perm)
	}
	if err != nil {
		os.Remove(tmp)
		return "", FileSum{}, err
	}
	return tmp, FileSum{SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}

// SparseCopy copies r to f, seeking over all-zero blocks so that disk images
// stay sparse, and returns the number of bytes copied.
func SparseCopy(f *os.File, r io.Reader) (int64, error) {
	const block = 1 << 20
	buf := make([]byte, block)
	zero := make([]byte, block)
	var total int64
	for {
		n, err := fill(r, buf)
		if n > 0 {
			if bytes.Equal(buf[:n], zero[:n]) {
				if _, serr := f.Seek(int64(n), io.SeekCurrent); serr != nil {
					return total, serr
				}
			} else if _, werr := f.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return total, err
		}
	}
	// A trailing hole needs the size set explicitly.
	return total, f.Truncate(total)
}

// fill reads into buf until it is full or r fails; io.EOF means r ended
// cleanly, any other error is r's own.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// HashingWriter counts and hashes what passes through it.
// HashingWriter hashes and counts what is written to it.
type HashingWriter struct {
	h hash.Hash
	n int64
}

// NewHashingWriter returns a sha256 HashingWriter.
func NewHashingWriter() *HashingWriter { return &HashingWriter{h: sha256.New()} }

// Write implements io.Writer.
func (w *HashingWriter) Write(p []byte) (int, error) {
	w.h.Write(p)
	w.n += int64(len(p))
	return len(p), nil
}

// Sum is the hash and size of everything written.
func (w *HashingWriter) Sum() FileSum {
	return FileSum{SHA256: hex.EncodeToString(w.h.Sum(nil)), Size: w.n}
}

// IsTempName reports whether a bundle file name is one of this package's temporaries.
func IsTempName(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-")
}

// SameData reports whether two files have the same bytes, comparing only
// their data extents when both have the same hole layout (cheap for sparse
// disk images) and every byte otherwise. Errors count as different.
func SameData(a, b string) bool {
	fa, err := os.Open(a)
	if err != nil {
		return false
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false
	}
	defer fb.Close()
	ia, erra := fa.Stat()
	ib, errb := fb.Stat()
	if erra != nil || errb != nil || ia.Size() != ib.Size() {
		return false
	}
	ea, erra := dataExtents(fa, ia.Size())
	eb, errb := dataExtents(fb, ib.Size())
	if erra != nil || errb != nil || !slices.Equal(ea, eb) {
		return equalFiles(a, b)
	}
	bufA, bufB := make([]byte, 1<<20), make([]byte, 1<<20)
	for _, e := range ea {
		for off := e[0]; off < e[1]; {
			n := int(min(int64(len(bufA)), e[1]-off))
			if _, err := fa.ReadAt(bufA[:n], off); err != nil {
				return false
			}
			if _, err := fb.ReadAt(bufB[:n], off); err != nil {
				return false
			}
			if !bytes.Equal(bufA[:n], bufB[:n]) {
				return false
			}
			off += int64(n)
		}
	}
	return true
}

// dataExtents lists the [start, end) ranges of f that hold data, per
// SEEK_DATA and SEEK_HOLE. A file system without hole support reports one
// extent covering the file.
func dataExtents(f *os.File, size int64) ([][2]int64, error) {
	var ext [][2]int64
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return nil, err
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		ext = append(ext, [2]int64{d, h})
		off = h
	}
	return ext, nil
}

// SumCacheFile remembers the sums of a bundle's files by stat identity, so
// that a rebuild need not rehash unchanged multi-gigabyte images.
const SumCacheFile = ".sums.json"

// StatSum is a file's stat identity and the sum it had with that identity.
type StatSum struct {
	Ino    uint64 `json:"ino"`
	Size   int64  `json:"size"`
	Mtime  int64  `json:"mtime_ns"`
	Ctime  int64  `json:"ctime_ns"`
	SHA256 string `json:"sha256"`
}

// statIdentity returns path's stat identity; any write, rename or chmod changes it.
func statIdentity(path string) (StatSum, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return StatSum{}, false
	}
	return StatSum{
		Ino:   st.Ino,
		Size:  st.Size,
		Mtime: st.Mtim.Nano(),
		Ctime: st.Ctim.Nano(),
	}, true
}

// LoadSumCache reads dir's sum cache; a missing or broken one is empty.
func LoadSumCache(dir string) map[string]StatSum {
	m := map[string]StatSum{}
	data, err := os.ReadFile(filepath.Join(dir, SumCacheFile))
	if err == nil {
		json.Unmarshal(data, &m)
	}
	return m
}

// SaveSumCache records the current stat identity of every file in sums.
func SaveSumCache(dir string, sums map[string]FileSum) error {
	m := map[string]StatSum{}
	for rel, sum := range sums {
		if id, ok := statIdentity(filepath.Join(dir, rel)); ok && id.Size == sum.Size {
			id.SHA256 = sum.SHA256
			m[rel] = id
		}
	}
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, SumCacheFile), data, 0o644)
}

// CachedSum returns the remembered sum of dir/rel if the file is unchanged since.
func CachedSum(cache map[string]StatSum, dir, rel string) (FileSum, bool) {
	c, ok := cache[rel]
	if !ok || c.SHA256 == "" {
		return FileSum{}, false
	}
	id, ok := statIdentity(filepath.Join(dir, rel))
	if !ok {
		return FileSum{}, false
	}
	id.SHA256 = c.SHA256
	if id != c {
		return FileSum{}, false
	}
	return FileSum{SHA256: c.SHA256, Size: c.Size}, true
}

// the tree even through other links.
func SafeLinkTarget(target string) bool {
	if target == "" || filepath.IsAbs(target) {
		return false
	}
	return !slices.Contains(strings.Split(filepath.ToSlash(target), "/"), "..")
}
