package bundle

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/atomicfile"
)

// keyComment is the comment of every generated bundle key.
const keyComment = "banger-runtime"

// EnsureKey makes sure dir holds the key pair name and name.pub and returns
// the public key in authorized_keys form. An existing private key is kept (its
// .pub is rewritten from it when missing or stale); generated reports whether
// a new pair was made.
func EnsureKey(dir, name string) (authorized []byte, generated bool, err error) {
	privPath := filepath.Join(dir, name)
	pubPath := privPath + ".pub"
	data, err := os.ReadFile(privPath)
	switch {
	case err == nil:
		signer, perr := ssh.ParsePrivateKey(data)
		if perr != nil {
			return nil, false, fmt.Errorf("reading ssh key %s: %w: delete it (and its .pub) to get a new one", privPath, perr)
		}
		authorized = authorizedLine(signer.PublicKey())
	case errors.Is(err, fs.ErrNotExist):
		pub, priv, gerr := ed25519.GenerateKey(rand.Reader)
		if gerr != nil {
			return nil, false, fmt.Errorf("generating ssh key %s: %w", privPath, gerr)
		}
		block, merr := ssh.MarshalPrivateKey(priv, keyComment)
		if merr != nil {
			return nil, false, fmt.Errorf("encoding ssh key %s: %w", privPath, merr)
		}
		sshPub, perr := ssh.NewPublicKey(pub)
		if perr != nil {
			return nil, false, fmt.Errorf("encoding ssh key %s: %w", pubPath, perr)
		}
		if werr := atomicfile.Write(privPath, pem.EncodeToMemory(block), 0o600); werr != nil {
			return nil, false, fmt.Errorf("writing ssh key %s: %w", privPath, werr)
		}
		authorized, generated = authorizedLine(sshPub), true
	default:
		return nil, false, fmt.Errorf("reading ssh key %s: %w", privPath, err)
	}
	if old, rerr := os.ReadFile(pubPath); rerr != nil || !bytes.Equal(old, authorized) {
		if err := atomicfile.Write(pubPath, authorized, 0o644); err != nil {
			return nil, false, fmt.Errorf("writing ssh key %s: %w", pubPath, err)
		}
	}
	return authorized, generated, nil
}

// authorizedLine is "ssh-ed25519 AAAA... banger-runtime\n".
func authorizedLine(k ssh.PublicKey) []byte {
	line := bytes.TrimRight(ssh.MarshalAuthorizedKey(k), "\n")
	return append(append(line, " "+keyComment...), '\n')
}
