package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/banger/banger/internal/egress"
	"github.com/banger/banger/internal/opencode"
	"github.com/banger/banger/internal/portfwd"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/units"
	"github.com/banger/banger/internal/vm"
)

// View converts a stored VM into its API form, with the state of its
// published ports. VM views never carry the opencode password: only the
// opencode endpoint does.
func View(ctx context.Context, e *vm.Engine, v *store.VM) *rpc.VM {
	st := e.Store()
	out := &rpc.VM{
		ID:            v.ID,
		Name:          v.Name,
		Image:         v.Image,
		State:         v.State,
		Hypervisor:    v.Hypervisor,
		VCPUs:         v.VCPUs,
		MemoryMiB:     v.MemoryMiB,
		DiskSizeBytes: v.DiskSizeBytes,
		WorkSizeBytes: v.WorkSizeBytes,
		IP:            v.IP,
		MAC:           v.MAC,
		TAP:           v.TAP,
		PID:           v.PID,
		NAT:           v.NAT,
		Egress:        egressLine(v),
		Dir:           v.Dir,
		DiskFormat:    v.DiskFormat,
		ConsoleLog:    vm.ConsoleLog(v),
		Error:         v.Error,
		CreatedAt:     v.CreatedAt,
		Ports:         []rpc.Port{},
	}
	for _, p := range e.Ports(v) {
		out.Ports = append(out.Ports, rpc.Port{Proto: p.Proto, HostIP: p.HostIP.String(), HostPort: int(p.HostPort), GuestPort: int(p.GuestPort), Listening: p.Listening})
	}
	for _, m := range v.Mounts {
		out.Mounts = append(out.Mounts, rpc.Mount{Host: m.Host, Guest: m.Guest, ReadOnly: m.ReadOnly})
	}
	if stages, err := st.StageDurations(ctx, v.ID); err == nil {
		for _, s := range stages {
			out.Stages = append(out.Stages, rpc.Stage{Name: s.Stage, DurationMS: float64(s.Duration) / float64(time.Millisecond)})
		}
	}
	return out
}

// egressLine is the VM's policy in one line.
func egressLine(v *store.VM) string {
	p, err := vm.PolicyOf(v)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	return p.String()
}

// policy turns a wire policy into the engine's, validated.
func policy(e *rpc.Egress) (*egress.Policy, error) {
	if e == nil {
		return nil, nil
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encoding egress policy: %w", err)
	}
	var p egress.Policy
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("invalid egress policy: %w: %w", err, errBadRequest)
	}
	return &p, nil
}

// egressStats is the wire form of what a policy refused.
func egressStats(st egress.Stats) *rpc.EgressStats {
	out := &rpc.EgressStats{Refused: map[string]rpc.EgressCounter{}, NamesRefused: st.NamesRefused, Learned: st.Learned, Recent: []rpc.EgressDenial{}}
	for k, c := range st.Refused {
		out.Refused[k] = rpc.EgressCounter{Packets: c.Packets, Bytes: c.Bytes}
	}
	for _, d := range st.Recent {
		out.Recent = append(out.Recent, rpc.EgressDenial{Time: d.Time, Name: d.Name, Addr: d.Addr, Reason: d.Reason.String()})
	}
	return out
}

func (s *Server) view(ctx context.Context, v *store.VM) *rpc.VM {
	return View(ctx, s.Engine, v)
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	vms, err := s.Engine.List(r.Context())
	if err != nil {
		s.writeErr(w, err)
		return
	}
	out := []rpc.VM{}
	for i := range vms {
		out = append(out, *s.view(r.Context(), &vms[i]))
	}
	writeJSON(w, 200, out)
}

func (s *Server) handleShow(w http.ResponseWriter, r *http.Request) {
	v, err := s.Engine.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeErr(w, err)
		return
	}
	out := s.view(r.Context(), v)
	if v.NAT && v.State == vm.StateRunning {
		if st, err := s.Engine.EgressStats(r.Context(), v); err == nil {
			out.EgressStats = egressStats(st)
		} else if !errors.Is(err, egress.ErrNoPolicy) {
			s.log().Warn("reading egress counters", "vm", v.Name, "err", err)
		}
	}
	writeJSON(w, 200, out)
}

// createOptions turns a create request into the engine's options.
func createOptions(req rpc.CreateRequest) (vm.CreateOptions, error) {
	o := vm.CreateOptions{Name: req.Name, Image: req.Image, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, NAT: req.NAT, Cold: req.Cold}
	for _, m := range req.Mounts {
		o.Mounts = append(o.Mounts, store.Mount{Host: m.Host, Guest: m.Guest, ReadOnly: m.ReadOnly})
	}
	if req.VCPUs < 0 {
		return o, fmt.Errorf("invalid vcpus %d: use 1 to %d, or 0 for the default: %w", req.VCPUs, vm.MaxVCPUs, errBadRequest)
	}
	if req.MemoryMiB < 0 {
		return o, fmt.Errorf("invalid memory %d MiB: %w", req.MemoryMiB, errBadRequest)
	}
	if req.DiskSize != "" {
		n, err := units.ParseSize(req.DiskSize)
		if err != nil {
			return o, fmt.Errorf("invalid --disk-size %q: %w: %w", excerpt(req.DiskSize), err, errBadRequest)
		}
		o.DiskSize = n
	}
	if req.WorkSize != "" {
		n, err := parseWorkSize(req.WorkSize)
		if err != nil {
			return o, err
		}
		o.WorkSize = n
	}
	p, err := policy(req.Egress)
	if err != nil {
		return o, err
	}
	o.Egress = p
	o.Ports, err = specs(req.Ports)
	return o, err
}

// parseWorkSize reads a /root disk size.
func parseWorkSize(s string) (int64, error) {
	n, err := units.ParseSize(s)
	if err == nil && n <= 0 {
		err = errors.New("a size is more than 0")
	}
	if err != nil {
		return 0, fmt.Errorf("invalid --work-size %q: %w: %w", excerpt(s), err, errBadRequest)
	}
	return n, nil
}

// specs turns the API's ports into publish specs: proto "" is tcp and
// host_ip "" is 127.0.0.1.
func specs(ports []rpc.Port) ([]portfwd.Spec, error) {
	if len(ports) > portfwd.MaxPerVM {
		return nil, fmt.Errorf("publishing %d ports: a VM publishes at most %d: %w", len(ports), portfwd.MaxPerVM, errBadRequest)
	}
	var out []portfwd.Spec
	for _, p := range ports {
		s := portfwd.Spec{Proto: cmp.Or(p.Proto, portfwd.TCP), HostIP: portfwd.DefaultHostIP}
		if p.HostIP != "" {
			ip, err := netip.ParseAddr(p.HostIP)
			if err != nil {
				return nil, fmt.Errorf("invalid port: host_ip %q is not an IP address: %w", excerpt(p.HostIP), errBadRequest)
			}
			s.HostIP = ip
		}
		for _, n := range []struct {
			name string
			v    int
			to   *uint16
		}{{"host_port", p.HostPort, &s.HostPort}, {"guest_port", p.GuestPort, &s.GuestPort}} {
			if n.v < 1 || n.v > 65535 {
				return nil, fmt.Errorf("invalid port: %s %d is not from 1 to 65535: %w", n.name, n.v, errBadRequest)
			}
			*n.to = uint16(n.v)
		}
		if err := s.Validate(); err != nil {
			return nil, fmt.Errorf("%w: %w", err, errBadRequest)
		}
		out = append(out, s)
	}
	return out, nil
}

// selectors turns the API's port references into selectors.
func selectors(refs []rpc.PortRef) ([]portfwd.Selector, error) {
	if len(refs) > portfwd.MaxPerVM {
		return nil, fmt.Errorf("removing %d ports: a VM publishes at most %d: %w", len(refs), portfwd.MaxPerVM, errBadRequest)
	}
	var out []portfwd.Selector
	for _, r := range refs {
		sel := portfwd.Selector{Proto: cmp.Or(r.Proto, portfwd.TCP)}
		if sel.Proto != portfwd.TCP && sel.Proto != portfwd.UDP {
			return nil, fmt.Errorf("invalid port: proto %q is not tcp or udp: %w", excerpt(r.Proto), errBadRequest)
		}
		if r.HostIP != "" {
			ip, err := netip.ParseAddr(r.HostIP)
			if err != nil {
				return nil, fmt.Errorf("invalid port: host_ip %q is not an IP address: %w", excerpt(r.HostIP), errBadRequest)
			}
			sel.HostIP = ip
		}
		if r.HostPort < 1 || r.HostPort > 65535 {
			return nil, fmt.Errorf("invalid port: host_port %d is not from 1 to 65535: %w", r.HostPort, errBadRequest)
		}
		sel.HostPort = uint16(r.HostPort)
		out = append(out, sel)
	}
	return out, nil
}

func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request) {
	var req rpc.CreateRequest
	if err := decode(r, "create", &req); err != nil {
		s.writeErr(w, err)
		return
	}
	opts, err := createOptions(req)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	plan, err := s.Engine.Plan(r.Context(), opts)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	pr := &progress{}
	if req.NoWait {
		pr.booted = func(*store.VM) {}
	}
	s.stream(w, r, pr, func() (rpc.Event, error) {
		v, err := s.Engine.Create(plan, pr)
		if err != nil {
			s.log().Error("create failed", "vm", req.Name, "err", err)
			return rpc.Event{}, err
		}
		s.log().Info("created VM", "vm", v.Name, "ip", v.IP)
		return rpc.Event{VM: s.view(s.Engine.Context(), v)}, nil
	})
}

func (s *Server) handleStart(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := s.Engine.Get(r.Context(), name); err != nil {
		s.writeErr(w, err)
		return
	}
	pr := &progress{}
	s.stream(w, r, pr, func() (rpc.Event, error) {
		v, err := s.Engine.Start(name, pr)
		if err != nil {
			s.log().Error("start failed", "vm", name, "err", err)
			return rpc.Event{}, err
		}
		s.log().Info("started VM", "vm", v.Name, "ip", v.IP)
		return rpc.Event{VM: s.view(s.Engine.Context(), v)}, nil
	})
}

func (s *Server) handleSuspend(w http.ResponseWriter, r *http.Request) {
	v, err := s.Engine.Suspend(r.PathValue("name"))
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, 200, s.view(r.Context(), v))
}

func (s *Server) handleResume(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := s.Engine.Get(r.Context(), name); err != nil {
		s.writeErr(w, err)
		return
	}
	pr := &progress{}
	s.stream(w, r, pr, func() (rpc.Event, error) {
		v, err := s.Engine.Resume(name, pr)
		if err != nil {
			return rpc.Event{}, err
		}
		return rpc.Event{VM: s.view(s.Engine.Context(), v)}, nil
	})
}

func (s *Server) handleFork(w http.ResponseWriter, r *http.Request) {
	var req rpc.ForkRequest
	if err := decode(r, "fork", &req); err != nil {
		s.writeErr(w, err)
		return
	}
	plan, err := s.Engine.PlanFork(r.Context(), r.PathValue("name"), req.Name)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	pr := &progress{}
	s.stream(w, r, pr, func() (rpc.Event, error) {
		v, err := s.Engine.Fork(plan, pr)
		if err != nil {
			s.log().Error("fork failed", "vm", req.Name, "err", err)
			return rpc.Event{}, err
		}
		s.log().Info("forked VM", "vm", v.Name, "from", r.PathValue("name"), "ip", v.IP)
		return rpc.Event{VM: s.view(s.Engine.Context(), v)}, nil
	})
}

func (s *Server) handleStop(w http.ResponseWriter, r *http.Request) {
	v, err := s.Engine.Stop(r.PathValue("name"))
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, 200, s.view(r.Context(), v))
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	if err := s.Engine.Delete(r.PathValue("name")); err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, 200, map[string]bool{"ok": true})
}

func (s *Server) handleSet(w http.ResponseWriter, r *http.Request) {
	var req rpc.SetRequest
	if err := decode(r, "set", &req); err != nil {
		s.writeErr(w, err)
		return
	}
	p, err := policy(req.Egress)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	o := vm.SetOptions{NAT: req.NAT, Egress: p}
	if req.WorkSize != "" {
		n, err := parseWorkSize(req.WorkSize)
		if err != nil {
			s.writeErr(w, err)
			return
		}
		o.WorkSize = n
	}
	v, err := s.Engine.Set(r.PathValue("name"), o)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, 200, s.view(r.Context(), v))
}

func (s *Server) handleAddPorts(w http.ResponseWriter, r *http.Request) {
	var req rpc.PortsRequest
	if err := decode(r, "publish", &req); err != nil {
		s.writeErr(w, err)
		return
	}
	sp, err := specs(req.Ports)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	v, err := s.Engine.AddPorts(r.PathValue("name"), sp)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, 200, s.view(r.Context(), v))
}

func (s *Server) handleRemovePorts(w http.ResponseWriter, r *http.Request) {
	var req rpc.UnpublishRequest
	if err := decode(r, "unpublish", &req); err != nil {
		s.writeErr(w, err)
		return
	}
	sels, err := selectors(req.Ports)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	v, err := s.Engine.RemovePorts(r.PathValue("name"), sels)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, 200, s.view(r.Context(), v))
}

func (s *Server) handleSSH(w http.ResponseWriter, r *http.Request) {
	v, err := s.Engine.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeErr(w, err)
		return
	}
	key, err := s.KeyFile()
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, 200, rpc.SSHInfo{
		Name:       v.Name,
		IP:         v.IP,
		User:       "root",
		KeyPath:    key,
		KnownHosts: s.KnownHosts,
		HostAlias:  v.Name + ".vm",
		State:      v.State,
	})
}

// handleOpencode answers with the URL and credentials of a VM's opencode
// server. Only this endpoint carries the password: VM views do not.
func (s *Server) handleOpencode(w http.ResponseWriter, r *http.Request) {
	v, err := s.Engine.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeErr(w, err)
		return
	}
	pw := opencode.Password(v.Dir)
	if pw == "" {
		s.writeErr(w, fmt.Errorf("VM %s has no opencode password: its image (%s) does not run banger's opencode server: %w", v.Name, v.Image, vm.ErrNotFound))
		return
	}
	writeJSON(w, 200, rpc.OpencodeAuth{URL: fmt.Sprintf("http://%s.vm:%d", v.Name, opencode.Port), User: opencode.User, Password: pw})
}
