// Package login mints and checks the web UI's one-time login links and its session cookies, all keyed by a per-daemon secret file.
package login

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/banger/banger/internal/atomicfile"
)

// FileName is the secret file's name in bangerd's state directory.
const FileName = "web-login.json"

// Lifetimes.
const (
	// TokenTTL is how long a login link works (once).
	TokenTTL = 5 * time.Minute
	// SessionTTL is how long a browser stays logged in.
	SessionTTL = 7 * 24 * time.Hour
)

// Remote is the uid of a browser on another host: a link minted for Remote
// works only from a connection no local socket owns.
const Remote = -1

// File is the secret file bangerd writes for 'banger ui' (mode 0600).
type File struct {
	// URL is where the web UI answers, without a path.
	URL string `json:"url"`
	// Listen is the address the UI listens on.
	Listen string `json:"listen"`
	// Auth is the config's web_auth: "owner" or "login".
	Auth string `json:"auth"`
	// PID is the bangerd that serves it.
	PID int `json:"pid"`
	// Key signs links and cookies. It is kept across restarts, so a
	// browser stays logged in; delete the file to log every browser out.
	Key []byte `json:"key"`
	// Instance changes at every start, so links of an earlier bangerd die.
	Instance []byte `json:"instance"`
}

// Setup writes path for a starting UI with f's URL, Listen, Auth and PID,
// keeping the key of a sound existing file, and returns what it wrote.
func Setup(path string, f File) (*File, error) {
	if old, err := Read(path); err == nil && len(old.Key) == 32 {
		f.Key = old.Key
	} else {
		f.Key = random(32)
	}
	f.Instance = random(16)
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", path, err)
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("writing the web UI's login secret: %w", err)
	}
	return &f, nil
}

// Read reads the secret file, refusing one that others could read or that
// belongs to someone else.
func Read(path string) (*File, error) {
	fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("reading the web UI's login secret: %w", err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	switch {
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("reading %s: not a regular file: remove it and restart bangerd", path)
	case st.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("reading %s: its mode %04o lets others read it: remove it and restart bangerd, which writes a new one", path, st.Mode().Perm())
	case sys == nil || int(sys.Uid) != os.Geteuid():
		return nil, fmt.Errorf("reading %s: it does not belong to uid %d: remove it and restart bangerd", path, os.Geteuid())
	case st.Size() > 64<<10:
		return nil, fmt.Errorf("reading %s: %d bytes is too big for a login secret: remove it and restart bangerd", path, st.Size())
	}
	var f File
	dec := json.NewDecoder(fh)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("reading %s: %w: remove it and restart bangerd", path, err)
	}
	if len(f.Key) != 32 || len(f.Instance) != 16 {
		return nil, fmt.Errorf("reading %s: it has no sound key: remove it and restart bangerd", path)
	}
	return &f, nil
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails on Linux
	return b
}

var b64 = base64.RawURLEncoding

// Token layout: version, nonce, uid, expiry (unix seconds), MAC.
const (
	tokenVersion = 1
	nonceLen     = 16
	tokenBody    = 1 + nonceLen + 4 + 8
	macLen       = sha256.Size
	sessionBody  = 1 + 4 + 8
)

// Token mints a login link's token for the browser of uid (or Remote),
// valid once until now+TokenTTL.
func (f *File) Token(uid int, now time.Time) string {
	b := make([]byte, tokenBody, tokenBody+macLen)
	b[0] = tokenVersion
	copy(b[1:], random(nonceLen))
	binary.BigEndian.PutUint32(b[1+nonceLen:], uint32(int32(uid)))
	binary.BigEndian.PutUint64(b[1+nonceLen+4:], uint64(now.Add(TokenTTL).Unix()))
	return b64.EncodeToString(append(b, f.mac("login", b)...))
}

// mac signs body for purpose; a login MAC also covers the instance.
func (f *File) mac(purpose string, body []byte) []byte {
	h := hmac.New(sha256.New, f.Key)
	h.Write([]byte("banger web " + purpose + " v1\x00"))
	if purpose == "login" {
		h.Write(f.Instance)
	}
	h.Write(body)
	return h.Sum(nil)
}

// Checker redeems login tokens, each once, and checks session cookies.
type Checker struct {
	f    *File
	mu   sync.Mutex
	used map[string]time.Time // redeemed nonces, until they expire
}

// NewChecker checks tokens and cookies signed with f's key.
func NewChecker(f *File) *Checker {
	return &Checker{f: f, used: map[string]time.Time{}}
}

// maxUsed bounds the redeemed-token memory; only the owner mints tokens.
const maxUsed = 4096

// Errors of Redeem and Session; each message says what to do.
var (
	ErrBadToken     = errors.New("this login link is not valid here: run 'banger ui' again and open the new link")
	ErrExpired      = errors.New("this login link has expired (links work for 5 minutes): run 'banger ui' again")
	ErrUsed         = errors.New("this login link has been used already (each works once): run 'banger ui' again")
	ErrOtherUser    = errors.New("this login link was made for another user")
	ErrBadSession   = errors.New("the login cookie is not valid: log in again with the link 'banger ui' prints")
	ErrSessionOver  = errors.New("the login has expired: log in again with the link 'banger ui' prints")
	ErrSessionOwner = errors.New("the login cookie belongs to another user")
)

// Redeem checks a login token presented by the browser of peerUID (Remote
// when no local socket owns the connection) and returns the session
// cookie's value, bound to that peer, and its expiry. Each token works
// once.
func (c *Checker) Redeem(token string, peerUID int, now time.Time) (string, time.Time, error) {
	b, err := b64.DecodeString(token)
	if err != nil || len(b) != tokenBody+macLen || b[0] != tokenVersion {
		return "", time.Time{}, ErrBadToken
	}
	body, sum := b[:tokenBody], b[tokenBody:]
	if !hmac.Equal(sum, c.f.mac("login", body)) {
		return "", time.Time{}, ErrBadToken
	}
	uid := int(int32(binary.BigEndian.Uint32(body[1+nonceLen:])))
	exp := time.Unix(int64(binary.BigEndian.Uint64(body[1+nonceLen+4:])), 0)
	if now.After(exp) {
		return "", time.Time{}, ErrExpired
	}
	if uid != peerUID {
		return "", time.Time{}, fmt.Errorf("%w (%s), not for this connection's %s: run 'banger ui' as that user, or under sudo from it", ErrOtherUser, who(uid), who(peerUID))
	}
	nonce := string(body[1 : 1+nonceLen])
	c.mu.Lock()
	for n, e := range c.used {
		if now.After(e) {
			delete(c.used, n)
		}
	}
	_, seen := c.used[nonce]
	full := len(c.used) >= maxUsed
	if !seen && !full {
		c.used[nonce] = exp
	}
	c.mu.Unlock()
	switch {
	case seen:
		return "", time.Time{}, ErrUsed
	case full:
		return "", time.Time{}, errors.New("too many logins in the last minutes: wait a few minutes, then run 'banger ui' again")
	}
	return c.session(peerUID, now.Add(SessionTTL)), now.Add(SessionTTL), nil
}

func who(uid int) string {
	if uid == Remote {
		return "a browser on another host"
	}
	return fmt.Sprintf("uid %d", uid)
}

func (c *Checker) session(uid int, exp time.Time) string {
	b := make([]byte, sessionBody, sessionBody+macLen)
	b[0] = tokenVersion
	binary.BigEndian.PutUint32(b[1:], uint32(int32(uid)))
	binary.BigEndian.PutUint64(b[5:], uint64(exp.Unix()))
	return b64.EncodeToString(append(b, c.f.mac("session", b)...))
}

// Session checks a session cookie's value presented by peerUID.
func (c *Checker) Session(value string, peerUID int, now time.Time) error {
	b, err := b64.DecodeString(value)
	if err != nil || len(b) != sessionBody+macLen || b[0] != tokenVersion {
		return ErrBadSession
	}
	body, sum := b[:sessionBody], b[sessionBody:]
	if !hmac.Equal(sum, c.f.mac("session", body)) {
		return ErrBadSession
	}
	if uid := int(int32(binary.BigEndian.Uint32(body[1:]))); uid != peerUID {
		return fmt.Errorf("%w (%s), not to this connection's %s", ErrSessionOwner, who(uid), who(peerUID))
	}
	if now.Unix() > int64(binary.BigEndian.Uint64(body[5:])) {
		return ErrSessionOver
	}
	return nil
}
