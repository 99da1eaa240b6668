package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/atomicfile"
	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/store"
)

// waitAgent polls the guest agent until it answers health with the guest's
// SSH host keys.
func (d *Daemon) waitAgent(ctx context.Context, vm *store.VM, inst hypervisor.Instance) (*agent.Health, error) {
	c := &agent.Client{Dial: inst.DialAgent}
	var last error
	for {
		if inst.Exited() {
			return nil, fmt.Errorf("the hypervisor of %s exited during boot%s", vm.Name, d.consoleTail(vm))
		}
		hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		h, err := c.Health(hctx)
		cancel()
		switch {
		case err == nil && h.OK && len(h.SSHHostKeys) > 0:
			return h, nil
		case err == nil:
			last = errors.New("agent answered, sshd host keys not generated yet")
		default:
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the guest agent of %s: %v (last: %v)%s", vm.Name, ctx.Err(), last, d.consoleTail(vm))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// waitSSH retries one SSH handshake with the bundle key, pinned to the host
// keys the agent reported, until it succeeds.
func (d *Daemon) waitSSH(ctx context.Context, vm *store.VM, b *bundle.Bundle, hostKeys []string, inst hypervisor.Instance) error {
	keyPEM, err := os.ReadFile(b.Path(b.SSHKey))
	if err != nil {
		return fmt.Errorf("reading bundle ssh key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return fmt.Errorf("parsing bundle ssh key %s: %w", b.Path(b.SSHKey), err)
	}
	var pinned []ssh.PublicKey
	for _, k := range hostKeys {
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
		if err == nil {
			pinned = append(pinned, pk)
		}
	}
	if len(pinned) == 0 {
		return fmt.Errorf("guest %s reported no usable ssh host key", vm.Name)
	}
	cfg := &ssh.ClientConfig{
		User: "root",
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			for _, p := range pinned {
				if string(p.Marshal()) == string(key.Marshal()) {
					return nil
				}
			}
			return fmt.Errorf("ssh host key of %s does not match the key its agent reported", vm.Name)
		},
		HostKeyAlgorithms: algorithms(pinned),
		Timeout:           10 * time.Second,
	}
	addr := net.JoinHostPort(vm.IP, "22")
	var last error
	// A handshake that times out leaves a pre-auth sshd child in the guest
	// until its LoginGraceTime; retrying every few seconds on a slow (busy,
	// emulated) guest piles them up until sshd's MaxStartups drops every new
	// connection. So each handshake that timed out gets twice as long next.
	handshake := 15 * time.Second
	for {
		if inst.Exited() {
			return fmt.Errorf("the hypervisor of %s exited during boot%s", vm.Name, d.consoleTail(vm))
		}
		var dl net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := dl.DialContext(dctx, "tcp", addr)
		cancel()
		if err == nil {
			conn.SetDeadline(time.Now().Add(handshake))
			stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
			var c ssh.Conn
			c, _, _, err = ssh.NewClientConn(conn, addr, cfg)
			stop()
			if err == nil {
				c.Close()
				return nil
			}
			conn.Close()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && handshake < 2*time.Minute {
				handshake *= 2
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for ssh on %s (%s): %v (last: %v)%s", vm.Name, addr, ctx.Err(), last, d.consoleTail(vm))
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func algorithms(keys []ssh.PublicKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.Type())
	}
	return out
}

// consoleTail returns the last lines of vm's console log, for errors.
func (d *Daemon) consoleTail(vm *store.VM) string {
	b, err := os.ReadFile(filepath.Join(vm.Dir, "console.log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return "\nlast console lines:\n  " + strings.Join(lines, "\n  ")
}

var knownHostsMu sync.Mutex

// pinHostKeys records name's host keys in banger's known_hosts under the
// alias NAME.vm, replacing older entries for it.
func (d *Daemon) pinHostKeys(name string, keys []string) error {
	knownHostsMu.Lock()
	defer knownHostsMu.Unlock()
	alias := name + ".vm"
	lines := d.knownHostsWithout(alias)
	for _, k := range keys {
		lines = append(lines, alias+" "+strings.TrimSpace(k))
	}
	return atomicfile.Write(d.paths.KnownHosts, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

// unpinHostKeys removes name's entries from banger's known_hosts.
func (d *Daemon) unpinHostKeys(name string) error {
	alias := name + ".vm"
	return d.rewritePins(func(host string) bool { return host != alias })
}

// prunePins keeps only the known_hosts entries of the given aliases.
func (d *Daemon) prunePins(keep map[string]bool) error {
	return d.rewritePins(func(host string) bool { return keep[host] })
}

// rewritePins keeps the known_hosts lines whose host keep accepts, writing
// the file only when that drops a line.
func (d *Daemon) rewritePins(keep func(host string) bool) error {
	knownHostsMu.Lock()
	defer knownHostsMu.Unlock()
	data, err := os.ReadFile(d.paths.KnownHosts)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", d.paths.KnownHosts, err)
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
	return atomicfile.Write(d.paths.KnownHosts, []byte(out), 0o600)
}

func (d *Daemon) knownHostsWithout(alias string) []string {
	var out []string
	f, err := os.Open(d.paths.KnownHosts)
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
