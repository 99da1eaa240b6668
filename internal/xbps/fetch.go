package xbps

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultMirror is Void Linux's public mirror, used when VOID_MIRROR is unset.
const DefaultMirror = "https://repo-default.voidlinux.org"

// MirrorEnv names the environment variable that overrides DefaultMirror.
const MirrorEnv = "VOID_MIRROR"

// DefaultArch is the glibc x86-64 architecture.
const DefaultArch = "x86_64"

// maxRepodataSize bounds the compressed repodata archive.
const maxRepodataSize = 128 << 20

// maxPackageSize bounds one .xbps file, whatever the index says.
const maxPackageSize = 4 << 30

// Repo is one xbps repository: <mirror>/current for glibc x86-64.
type Repo struct {
	// URL is the repository's base URL (file://, http:// or https://).
	URL string
	// Arch is the architecture whose repodata is read; default DefaultArch.
	Arch string
	// CacheDir keeps verified packages as <sha256>.xbps.
	CacheDir string
	// Client fetches http(s) URLs; default a client with a 30 s connect timeout.
	Client *http.Client
}

// MirrorFromEnv returns $VOID_MIRROR, or DefaultMirror when it is unset.
func MirrorFromEnv() string {
	if m := strings.TrimSpace(os.Getenv(MirrorEnv)); m != "" {
		return m
	}
	return DefaultMirror
}

// NewRepo returns the repository of a Void mirror: the mirror's "current"
// directory, where Void keeps the glibc x86-64 packages.
func NewRepo(mirror, cacheDir string) (*Repo, error) {
	u, err := url.Parse(mirror)
	if err != nil {
		return nil, fmt.Errorf("using Void mirror %q: %w: set %s to a file://, http:// or https:// URL", mirror, err, MirrorEnv)
	}
	switch u.Scheme {
	case "file", "http", "https":
	default:
		return nil, fmt.Errorf("using Void mirror %q: scheme %q is not supported: set %s to a file://, http:// or https:// URL", mirror, u.Scheme, MirrorEnv)
	}
	if u.Scheme == "file" && (u.Host != "" && u.Host != "localhost" || !filepath.IsAbs(u.Path)) {
		return nil, fmt.Errorf("using Void mirror %q: a file URL needs an absolute path (file:///srv/void)", mirror)
	}
	if cacheDir == "" {
		return nil, errors.New("using Void mirror: no cache directory given")
	}
	return &Repo{URL: strings.TrimSuffix(mirror, "/") + "/current", Arch: DefaultArch, CacheDir: cacheDir}, nil
}

func (r *Repo) arch() string {
	if r.Arch == "" {
		return DefaultArch
	}
	return r.Arch
}

func (r *Repo) client() *http.Client {
	if r.Client != nil {
		return r.Client
	}
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
	}}
}

// open returns the body of rawURL, which must lie in the repository.
func (r *Repo) open(ctx context.Context, rawURL string) (io.ReadCloser, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme == "file" {
		f, err := os.Open(u.Path)
		if err != nil {
			return nil, err
		}
		return f, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.client().Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("HTTP status %s", resp.Status)
	}
	return resp.Body, nil
}

// RepodataURL is the URL of the repository's index archive.
func (r *Repo) RepodataURL() string {
	return r.URL + "/" + r.arch() + "-repodata"
}

// Index fetches and parses the repository's <arch>-repodata.
func (r *Repo) Index(ctx context.Context) (*Index, error) {
	u := r.RepodataURL()
	body, err := r.open(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w: check %s (default %s) and that the mirror is reachable", u, err, MirrorEnv, DefaultMirror)
	}
	defer body.Close()
	lr := &io.LimitedReader{R: body, N: maxRepodataSize + 1}
	idx, err := ParseRepodata(lr)
	if lr.N <= 0 {
		return nil, fmt.Errorf("fetching %s: more than %d bytes", u, maxRepodataSize)
	}
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w", u, err)
	}
	return idx, nil
}

// PackageURL is the URL of p's .xbps file.
func (r *Repo) PackageURL(p *Package) string {
	return r.URL + "/" + url.PathEscape(p.Filename())
}

// Fetch returns the path of p's .xbps file in the cache, downloading it
// first when it is not there. The file is checked against the index's size
// and sha256 as it is written, and a file that does not match is removed;
// a cached file is checked again before it is returned.
func (r *Repo) Fetch(ctx context.Context, p *Package) (string, error) {
	if p.Size > maxPackageSize {
		return "", fmt.Errorf("fetching %s: the index says %d bytes, more than the %d allowed", p.Pkgver, p.Size, int64(maxPackageSize))
	}
	final := filepath.Join(r.CacheDir, p.SHA256+".xbps")
	if err := Verify(final, p); err == nil {
		return final, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		os.Remove(final) // a damaged cache entry
	}
	if err := os.MkdirAll(r.CacheDir, 0o755); err != nil {
		return "", fmt.Errorf("fetching %s: creating cache %s: %w", p.Pkgver, r.CacheDir, err)
	}
	u := r.PackageURL(p)
	body, err := r.open(ctx, u)
	if err != nil {
		return "", fmt.Errorf("fetching %s from %s: %w: check %s and that the mirror is reachable", p.Pkgver, u, err, MirrorEnv)
	}
	defer body.Close()
	tmp, err := os.CreateTemp(r.CacheDir, ".fetch-*.xbps")
	if err != nil {
		return "", fmt.Errorf("fetching %s: %w", p.Pkgver, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(body, p.Size+1))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("fetching %s from %s: %w", p.Pkgver, u, err)
	}
	if err := checkSum(p, n, h.Sum(nil)); err != nil {
		return "", fmt.Errorf("fetching %s from %s: %w", p.Pkgver, u, err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return "", fmt.Errorf("fetching %s: %w", p.Pkgver, err)
	}
	return final, nil
}

// ChecksumError is a package file that does not match the index.
type ChecksumError struct {
	Pkgver    string
	What      string // "size" or "sha256"
	Got, Want string
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("%s of %s is %s, the index says %s: the file is damaged or was replaced; refusing it", e.What, e.Pkgver, e.Got, e.Want)
}

func checkSum(p *Package, n int64, sum []byte) error {
	if n != p.Size {
		return &ChecksumError{Pkgver: p.Pkgver, What: "size", Got: fmt.Sprint(n), Want: fmt.Sprint(p.Size)}
	}
	if got := hex.EncodeToString(sum); got != p.SHA256 {
		return &ChecksumError{Pkgver: p.Pkgver, What: "sha256", Got: got, Want: p.SHA256}
	}
	return nil
}

// Verify checks the file at path against p's size and sha256.
func Verify(path string, p *Package) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return verifyOpen(f, p)
}

// verifyOpen checks f from its start and leaves it at its start.
func verifyOpen(f *os.File, p *Package) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", f.Name())
	}
	if fi.Size() != p.Size {
		return &ChecksumError{Pkgver: p.Pkgver, What: "size", Got: fmt.Sprint(fi.Size()), Want: fmt.Sprint(p.Size)}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, p.Size+1))
	if err != nil {
		return err
	}
	if err := checkSum(p, n, h.Sum(nil)); err != nil {
		return err
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}
