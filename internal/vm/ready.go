package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/bundle"
	"github.com/banger/banger/internal/console"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/logfile"
	"github.com/banger/banger/internal/store"
)

// waitReady runs the readiness checks in order: agent health over the agent
// channel; for a restored guest (and for what a cold one needs of it) the
// identity the host gives it, whose answer carries the SSH host keys to
// pin; then one SSH handshake with the bundle key against them. It returns
// the guest's last health.
func (e *Engine) waitReady(ctx context.Context, vm *store.VM, b *bundle.Bundle, inst hypervisor.Instance, st *stages, bs *bootState) (*agent.Health, hypervisor.Instance, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.ReadyTimeout)
	defer cancel()
	var h *agent.Health
	if !identityFirst(bs) {
		if err := st.run("waiting for agent", func() error {
			var err error
			h, err = e.waitAgent(ctx, vm.Name, ConsoleLog(vm), inst, bs.watch)
			var stall *kernelStall
			if errors.As(err, &stall) && bs.relaunch != nil {
				// Once: a second stall is the error.
				st.pr.Log(fmt.Sprintf("the guest kernel of %s stopped in early boot (its console said nothing for %v before init); booting it again", vm.Name, stall.quiet))
				e.log.Warn("guest kernel stalled in early boot; booting it again", "vm", vm.Name, "quiet", stall.quiet)
				relaunch := bs.relaunch
				bs.relaunch = nil
				bs.watch = bs.watch.Again(time.Now())
				next, rerr := relaunch(ctx, inst)
				if rerr != nil {
					return rerr // inst, ended, is still the one to fail
				}
				inst = next
				h, err = e.waitAgent(ctx, vm.Name, ConsoleLog(vm), inst, bs.watch)
			}
			if err == nil && bs.kind == coldBoot {
				h, err = e.giveIdentity(ctx, vm, inst, bs, h)
			}
			return err
		}); err != nil {
			return nil, inst, err
		}
	}
	if bs.kind != coldBoot {
		stage := "new identity"
		if bs.kind == restoreSame {
			stage = "clock and entropy"
		}
		if err := st.run(stage, func() error {
			var err error
			h, err = e.restoredIdentity(ctx, vm, inst, bs, h)
			return err
		}); err != nil {
			return nil, inst, err
		}
	}
	if err := e.caps.ready(ctx, vm, h); err != nil {
		return nil, inst, err
	}
	keys, err := ParseHostKeys(h.SSHHostKeys)
	if err != nil {
		return nil, inst, err
	}
	return h, inst, st.run("waiting for ssh", func() error {
		if bs.kind != coldBoot {
			return e.waitBanner(ctx, vm, inst)
		}
		return e.waitSSH(ctx, vm, b, keys, inst)
	})
}

// identityFirst says whether a restored guest gets its identity request
// before any health request. Its agent was serving when the snapshot was
// taken, so the identity request can go first when what the host checks
// its answer against is known: a resume checks nothing of the guest
// before, and a template's restore checks the template's recorded host
// keys. A fork's restore (whose source's keys the host does not keep)
// asks the agent's health first, as a boot does.
func identityFirst(bs *bootState) bool {
	return bs.kind == restoreSame || (bs.kind == restoreNew && len(bs.hostKeys) > 0)
}

// restoredIdentity gives a restored guest its identity (its own, or the
// clock and entropy of a resume), h being its agent's health, or nil when
// identityFirst: the request then goes at once, and if it is refused (an
// older agent) or unanswered, the agent's health comes first after all.
func (e *Engine) restoredIdentity(ctx context.Context, vm *store.VM, inst hypervisor.Instance, bs *bootState, h *agent.Health) (*agent.Health, error) {
	if h != nil {
		return e.giveIdentity(ctx, vm, inst, bs, h)
	}
	known := &agent.Health{OK: true, SSHHostKeys: bs.hostKeys, Ops: []string{agent.OpIdentity}}
	ictx, cancel := context.WithTimeout(ctx, firstIdentityTimeout)
	nh, err := e.giveIdentity(ictx, vm, inst, bs, known)
	cancel()
	if err == nil || ctx.Err() != nil {
		return nh, err
	}
	e.log.Debug("restored guest: the first identity request failed; waiting for its agent", "vm", vm.Name, "err", err)
	h, err = e.waitAgent(ctx, vm.Name, ConsoleLog(vm), inst, nil)
	if err != nil {
		return nil, err
	}
	// The new keys must differ from the snapshot's too, not only from what
	// the first request may have left.
	h.SSHHostKeys = append(slices.Clip(h.SSHHostKeys), bs.hostKeys...)
	return e.giveIdentity(ctx, vm, inst, bs, h)
}

// firstIdentityTimeout bounds the identity request sent to a restored
// guest before anything else: its agent answers in well under a second
// under TCG, and one that does not is waited for as after a boot.
const firstIdentityTimeout = 20 * time.Second

// waitBanner is the readiness check of a restored guest. Its agent has just
// answered with the host keys to pin (new ones, for a restore of another
// machine's snapshot; an sshd that reads them only at its start is either
// a template's parked one, let go on to read them, or has closed its old
// sockets by then and is coming up again), and its sshd was
// running when the snapshot was taken, so sshd answering with its version
// line says enough; the full
// handshake, about half a second under TCG, is what a cold boot proves.
func (e *Engine) waitBanner(ctx context.Context, vm *store.VM, inst hypervisor.Instance) error {
	addr := net.JoinHostPort(vm.IP, "22")
	var last error
	for {
		if inst.Exited() {
			return fmt.Errorf("the hypervisor of %s exited during its restore (%s)%s", vm.Name, inst.Exit(), consoleTail(ConsoleLog(vm)))
		}
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := e.cfg.Dial(dctx, "tcp", addr)
		cancel()
		if err == nil {
			err = readBanner(conn, 10*time.Second)
			conn.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for sshd on %s (%s): %w (last: %w)%s", vm.Name, addr, ctx.Err(), last, consoleTail(ConsoleLog(vm)))
		case <-time.After(bannerRetry):
		}
	}
}

// bannerRetry is the pause between a restored guest's SSH attempts: its
// sshd may be coming up again for new host keys (a refused connection
// costs nothing), and every pause adds to a warm create.
const bannerRetry = 20 * time.Millisecond

// maxBannerLines bounds the lines an SSH server may send before its version
// line (RFC 4253 4.2 allows some); each line is at most maxBannerLine bytes.
const (
	maxBannerLines = 16
	maxBannerLine  = 512
)

// readBanner reads what the guest's sshd sends first until its version
// line, within d. The guest is untrusted: what it sends is bounded.
func readBanner(c net.Conn, d time.Duration) error {
	c.SetDeadline(time.Now().Add(d))
	r := bufio.NewReaderSize(c, maxBannerLine)
	for range maxBannerLines {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("reading the ssh version line: %w", err)
		}
		if bytes.HasPrefix(line, []byte("SSH-2.0-")) || bytes.HasPrefix(line, []byte("SSH-1.99-")) {
			return nil
		}
	}
	return fmt.Errorf("no ssh version line in the first %d lines", maxBannerLines)
}

// waitAgent polls the guest agent until it answers health with the guest's
// SSH host keys. name and console name the guest and its console log in
// errors. With watch (a cold boot's), a kernel that stops before init ends
// the wait with a *kernelStall.
func (e *Engine) waitAgent(ctx context.Context, name, console string, inst hypervisor.Instance, watch *console.Watch) (*agent.Health, error) {
	c := &agent.Client{Dial: inst.DialAgent}
	var last error
	for {
		if inst.Exited() {
			return nil, fmt.Errorf("the hypervisor of %s exited during boot (%s)%s", name, inst.Exit(), consoleTail(console))
		}
		if watch.Stalled(time.Now()) {
			return nil, &kernelStall{name: name, quiet: watch.Quiet(), tail: consoleTail(console)}
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
			return nil, fmt.Errorf("waiting for the guest agent of %s: %w (last: %w)%s", name, ctx.Err(), last, consoleTail(console))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// waitSSH retries one SSH handshake with the bundle key, pinned to the host
// keys the agent reported, until it succeeds.
func (e *Engine) waitSSH(ctx context.Context, vm *store.VM, b *bundle.Bundle, pinned []ssh.PublicKey, inst hypervisor.Instance) error {
	keyPath := b.Path(b.SSHKey)
	if e.cfg.KeyFile != nil {
		keyPath = e.cfg.KeyFile(b)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return fmt.Errorf("reading the bundle's ssh key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return fmt.Errorf("parsing the bundle's ssh key %s: %w", keyPath, err)
	}
	var algos []string
	for _, p := range pinned {
		algos = append(algos, p.Type())
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
		HostKeyAlgorithms: algos,
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
			return fmt.Errorf("the hypervisor of %s exited during boot (%s)%s", vm.Name, inst.Exit(), consoleTail(ConsoleLog(vm)))
		}
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		conn, err := e.cfg.Dial(dctx, "tcp", addr)
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
			return fmt.Errorf("waiting for ssh on %s (%s): %w (last: %w)%s", vm.Name, addr, ctx.Err(), last, consoleTail(ConsoleLog(vm)))
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// consoleTail returns the last lines of a console log, for errors: read by
// seeking, bounded and cleaned (the guest wrote it).
func consoleTail(path string) string {
	lines := logfile.Tail(path, 0, 8, 16<<10)
	if len(lines) == 0 {
		return ""
	}
	return "\nlast console lines:\n  " + strings.Join(lines, "\n  ")
}
