package api

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/banger/banger/internal/opencode"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/units"
	"github.com/banger/banger/internal/vm"
)

// View converts a stored VM into its API form. VM views never carry the
// opencode password: only the opencode endpoint does.
func View(ctx context.Context, st *store.Store, v *store.VM) *rpc.VM {
	out := &rpc.VM{
		ID:            v.ID,
		Name:          v.Name,
		Image:         v.Image,
		State:         v.State,
		Hypervisor:    v.Hypervisor,
		VCPUs:         v.VCPUs,
		MemoryMiB:     v.MemoryMiB,
		DiskSizeBytes: v.DiskSizeBytes,
		IP:            v.IP,
		MAC:           v.MAC,
		TAP:           v.TAP,
		PID:           v.PID,
		NAT:           v.NAT,
		Dir:           v.Dir,
		DiskFormat:    v.DiskFormat,
		ConsoleLog:    vm.ConsoleLog(v),
		Error:         v.Error,
		CreatedAt:     v.CreatedAt,
	}
	if stages, err := st.StageDurations(ctx, v.ID); err == nil {
		for _, s := range stages {
			out.Stages = append(out.Stages, rpc.Stage{Name: s.Stage, DurationMS: float64(s.Duration) / float64(time.Millisecond)})
		}
	}
	return out
}

func (s *Server) view(ctx context.Context, v *store.VM) *rpc.VM {
	return View(ctx, s.Engine.Store(), v)
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
	writeJSON(w, 200, s.view(r.Context(), v))
}

// createOptions turns a create request into the engine's options.
func createOptions(req rpc.CreateRequest) (vm.CreateOptions, error) {
	o := vm.CreateOptions{Name: req.Name, Image: req.Image, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, NAT: req.NAT, Cold: req.Cold}
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
	return o, nil
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
			return rpc.Event{}, err
		}
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

// SetRequest is the body of POST /v1/vms/{name}/set.
type SetRequest struct {
	NAT *bool `json:"nat"`
}

func (s *Server) handleSet(w http.ResponseWriter, r *http.Request) {
	var req SetRequest
	if err := decode(r, "set", &req); err != nil {
		s.writeErr(w, err)
		return
	}
	v, err := s.Engine.Set(r.PathValue("name"), vm.SetOptions{NAT: req.NAT})
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
