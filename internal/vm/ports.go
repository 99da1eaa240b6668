package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/portfwd"
	"github.com/banger/banger/internal/store"
)

// portsCap publishes the ports a VM asks for on host addresses, through
// bangerd's own userspace relay (internal/portfwd): it needs no root, no
// firewall rule and no route, so an unprivileged bangerd publishes ports
// as root's does. Connections from the owner's guests are turned away. Each boot listens before the hypervisor starts (a busy
// port fails the boot at stage "network"), every end of the hypervisor
// closes the listeners and their connections, and a restarted bangerd
// listens again for the VMs it adopted.
type portsCap struct {
	NoCapability
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	limits portfwd.Limits
	log    *slog.Logger
	// refuse turns peers away: the owner's own guests, so that a port
	// published on an address they reach is no way around isolation.
	refuse func(netip.Addr) bool

	mu     sync.Mutex
	fwds   map[string][]*portfwd.Forward // by VM id
	closed bool                          // the engine ended: listen no more
}

func (*portsCap) Name() string { return "published ports" }

// Prepare listens on every port the VM publishes.
func (c *portsCap) Prepare(_ context.Context, vm *store.VM, _ *guestconfig.Config) error {
	specs, err := vmSpecs(vm)
	if err != nil {
		return err
	}
	c.close(vm.ID) // a boot after a crash: nothing of the last one stays
	return withRemoveHint(vm, c.open(vm, specs))
}

// portError is a port that could not be listened on.
type portError struct {
	spec portfwd.Spec
	err  error
}

func (e *portError) Error() string { return e.err.Error() }
func (e *portError) Unwrap() error { return e.err }

// withRemoveHint adds to the error of a port the VM publishes already how
// to stop publishing it.
func withRemoveHint(vm *store.VM, err error) error {
	var pe *portError
	if !errors.As(err, &pe) {
		return err
	}
	return fmt.Errorf("%w; or stop publishing it with 'banger vm port rm %s %s'", err, vm.Name, pe.spec.Host()+"/"+pe.spec.Proto)
}

// Release stops listening for the VM and ends its connections.
func (c *portsCap) Release(_ context.Context, vm *store.VM) error {
	return c.close(vm.ID)
}

// Reconcile listens for the running VMs that publish ports and that no
// forward serves yet (after a bangerd restart, all of them), and closes
// the forwards of every other VM.
func (c *portsCap) Reconcile(_ context.Context, vms []store.VM) error {
	var errs []error
	keep := map[string]bool{}
	for i := range vms {
		vm := &vms[i]
		if !hostLive(vm) || len(vm.Ports) == 0 {
			continue
		}
		keep[vm.ID] = true
		specs, err := vmSpecs(vm)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// One port that cannot be listened on does not keep the others.
		for _, s := range specs {
			if c.listening(vm.ID, s) {
				continue
			}
			if err := c.open(vm, []portfwd.Spec{s}); err != nil {
				errs = append(errs, fmt.Errorf("VM %s: %w", vm.Name, withRemoveHint(vm, err)))
				continue
			}
			c.log.Info("listening again on a published port", "vm", vm.Name, "port", s.String())
		}
	}
	c.mu.Lock()
	var gone []string
	for id := range c.fwds {
		if !keep[id] {
			gone = append(gone, id)
		}
	}
	c.mu.Unlock()
	for _, id := range gone {
		if err := c.close(id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// open listens on specs for vm, adding to its forwards; on a failure it
// closes the ones it opened and returns why.
func (c *portsCap) open(vm *store.VM, specs []portfwd.Spec) error {
	if len(specs) == 0 {
		return nil
	}
	guest, err := netip.ParseAddr(vm.IP)
	if err != nil {
		return fmt.Errorf("publishing ports of VM %s: it has no address (%q)", vm.Name, vm.IP)
	}
	var opened []*portfwd.Forward
	for _, s := range specs {
		f, err := portfwd.Listen(s, guest, c.dial, portfwd.Config{Limits: c.limits, Refuse: c.refuse, Log: c.log.With("vm", vm.Name)})
		if err != nil {
			for _, o := range opened {
				o.Close()
			}
			return &portError{spec: s, err: err}
		}
		opened = append(opened, f)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		for _, o := range opened {
			o.Close()
		}
		return errors.New("bangerd is stopping: its next start publishes the ports again")
	}
	if c.fwds == nil {
		c.fwds = map[string][]*portfwd.Forward{}
	}
	c.fwds[vm.ID] = append(c.fwds[vm.ID], opened...)
	return nil
}

// close ends every forward of the VM with this id.
func (c *portsCap) close(id string) error {
	c.mu.Lock()
	fs := c.fwds[id]
	delete(c.fwds, id)
	c.mu.Unlock()
	var errs []error
	for _, f := range fs {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// closeAll ends every forward.
func (c *portsCap) closeAll() {
	c.mu.Lock()
	c.closed = true
	var ids []string
	for id := range c.fwds {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		c.close(id)
	}
}

// remove ends the forwards of the VM with this id that sel names.
func (c *portsCap) remove(id string, sel portfwd.Selector) error {
	c.mu.Lock()
	var gone []*portfwd.Forward
	c.fwds[id] = slices.DeleteFunc(c.fwds[id], func(f *portfwd.Forward) bool {
		if sel.Matches(f.Spec()) {
			gone = append(gone, f)
			return true
		}
		return false
	})
	if len(c.fwds[id]) == 0 {
		delete(c.fwds, id)
	}
	c.mu.Unlock()
	var errs []error
	for _, f := range gone {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// listening reports whether a forward of the VM with this id serves s.
func (c *portsCap) listening(id string, s portfwd.Spec) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.fwds[id] {
		if f.Spec() == s {
			return true
		}
	}
	return false
}

// stats returns the counters of the forward of the VM with this id that
// serves s.
func (c *portsCap) stats(id string, s portfwd.Spec) (portfwd.Stats, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.fwds[id] {
		if f.Spec() == s {
			return f.Stats(), true
		}
	}
	return portfwd.Stats{}, false
}

// vmSpecs reads a VM's recorded ports back.
func vmSpecs(vm *store.VM) ([]portfwd.Spec, error) {
	out := make([]portfwd.Spec, 0, len(vm.Ports))
	for _, p := range vm.Ports {
		s, err := specOf(p)
		if err != nil {
			return nil, fmt.Errorf("VM %s: recorded port %s:%d/%s: %w", vm.Name, p.HostIP, p.HostPort, p.Proto, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func specOf(p store.Port) (portfwd.Spec, error) {
	ip, err := netip.ParseAddr(p.HostIP)
	if err != nil || p.HostPort < 1 || p.HostPort > 65535 || p.GuestPort < 1 || p.GuestPort > 65535 {
		return portfwd.Spec{}, errors.New("not a valid port")
	}
	s := portfwd.Spec{Proto: p.Proto, HostIP: ip, HostPort: uint16(p.HostPort), GuestPort: uint16(p.GuestPort)}
	return s, s.Validate()
}

func portOf(s portfwd.Spec) store.Port {
	return store.Port{Proto: s.Proto, HostIP: s.HostIP.String(), HostPort: int(s.HostPort), GuestPort: int(s.GuestPort)}
}

// PortState is one port a VM publishes, and whether bangerd listens on it
// now (it does while the VM runs).
type PortState struct {
	portfwd.Spec
	Listening bool
	// Active is the connections (UDP: sessions) relayed now.
	Active int
}

// Ports returns the ports vm publishes and their state.
func (e *Engine) Ports(vm *store.VM) []PortState {
	specs, _ := vmSpecs(vm)
	pc := e.portsCap()
	out := make([]PortState, 0, len(specs))
	for _, s := range specs {
		ps := PortState{Spec: s}
		if pc != nil {
			st, ok := pc.stats(vm.ID, s)
			ps.Listening, ps.Active = ok, st.Active
		}
		out = append(out, ps)
	}
	return out
}

// portsCap is the engine's published-ports capability, if it has one.
func (e *Engine) portsCap() *portsCap {
	for _, c := range e.caps {
		if p, ok := c.(*portsCap); ok {
			return p
		}
	}
	return nil
}

// checkPorts refuses specs, wanted by the VM with id self ("" for a new
// one) on top of what it has, that overlap one another or a port another
// VM publishes, or whose host port cannot be listened on now (probe).
// Callers hold e.portsMu, so no other VM takes them meanwhile.
func (e *Engine) checkPorts(ctx context.Context, self string, have, add []portfwd.Spec, probe bool) error {
	if err := portfwd.Check(append(slices.Clone(have), add...)); err != nil {
		return invalid("%w", err)
	}
	vms, err := e.cfg.Store.ListVMs(ctx)
	if err != nil {
		return err
	}
	for i := range vms {
		other := &vms[i]
		if other.ID == self {
			continue
		}
		theirs, _ := vmSpecs(other)
		for _, s := range add {
			for _, o := range theirs {
				if s.Overlaps(o) {
					return exists("host port %s/%s is published by VM %s already (as %s): pick another host port, or remove it there with 'banger vm port rm %s %s'",
						s.Host(), s.Proto, other.Name, o, other.Name, o.Host()+"/"+o.Proto)
				}
			}
		}
	}
	if !probe {
		return nil
	}
	for _, s := range add {
		if err := portfwd.Probe(s); err != nil {
			return portErr(err)
		}
	}
	return nil
}

// portErr gives a forward's listen error its engine kind.
func portErr(err error) error {
	switch {
	case errors.Is(err, portfwd.ErrInUse):
		return exists("%w", err)
	case errors.Is(err, portfwd.ErrDenied), errors.Is(err, portfwd.ErrNoAddress):
		return invalid("%w", err)
	}
	return err
}

// AddPorts publishes more ports of a VM. A running VM listens on them at
// once; a stopped one at its next start. A port that is busy, privileged,
// taken by another VM or overlapping one of the VM's own is refused, and
// then nothing changes.
func (e *Engine) AddPorts(nameOrID string, specs []portfwd.Spec) (*store.VM, error) {
	ctx := e.ctx
	if len(specs) == 0 {
		return nil, invalid("publishing ports: name at least one, as [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]")
	}
	vm, inst, unlock, err := e.lockInstance(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	e.portsMu.Lock()
	defer e.portsMu.Unlock()
	have, err := vmSpecs(vm)
	if err != nil {
		return nil, err
	}
	running := inst != nil && (vm.State == StateRunning || vm.State == StateStarting)
	if err := e.checkPorts(ctx, vm.ID, have, specs, !running); err != nil {
		return nil, err
	}
	pc := e.portsCap()
	if running && pc != nil {
		if err := pc.open(vm, specs); err != nil {
			return nil, portErr(err)
		}
	}
	ports := slices.Clone(vm.Ports)
	for _, s := range specs {
		ports = append(ports, portOf(s))
	}
	if err := e.cfg.Store.SetVMPorts(ctx, vm.ID, ports); err != nil {
		if running && pc != nil {
			for _, s := range specs {
				pc.remove(vm.ID, portfwd.Selector{Proto: s.Proto, HostIP: s.HostIP, HostPort: s.HostPort})
			}
		}
		if errors.Is(err, store.ErrExists) {
			return nil, exists("publishing ports of %s: %w: pick another host port", vm.Name, err)
		}
		return nil, err
	}
	vm.Ports = ports
	e.log.Info("published ports", "vm", vm.Name, "ports", specList(specs), "listening", running)
	return vm, nil
}

// RemovePorts stops publishing the ports of a VM that the selectors name;
// each must name at least one, or nothing changes.
func (e *Engine) RemovePorts(nameOrID string, sels []portfwd.Selector) (*store.VM, error) {
	ctx := e.ctx
	if len(sels) == 0 {
		return nil, invalid("removing published ports: name at least one, as [HOSTIP:]HOSTPORT[/tcp|/udp]")
	}
	vm, unlock, err := e.lockVM(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	e.portsMu.Lock()
	defer e.portsMu.Unlock()
	have, err := vmSpecs(vm)
	if err != nil {
		return nil, err
	}
	var keep []store.Port
	for _, sel := range sels {
		if !slices.ContainsFunc(have, sel.Matches) {
			return nil, notFound("VM %s publishes no host port %s: see 'banger vm port list %s'", vm.Name, sel, vm.Name)
		}
	}
	for i, s := range have {
		if !slices.ContainsFunc(sels, func(sel portfwd.Selector) bool { return sel.Matches(s) }) {
			keep = append(keep, vm.Ports[i])
		}
	}
	if err := e.cfg.Store.SetVMPorts(ctx, vm.ID, keep); err != nil {
		return nil, err
	}
	if pc := e.portsCap(); pc != nil {
		for _, sel := range sels {
			if err := pc.remove(vm.ID, sel); err != nil {
				e.log.Warn("closing a published port", "vm", vm.Name, "port", sel.String(), "err", err)
			}
		}
	}
	vm.Ports = keep
	e.log.Info("removed published ports", "vm", vm.Name, "ports", fmt.Sprint(sels))
	return vm, nil
}

func specList(specs []portfwd.Spec) string {
	var b strings.Builder
	for i, s := range specs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s.String())
	}
	return b.String()
}
