package web

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/units"
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

// buildForm is the build-image form's values, kept when a build is refused.
type buildForm struct {
	Name string
	Kind string
	Size string
}

// buildKinds are the recipes 'banger image build' knows.
var buildKinds = []string{"docker", "minimal"}

func (f buildForm) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"build_name": f.Name, "build_kind": f.Kind, "build_size": f.Size} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

// imagesPage is the image list with the build and register forms.
type imagesPage struct {
	base
	Images []rpc.Image
	Form   registerForm
	Build  buildForm
	Kinds  []string
	Ops    []opView
	// Picker tells whether the file picker has somewhere to go.
	Picker bool
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
	q := r.URL.Query()
	v := imagesPage{base: newBase(w, r, "Images", "images"), Images: imgs, Form: readRegisterForm(q),
		Build: buildForm{Name: q.Get("build_name"), Kind: q.Get("build_kind"), Size: q.Get("build_size")},
		Kinds: buildKinds, Ops: s.ops.running("build"), Picker: len(s.roots()) > 0}
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
		}
		req := rpc.RegisterImageRequest{Name: f.Name}
		var err error
		if req.Rootfs, err = s.checkImageFile(f.Rootfs, "--rootfs"); err != nil {
			return fmt.Errorf("registering image %s: %w", f.Name, err)
		}
		if f.WorkSeed != "" {
			if req.WorkSeed, err = s.checkImageFile(f.WorkSeed, "--work-seed"); err != nil {
				return fmt.Errorf("registering image %s: %w", f.Name, err)
			}
		}
		if _, err := s.Client.RegisterImage(r.Context(), req); err != nil {
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

// buildImage starts 'banger image build' in bangerd and answers 303 to
// the operation's page, whose stages update live. A request bangerd
// refuses at once (a name that exists, a bad size) goes back to the form.
func (s *Server) buildImage(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.done(w, r, "/images", "", inputErrorf("building image: reading the form: %v", err), nil)
		return
	}
	f := buildForm{
		Name: strings.TrimSpace(r.PostForm.Get("name")),
		Kind: strings.TrimSpace(r.PostForm.Get("kind")),
		Size: strings.TrimSpace(r.PostForm.Get("size")),
	}
	back := "/images?" + f.values().Encode()
	switch {
	case f.Name == "":
		s.done(w, r, back, "", inputErrorf("building image: it needs a name, for example web"), nil)
		return
	case f.Kind != "" && !slices.Contains(buildKinds, f.Kind):
		s.done(w, r, back, "", inputErrorf("building image %s: the kind must be docker or minimal, got %q", f.Name, f.Kind), nil)
		return
	}
	if v, ok := s.ops.runningOf("build", f.Name); ok {
		s.done(w, r, back, "", conflictf("building image %s: a build of %s is already running (for %s): watch it at %s",
			f.Name, f.Name, units.Duration(units.MS(v.ElapsedMS)), v.URL), nil)
		return
	}
	req := rpc.BuildImageRequest{Name: f.Name, Kind: f.Kind, Size: f.Size}
	o, err := s.launch("build", f.Name, acceptWait, func(ctx context.Context, emit func(rpc.Event)) (opResult, error) {
		img, err := s.Client.BuildImage(ctx, req, emit)
		return opResult{Image: img}, err
	})
	if err != nil {
		s.done(w, r, back, "", err, nil)
		return
	}
	s.answerOp(w, r, o)
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
	Roots     []fileEntry  `json:"roots"`
	Field     string       `json:"field"`
	Entries   []fileEntry  `json:"entries"`
	More      int          `json:"more,omitempty"`
	Form      registerForm `json:"form"`
	CancelURL string       `json:"-"`
}

// files lists directories and *.ext4 / *.img files under one of the
// picker's roots, for the register form. Nothing is uploaded: the chosen
// path goes back into the form.
func (s *Server) files(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	form := readRegisterForm(q)
	field := q.Get("field")
	if field != "work_seed" {
		field = "rootfs"
	}
	roots := s.roots()
	dir := q.Get("dir")
	if dir == "" && len(roots) > 0 {
		// Start beside the field's current value when it names a directory we may show.
		cur := form.Rootfs
		if field == "work_seed" {
			cur = form.WorkSeed
		}
		dir = roots[0]
		if filepath.IsAbs(cur) {
			if d, err := s.cleanDir(filepath.Dir(cur)); err == nil {
				if st, err := os.Stat(d); err == nil && st.IsDir() {
					dir = d
				}
			}
		}
	}
	v := filesPage{Field: field, Form: form, CancelURL: "/images?" + form.values().Encode()}
	for _, root := range roots {
		v.Roots = append(v.Roots, fileEntry{Name: root, Path: root, Dir: true, URL: pickerURL(root, field, form)})
	}
	status := http.StatusOK
	var err error
	if len(roots) == 0 {
		err = inputErrorf("the file picker has no directories to show: set web_file_roots in banger's config, or register images with 'banger image register'")
	}
	var entries []fileEntry
	var more int
	if err == nil {
		entries, more, v.Dir, err = s.listDir(dir)
	}
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
		if p := filepath.Dir(v.Dir); p != v.Dir && s.rootOf(p) != "" && s.rootOf(p) == s.rootOf(v.Dir) {
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

// roots returns the picker's roots, cleaned, absolute and deduplicated.
func (s *Server) roots() []string {
	var out []string
	for _, r := range s.FileRoots {
		if r == "" || !filepath.IsAbs(r) || strings.ContainsRune(r, 0) {
			continue
		}
		if r = filepath.Clean(r); !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// rootOf returns the root that clean path p lies in, or "".
func (s *Server) rootOf(p string) string {
	for _, root := range s.roots() {
		if within(root, p) {
			return root
		}
	}
	return ""
}

// cleanPath validates a path the picker is asked about: absolute, without
// ".." elements, inside one of the roots. It returns it cleaned.
func (s *Server) cleanPath(p, what string) (string, error) {
	switch {
	case strings.ContainsRune(p, 0):
		return "", inputErrorf("%s %q: the path contains a NUL byte", what, p)
	case !filepath.IsAbs(p):
		return "", inputErrorf("%s %q: the file picker needs an absolute path, such as %s", what, p, strings.Join(s.roots(), " or "))
	case slices.Contains(strings.Split(filepath.ToSlash(p), "/"), ".."):
		return "", inputErrorf("%s %q: paths with \"..\" are refused; give the directory itself", what, p)
	}
	c := filepath.Clean(p)
	if s.rootOf(c) == "" {
		return "", inputErrorf("%s %s: the web UI stays inside %s (web_file_roots)", what, c, strings.Join(s.roots(), " and "))
	}
	return c, nil
}

func (s *Server) cleanDir(dir string) (string, error) { return s.cleanPath(dir, "listing") }

// realWithin resolves the symlinks of clean path p (inside root) and
// checks that the result is still inside a root: a symlink never leads
// the UI out. It returns the resolved path.
func (s *Server) realWithin(p string) (string, error) {
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", err
	}
	for _, root := range s.roots() {
		if rr, err := filepath.EvalSymlinks(root); err == nil && within(rr, real) {
			return real, nil
		}
	}
	return "", inputErrorf("%s leads to %s, outside the directories the web UI may use (%s)", p, real, strings.Join(s.roots(), " and "))
}

// within reports whether path p is root or below it; both must be clean.
func within(root, p string) bool {
	if root == "/" || p == root {
		return strings.HasPrefix(p, "/")
	}
	return strings.HasPrefix(p, root+"/")
}

// readable reports whether bangerd's user may read p (and, for a
// directory, enter it): the picker never shows what its owner could not
// read. That is bangerd's user's access, not the browser's: every session
// comes from a 'banger ui' link, which only someone who can read bangerd's
// 0600 login key can make, for bangerd's own user or (as root, under sudo)
// for the user who ran sudo, who can read what root reads anyway.
func readable(p string, dir bool) bool {
	mode := uint32(unix.R_OK)
	if dir {
		mode |= unix.X_OK
	}
	return unix.Access(p, mode) == nil
}

// listDir lists the directories and disk images of dir, sorted, directories
// first; more counts the entries left out past maxEntries.
func (s *Server) listDir(dir string) (entries []fileEntry, more int, cleaned string, err error) {
	d, err := s.cleanDir(dir)
	if err != nil {
		return nil, 0, dir, err
	}
	real, err := s.realWithin(d)
	if err != nil {
		return nil, 0, d, fmt.Errorf("listing %s: %w", d, err)
	}
	if st, err := os.Stat(real); err != nil {
		return nil, 0, d, fmt.Errorf("listing %s: %w", d, err)
	} else if !st.IsDir() {
		return nil, 0, d, inputErrorf("listing %s: not a directory", d)
	}
	if !readable(real, true) {
		return nil, 0, d, fmt.Errorf("listing %s: %w", d, fs.ErrPermission)
	}
	des, err := os.ReadDir(real)
	if err != nil {
		return nil, 0, d, fmt.Errorf("listing %s: %w", d, err)
	}
	for _, de := range des {
		p := filepath.Join(d, de.Name())
		target := p
		if de.Type()&fs.ModeSymlink != 0 {
			if target, err = s.realWithin(p); err != nil {
				continue // a link out of the roots is not shown
			}
		}
		info, err := os.Stat(target)
		if err != nil {
			continue
		}
		switch {
		case info.IsDir() && readable(target, true):
			entries = append(entries, fileEntry{Name: de.Name(), Path: p, Dir: true})
		case info.Mode().IsRegular() && isImageFile(de.Name()) && readable(target, false):
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

// checkImageFile validates a path the register form names: inside a root
// (symlinks resolved), a regular file that bangerd's user can read. It
// returns the resolved path, which is what gets registered.
func (s *Server) checkImageFile(p, flag string) (string, error) {
	c, err := s.cleanPath(p, flag)
	if err != nil {
		return "", err
	}
	real, err := s.realWithin(c)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", inputErrorf("%s %s: no such file", flag, c)
		}
		var ie *inputError
		if errors.As(err, &ie) {
			return "", inputErrorf("%s %v", flag, err)
		}
		return "", inputErrorf("%s %s: %v", flag, c, err)
	}
	// O_NONBLOCK: opening a FIFO must not hang the UI.
	f, err := os.OpenFile(real, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return "", inputErrorf("%s %s: %v", flag, c, errors.Unwrap(err))
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return "", inputErrorf("%s %s: not a regular file", flag, c)
	}
	return real, nil
}

func isImageFile(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	return ext == ".ext4" || ext == ".img"
}
