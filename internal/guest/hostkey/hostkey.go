// Package hostkey makes a guest's SSH host key at first boot without running ssh-keygen.
package hostkey

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/atomicfile"
	"github.com/banger/banger/internal/guestconfig"
)

// DefaultPath is the ed25519 host key sshd is configured with in banger's
// images; the public key is DefaultPath + ".pub".
const DefaultPath = "/etc/ssh/ssh_host_ed25519_key"

// Comment is the host key's comment, as ssh-keygen would write it:
// root@ and the VM's hostname, taken from the ip= argument of cmdline
// (sshd starts beside the network setup, which may not have set the
// hostname yet), else the current hostname.
func Comment(cmdline string) string {
	if c, err := guestconfig.ParseNetwork(cmdline); err == nil && c.Hostname != "" {
		return "root@" + c.Hostname
	}
	host, _ := os.Hostname()
	return "root@" + host
}

// Ensure makes the ed25519 host key at path (mode 0600, OpenSSH format)
// and its public key at path.pub (0644), as ssh-keygen -t ed25519 -N ""
// would, unless path already holds a key; a missing public key is derived
// from the private one. It reports whether it wrote anything. Under TCG it
// saves the exec of a shell and ssh-keygen, about half a second of boot.
func Ensure(path, comment string) (bool, error) {
	pubPath := path + ".pub"
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
		if _, err := os.Stat(pubPath); err == nil {
			return false, nil
		}
		key, err := ssh.ParsePrivateKey(b)
		if err != nil {
			return false, fmt.Errorf("reading ssh host key %s to derive its public key: %w", path, err)
		}
		if err := atomicfile.Write(pubPath, publicLine(key.PublicKey(), comment), 0o644); err != nil {
			return false, err
		}
		return true, nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("reading ssh host key %s: %w", path, err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return false, fmt.Errorf("generating ssh host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return false, fmt.Errorf("encoding ssh host key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return false, fmt.Errorf("encoding ssh host public key: %w", err)
	}
	// The public key first: a key without its .pub is repaired above, a
	// .pub whose key is missing is replaced with the new pair.
	if err := atomicfile.Write(pubPath, publicLine(sshPub, comment), 0o644); err != nil {
		return false, err
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return false, err
	}
	return true, nil
}

// publicLine is the public key file's line: "ssh-ed25519 AAAA... comment".
func publicLine(k ssh.PublicKey, comment string) []byte {
	line := ssh.MarshalAuthorizedKey(k) // ends in a newline
	if comment == "" {
		return line
	}
	return append(line[:len(line)-1], []byte(" "+comment+"\n")...)
}
