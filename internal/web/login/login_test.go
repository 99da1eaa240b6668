package login

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func setup(t *testing.T) (*File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), FileName)
	f, err := Setup(path, File{URL: "http://127.0.0.1:7777", Listen: "127.0.0.1:7777", Auth: "owner", PID: 42})
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return f, path
}

func TestSetupAndRead(t *testing.T) {
	f, path := setup(t)
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode = %v, %v, want 0600", st.Mode(), err)
	}
	got, err := Read(path)
	if err != nil || got.URL != f.URL || got.PID != 42 || !bytes.Equal(got.Key, f.Key) || !bytes.Equal(got.Instance, f.Instance) {
		t.Fatalf("Read = %+v, %v, want what Setup wrote", got, err)
	}
	// A restart keeps the key (browsers stay logged in) but not the instance.
	again, err := Setup(path, File{URL: f.URL, PID: 43})
	if err != nil || !bytes.Equal(again.Key, f.Key) || bytes.Equal(again.Instance, f.Instance) {
		t.Fatalf("second Setup = %+v, %v, want the same key and a new instance", again, err)
	}
	tok := f.Token(1000, time.Now())
	if _, _, err := NewChecker(again).Redeem(tok, 1000, time.Now()); !errors.Is(err, ErrBadToken) {
		t.Errorf("a link of the previous bangerd = %v, want ErrBadToken", err)
	}
	// A file others could read is refused, and Setup replaces its key.
	os.Chmod(path, 0o644)
	if _, err := Read(path); err == nil || !strings.Contains(err.Error(), "lets others read it") {
		t.Errorf("Read of a 0644 file = %v, want a refusal", err)
	}
	fresh, err := Setup(path, File{URL: f.URL})
	if err != nil || bytes.Equal(fresh.Key, f.Key) {
		t.Errorf("Setup over a 0644 file kept its key (%v)", err)
	}
	// Garbage and symlinks are refused.
	os.WriteFile(path, []byte(`{"key": 5}`), 0o600)
	if _, err := Read(path); err == nil {
		t.Errorf("Read of garbage succeeded")
	}
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(path, link)
	if _, err := Read(link); err == nil {
		t.Errorf("Read through a symlink succeeded")
	}
}

func TestRedeem(t *testing.T) {
	f, _ := setup(t)
	now := time.Unix(1_800_000_000, 0)
	c := NewChecker(f)
	tok := f.Token(1000, now)
	flip := []byte(tok)
	flip[10] ^= 1
	for _, tc := range []struct {
		name  string
		token string
		peer  int
		at    time.Time
		want  error
	}{
		{"garbage", "not-a-token", 1000, now, ErrBadToken},
		{"tampered", string(flip), 1000, now, ErrBadToken},
		{"another key", (&File{Key: bytes.Repeat([]byte{1}, 32), Instance: f.Instance}).Token(1000, now), 1000, now, ErrBadToken},
		{"another user", tok, 1001, now, ErrOtherUser},
		{"root is another user too", tok, 0, now, ErrOtherUser},
		{"a remote browser", tok, Remote, now, ErrOtherUser},
		{"expired", tok, 1000, now.Add(TokenTTL + time.Second), ErrExpired},
		{"right user", tok, 1000, now.Add(time.Minute), nil},
		{"used twice", tok, 1000, now.Add(time.Minute), ErrUsed},
	} {
		cookie, exp, err := c.Redeem(tc.token, tc.peer, tc.at)
		if !errors.Is(err, tc.want) {
			t.Errorf("Redeem(%s) = %q, %v, want %v", tc.name, cookie, err, tc.want)
			continue
		}
		if err == nil {
			if !exp.Equal(tc.at.Add(SessionTTL)) {
				t.Errorf("Redeem(%s) expiry = %v, want %v", tc.name, exp, tc.at.Add(SessionTTL))
			}
			if err := c.Session(cookie, 1000, tc.at); err != nil {
				t.Errorf("Session of a fresh cookie = %v", err)
			}
		}
	}
	remote := f.Token(Remote, now)
	if _, _, err := c.Redeem(remote, 1000, now); !errors.Is(err, ErrOtherUser) {
		t.Errorf("a local user redeeming a remote link = %v, want ErrOtherUser", err)
	}
	if _, _, err := c.Redeem(remote, Remote, now); err != nil {
		t.Errorf("a remote browser redeeming a remote link = %v", err)
	}
}

func TestSession(t *testing.T) {
	f, _ := setup(t)
	now := time.Unix(1_800_000_000, 0)
	c := NewChecker(f)
	cookie, _, err := c.Redeem(f.Token(1000, now), 1000, now)
	if err != nil {
		t.Fatal(err)
	}
	other := NewChecker(&File{Key: bytes.Repeat([]byte{2}, 32), Instance: f.Instance})
	flip := []byte(cookie)
	flip[3] ^= 1
	for _, tc := range []struct {
		name   string
		c      *Checker
		cookie string
		peer   int
		at     time.Time
		want   error
	}{
		{"owner of the cookie", c, cookie, 1000, now, nil},
		{"after a restart", NewChecker(&File{Key: f.Key, Instance: []byte("another instance")}), cookie, 1000, now, nil},
		{"stolen by another user", c, cookie, 1001, now, ErrSessionOwner},
		{"used from another host", c, cookie, Remote, now, ErrSessionOwner},
		{"expired", c, cookie, 1000, now.Add(SessionTTL + time.Second), ErrSessionOver},
		{"tampered", c, string(flip), 1000, now, ErrBadSession},
		{"another key", other, cookie, 1000, now, ErrBadSession},
		{"a login token is no cookie", c, f.Token(1000, now), 1000, now, ErrBadSession},
		{"empty", c, "", 1000, now, ErrBadSession},
	} {
		if err := tc.c.Session(tc.cookie, tc.peer, tc.at); !errors.Is(err, tc.want) {
			t.Errorf("Session(%s) = %v, want %v", tc.name, err, tc.want)
		}
	}
}
