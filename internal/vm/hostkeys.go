package vm

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/atomicfile"
	"github.com/banger/banger/internal/store"
)

// Bounds on what a guest may report as its host keys: it is hostile input.
const (
	maxHostKeys   = 8
	maxHostKeyLen = 8 << 10
)

// hostKeyTypes are the key types a guest may report.
var hostKeyTypes = []string{
	ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoRSA,
}

// ParseHostKeys takes the host keys a guest reported and returns them as
// parsed keys. Each one must be exactly "TYPE BASE64 [COMMENT]" on one line,
// of an allowed type, whose blob parses as a key of that very type; anything
// else (options, @cert-authority, a second line, wildcards, junk) is
// refused, and so is a list of more than a handful.
func ParseHostKeys(reported []string) ([]ssh.PublicKey, error) {
	if len(reported) == 0 {
		return nil, errors.New("the guest reported no ssh host key")
	}
	if len(reported) > maxHostKeys {
		return nil, fmt.Errorf("the guest reported %d ssh host keys: at most %d are taken", len(reported), maxHostKeys)
	}
	var keys []ssh.PublicKey
	for i, line := range reported {
		if len(line) > maxHostKeyLen || strings.ContainsFunc(line, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return nil, fmt.Errorf("host key %d from the guest is not one printable line of at most %d bytes", i+1, maxHostKeyLen)
		}
		f := strings.Fields(line)
		if len(f) < 2 || len(f) > 3 {
			return nil, fmt.Errorf("host key %d from the guest is not \"type base64 [comment]\"", i+1)
		}
		if !slices.Contains(hostKeyTypes, f[0]) {
			return nil, fmt.Errorf("host key %d from the guest has type %q, not one of %s", i+1, truncate(f[0], 32), strings.Join(hostKeyTypes, ", "))
		}
		blob, err := base64.StdEncoding.DecodeString(f[1])
		if err != nil {
			return nil, fmt.Errorf("host key %d from the guest is not base64: %w", i+1, err)
		}
		pk, err := ssh.ParsePublicKey(blob)
		if err != nil {
			return nil, fmt.Errorf("host key %d from the guest does not parse: %w", i+1, err)
		}
		if pk.Type() != f[0] {
			return nil, fmt.Errorf("host key %d from the guest says %s but holds a %s key", i+1, f[0], pk.Type())
		}
		keys = append(keys, pk)
	}
	return keys, nil
}

// KnownHosts is banger's known_hosts file: each guest's host keys pinned
// under its alias NAME.vm, as its agent reported them, never trusted on
// first use by ssh itself.
type KnownHosts struct {
	Path string
	mu   sync.Mutex
}

// Pin replaces name's pins with keys: one "NAME.vm TYPE BASE64" line each,
// re-marshalled from the parsed keys so that nothing else the guest said
// reaches the file.
func (k *KnownHosts) Pin(name string, keys []ssh.PublicKey) error {
	if err := ValidateName(name); err != nil {
		return fmt.Errorf("pinning host keys: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	alias := name + ".vm"
	lines := k.without(alias)
	for _, pk := range keys {
		lines = append(lines, alias+" "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk))))
	}
	return atomicfile.Write(k.Path, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

// Unpin removes name's entries.
func (k *KnownHosts) Unpin(name string) error {
	alias := name + ".vm"
	return k.rewrite(func(host string) bool { return host != alias })
}

// Prune keeps only the entries of the given aliases.
func (k *KnownHosts) Prune(keep map[string]bool) error {
	return k.rewrite(func(host string) bool { return keep[host] })
}

// rewrite keeps the lines whose host keep accepts, writing the file only
// when that drops a line.
func (k *KnownHosts) rewrite(keep func(host string) bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	data, err := os.ReadFile(k.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", k.Path, err)
	}
	var lines []string
	dropped := false
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if !keep(fields[0]) {
			dropped = true
			continue
		}
		lines = append(lines, line)
	}
	if !dropped {
		return nil
	}
	out := strings.Join(lines, "\n")
	if out != "" {
		out += "\n"
	}
	return atomicfile.Write(k.Path, []byte(out), 0o600)
}

func (k *KnownHosts) without(alias string) []string {
	var out []string
	f, err := os.Open(k.Path)
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if fields := strings.Fields(line); len(fields) == 0 || fields[0] == alias {
			continue
		}
		out = append(out, line)
	}
	return out
}

// hostKeysCap pins each guest's SSH host keys, as its agent reported them,
// under NAME.vm, and unpins them on delete.
type hostKeysCap struct {
	NoCapability
	known *KnownHosts
}

func (*hostKeysCap) Name() string { return "host keys" }

func (c *hostKeysCap) Ready(_ context.Context, vm *store.VM, h *agent.Health) error {
	keys, err := ParseHostKeys(h.SSHHostKeys)
	if err != nil {
		return err
	}
	return c.known.Pin(vm.Name, keys)
}

func (c *hostKeysCap) Destroy(_ context.Context, vm *store.VM) error {
	return c.known.Unpin(vm.Name)
}

// Reconcile drops pins of names no VM has any more.
func (c *hostKeysCap) Reconcile(_ context.Context, vms []store.VM) error {
	names := map[string]bool{}
	for _, vm := range vms {
		names[vm.Name+".vm"] = true
	}
	return c.known.Prune(names)
}
