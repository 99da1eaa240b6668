package web

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/banger/banger/internal/rpc"
)

// maxEntries bounds a file picker listing.
const maxEntries = 2000

// registerForm is the register-image form's values, carried through the
// file picker so choosing a file keeps what was typed.
type registerForm struct {
	Name     string `json:"name"`
	Rootfs   string `json:"rootfs"`
	WorkSeed string `json:"work_seed"`
}

func readRegisterForm(v url.Values) registerForm {
	return registerForm{
		Name:     strings.TrimSpace(v.Get("name")),
		Rootfs:   strings.TrimSpace(v.Get("rootfs")),
		WorkSeed: strings.TrimSpace(v.Get("work_seed")),
	}
}

func (f registerForm) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"name": f.Name, "rootfs": f.Rootfs, "work_seed": f.WorkSeed} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

// imagesPage is the image list with the register form.
type imagesPage struct {
	base
	Images []rpc.Image
	Form   registerForm
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	imgs, err := s.Client.ListImages(r.Context())
	if err != nil {
		err = fmt.Errorf("listing images: %w", err)
	}
	if wantsJSON(r) {
		if err != nil {
			s.fail(w, r, statusOf(err), err)
			return
		}
		if imgs == nil {
			imgs = []rpc.Image{}
		}
		writeJSON(w, http.StatusOK, imgs)
		return
	}
	slices.SortFunc(imgs, func(a, b rpc.Image) int { return strings.Compare(a.Name, b.Name) })
	v := imagesPage{base: newBase(w, r, "Images", "images"), Images: imgs, Form: readRegisterForm(r.URL.Query())}
	status := http.StatusOK
	if err != nil {
		v.addError(err)
		status = statusOf(err)
	}
	s.render(w, status, "images", v)
}

func (s *Server) registerImage(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.done(w, r, "/images", "", inputErrorf("registering image: reading the form: %v", err), nil)
		return
	}
	f := readRegisterForm(r.PostForm)
	err := func() error {
		switch {
		case f.Name == "":
			return inputErrorf("registering image: it needs a name")
		case f.Rootfs == "":
			return inputErrorf("registering image %s: choose its root filesystem (an ext4 file on this host)", f.Name)
		case !filepath.IsAbs(f.Rootfs):
			return inputErrorf("registering image %s: the rootfs path must be absolute, got %q", f.Name, f.Rootfs)
		case f.WorkSeed != "" && !filepath.IsAbs(f.WorkSeed):
			return inputErrorf("registering image %s: the work-seed path must be absolute, got %q", f.Name, f.WorkSeed)
		}
		_, err := s.Client.RegisterImage(r.Context(), rpc.RegisterImageRequest{Name: f.Name, Rootfs: filepath.Clean(f.Rootfs), WorkSeed: cleanOrEmpty(f.WorkSeed)})
		if err != nil {
			return fmt.Errorf("registering image %s: %w", f.Name, err)
		}
		return nil
	}()
	to := "/images"
	if err != nil {
		to = "/images?" + f.values().Encode() // keep what was typed
	}
	s.done(w, r, to, "image "+f.Name+" registered", err, nil)
}

func cleanOrEmpty(p string) string {
	if p == "" {
		return ""
	}
	return filepath.Clean(p)
}

func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	err := s.Client.DeleteImage(r.Context(), name)
	if err != nil {
		err = fmt.Errorf("deleting image %s: %w", name, err)
	}
	s.done(w, r, "/images", "image "+name+" forgotten (its files are left alone)", err, nil)
}

// fileEntry is one line of the file picker.
type fileEntry struct {
	Name string `json:"name"`
	Path string `json:"path"`
	Dir  bool   `json:"dir"`
	Size int64  `json:"size_bytes,omitempty"`
	// URL browses into a directory or chooses a file for the register form.
	URL string `json:"-"`
}

// filesPage is the server-side file picker.
type filesPage struct {
	base      `json:"-"`
	Dir       string       `json:"dir"`
	Parent    string       `json:"parent,omitempty"`
	ParentURL string       `json:"-"`
	Root      string       `json:"root"`
	Field     string       `json:"field"`
	Entries   []fileEntry  `json:"entries"`
	More      int          `json:"more,omitempty"`
	Form      registerForm `json:"form"`
	CancelURL string       `json:"-"`
}

// files lists directories and *.ext4 / *.img files under an absolute
// directory of the host, for the register form. Nothing is uploaded: the
// chosen path goes back into the form.
func (s *Server) files(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	form := readRegisterForm(q)
	field := q.Get("field")
	if field != "work_seed" {
		field = "rootfs"
	}
	dir := q.Get("dir")
	if dir == "" {
		// Start beside the field's current value when it names a directory we may show.
		cur := form.Rootfs
		if field == "work_seed" {
			cur = form.WorkSeed
		}
		dir = s.FileRoot
		if filepath.IsAbs(cur) {
			if d, err := s.cleanDir(filepath.Dir(cur)); err == nil {
				if st, err := os.Stat(d); err == nil && st.IsDir() {
					dir = d
				}
			}
		}
	}
	v := filesPage{Field: field, Form: form, Root: filepath.Clean(s.FileRoot), CancelURL: "/images?" + form.values().Encode()}
	status := http.StatusOK
	entries, more, d, err := s.listDir(dir)
	v.Dir = d
	if err != nil {
		status = http.StatusBadRequest
		switch {
		case errors.Is(err, fs.ErrNotExist):
			status = http.StatusNotFound
		case errors.Is(err, fs.ErrPermission):
			status = http.StatusForbidden
		}
	} else {
		v.More = more
		for _, e := range entries {
			if e.Dir {
				e.URL = pickerURL(e.Path, field, form)
			} else {
				chosen := form
				if field == "work_seed" {
					chosen.WorkSeed = e.Path
				} else {
					chosen.Rootfs = e.Path
				}
				e.URL = "/images?" + chosen.values().Encode()
			}
			v.Entries = append(v.Entries, e)
		}
		if p := filepath.Dir(d); p != d && within(v.Root, p) {
			v.Parent, v.ParentURL = p, pickerURL(p, field, form)
		}
	}
	if wantsJSON(r) {
		if err != nil {
			s.fail(w, r, status, err)
			return
		}
		if v.Entries == nil {
			v.Entries = []fileEntry{}
		}
		writeJSON(w, http.StatusOK, v)
		return
	}
	v.base = newBase(w, r, "Choose a file", "images")
	if err != nil {
		v.addError(err)
	}
	s.render(w, status, "files", v)
}

func pickerURL(dir, field string, form registerForm) string {
	q := form.values()
	q.Set("dir", dir)
	q.Set("field", field)
	return "/files?" + q.Encode()
}

// cleanDir validates a directory the picker is asked to list: absolute,
// without ".." elements, inside the picker's root. It returns it cleaned.
func (s *Server) cleanDir(dir string) (string, error) {
	root := filepath.Clean(s.FileRoot)
	switch {
	case strings.ContainsRune(dir, 0):
		return "", inputErrorf("listing %q: the path contains a NUL byte", dir)
	case !filepath.IsAbs(dir):
		return "", inputErrorf("listing %q: the file picker needs an absolute path, such as %s", dir, root)
	case slices.Contains(strings.Split(filepath.ToSlash(dir), "/"), ".."):
		return "", inputErrorf("listing %q: paths with \"..\" are refused; give the directory itself", dir)
	}
	d := filepath.Clean(dir)
	if !within(root, d) {
		return "", inputErrorf("listing %s: the file picker stays inside %s", d, root)
	}
	return d, nil
}

// within reports whether path p is root or below it; both must be clean.
func within(root, p string) bool {
	if root == "/" || p == root {
		return strings.HasPrefix(p, "/")
	}
	return strings.HasPrefix(p, root+"/")
}

// listDir lists the directories and disk images of dir, sorted, directories
// first; more counts the entries left out past maxEntries.
func (s *Server) listDir(dir string) (entries []fileEntry, more int, cleaned string, err error) {
	d, err := s.cleanDir(dir)
	if err != nil {
		return nil, 0, dir, err
	}
	// A symlink must not lead the picker out of its root.
	real, err := filepath.EvalSymlinks(d)
	if err != nil {
		return nil, 0, d, fmt.Errorf("listing %s: %w", d, err)
	}
	if realRoot, err := filepath.EvalSymlinks(filepath.Clean(s.FileRoot)); err == nil && !within(realRoot, real) {
		return nil, 0, d, inputErrorf("listing %s: it leads to %s, outside the file picker's root %s", d, real, s.FileRoot)
	}
	des, err := os.ReadDir(d)
	if err != nil {
		return nil, 0, d, fmt.Errorf("listing %s: %w", d, err)
	}
	for _, de := range des {
		p := filepath.Join(d, de.Name())
		info, err := os.Stat(p) // follows symlinks: a link to a directory is browsable
		if err != nil {
			continue
		}
		switch {
		case info.IsDir():
			entries = append(entries, fileEntry{Name: de.Name(), Path: p, Dir: true})
		case info.Mode().IsRegular() && isImageFile(de.Name()):
			entries = append(entries, fileEntry{Name: de.Name(), Path: p, Size: info.Size()})
		}
	}
	slices.SortFunc(entries, func(a, b fileEntry) int {
		if a.Dir != b.Dir {
			if a.Dir {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	if len(entries) > maxEntries {
		more = len(entries) - maxEntries
		entries = entries[:maxEntries]
	}
	return entries, more, d, nil
}

func isImageFile(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	return ext == ".ext4" || ext == ".img"
}
