package web

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/banger/banger/internal/portfwd"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/units"
)

// consoleLines is how much of the serial console the VM page shows, read
// from at most its last consoleTailBytes (bangerd seeks there).
const (
	consoleLines     = 200
	consoleTailBytes = 256 << 10
)

// vmsPage is the VM list.
type vmsPage struct {
	base
	VMs    []rpc.VM
	Images []rpc.Image
	Ops    []opView
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	vms, err := s.Client.ListVMs(ctx)
	if err != nil {
		err = fmt.Errorf("listing vms: %w", err)
	}
	slices.SortFunc(vms, func(x, y rpc.VM) int { return strings.Compare(x.Name, y.Name) })
	if wantsJSON(r) {
		if err != nil {
			s.fail(w, r, statusOf(err), err)
			return
		}
		if vms == nil {
			vms = []rpc.VM{}
		}
		writeJSON(w, http.StatusOK, vms)
		return
	}
	v := vmsPage{base: newBase(w, r, "VMs", "vms"), VMs: vms, Ops: s.ops.running("create", "start")}
	status := http.StatusOK
	if err != nil {
		v.addError(err)
		status = statusOf(err)
	} else if v.Images, err = s.Client.ListImages(ctx); err != nil {
		v.addError(fmt.Errorf("listing images for the create form: %w", err))
	}
	s.render(w, status, "vms", v)
}

// vmPage is one VM's details.
type vmPage struct {
	base
	VM         rpc.VM
	Console    []string
	ConsoleErr string
	SSH        string
}

// vmJSON is the JSON answer of the VM page.
type vmJSON struct {
	VM         *rpc.VM  `json:"vm"`
	SSHCommand string   `json:"ssh_command"`
	Console    []string `json:"console_tail"`
	ConsoleErr string   `json:"console_error,omitempty"`
}

func (s *Server) showVM(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	vm, err := s.Client.GetVM(r.Context(), name)
	if err != nil {
		s.fail(w, r, statusOf(err), fmt.Errorf("showing vm %s: %w", name, err))
		return
	}
	console, cerr := s.consoleTail(r.Context(), vm.Name)
	ssh := "banger vm ssh " + shellQuote(vm.Name)
	if wantsJSON(r) {
		j := vmJSON{VM: vm, SSHCommand: ssh, Console: console}
		if cerr != nil {
			j.ConsoleErr = cerr.Error()
		}
		writeJSON(w, http.StatusOK, j)
		return
	}
	v := vmPage{base: newBase(w, r, vm.Name, "vms"), VM: *vm, Console: console, SSH: ssh}
	if cerr != nil {
		v.ConsoleErr = cerr.Error()
	}
	s.render(w, http.StatusOK, "vm", v)
}

// consoleTail returns the last lines of a VM's serial console, reading its
// tail only, for at most the server's log timeout.
func (s *Server) consoleTail(ctx context.Context, name string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.logTimeout)
	defer cancel()
	tw := newTailWriter(consoleLines)
	err := s.Client.LogsTail(ctx, name, consoleTailBytes, tw)
	if err != nil {
		err = fmt.Errorf("reading the console log of vm %s: %w", name, err)
	}
	return tw.Lines(), err
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request) {
	req, err := parseCreateForm(r)
	if err != nil {
		s.done(w, r, "/", "", err, nil)
		return
	}
	s.startOp(w, r, "create", req.Name, func(ctx context.Context, fn func(rpc.Event)) (opResult, error) {
		vm, err := s.Client.CreateVM(ctx, req, fn)
		return opResult{VM: vm}, err
	})
}

// parseCreateForm reads the create form: name, image, vcpus, memory, disk_size, nat.
func parseCreateForm(r *http.Request) (rpc.CreateRequest, error) {
	if err := r.ParseForm(); err != nil {
		return rpc.CreateRequest{}, inputErrorf("creating vm: reading the form: %v", err)
	}
	f := r.PostForm
	req := rpc.CreateRequest{
		Name:     strings.TrimSpace(f.Get("name")),
		Image:    strings.TrimSpace(f.Get("image")),
		DiskSize: strings.TrimSpace(f.Get("disk_size")),
		WorkSize: strings.TrimSpace(f.Get("work_size")),
		NAT:      f.Get("nat") != "",
	}
	if req.Name == "" {
		return req, inputErrorf("creating vm: it needs a name, for example testbox")
	}
	if v := strings.TrimSpace(f.Get("vcpus")); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return req, inputErrorf("creating vm %s: vCPUs must be a positive whole number, got %q", req.Name, v)
		}
		req.VCPUs = n
	}
	if v := strings.TrimSpace(f.Get("memory")); v != "" {
		n, err := units.ParseMiB(v)
		if err != nil {
			return req, inputErrorf("creating vm %s: %v", req.Name, err)
		}
		req.MemoryMiB = n
	}
	var specs []portfwd.Spec
	for _, field := range strings.FieldsFunc(f.Get("publish"), func(r rune) bool { return r == ',' || unicode.IsSpace(r) }) {
		s, err := portfwd.ParseSpec(field)
		if err != nil {
			return req, inputErrorf("creating vm %s: %v", req.Name, err)
		}
		specs = append(specs, s)
	}
	if err := portfwd.Check(specs); err != nil {
		return req, inputErrorf("creating vm %s: %v", req.Name, err)
	}
	for _, s := range specs {
		req.Ports = append(req.Ports, rpc.Port{Proto: s.Proto, HostIP: s.HostIP.String(), HostPort: int(s.HostPort), GuestPort: int(s.GuestPort)})
	}
	return req, nil
}

func (s *Server) startVM(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.startOp(w, r, "start", name, func(ctx context.Context, fn func(rpc.Event)) (opResult, error) {
		vm, err := s.Client.StartVM(ctx, name, fn)
		return opResult{VM: vm}, err
	})
}

// back is where a quick VM action returns to: the form's "back" field when
// it is a path of this UI, else the VM list.
func back(r *http.Request) string {
	return localPath(r.PostFormValue("back"), "/")
}

func (s *Server) stopVM(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	vm, err := s.Client.StopVM(r.Context(), name)
	if err != nil {
		err = fmt.Errorf("stopping vm %s: %w", name, err)
	}
	s.done(w, r, back(r), name+" stopped", err, vm)
}

func (s *Server) suspendVM(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	vm, err := s.Client.SuspendVM(r.Context(), name)
	if err != nil {
		err = fmt.Errorf("suspending vm %s: %w", name, err)
	}
	s.done(w, r, back(r), name+" suspended", err, vm)
}

func (s *Server) deleteVM(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	to := back(r)
	force := r.PostFormValue("force") != ""
	err := func() error {
		if !force {
			vm, err := s.Client.GetVM(r.Context(), name)
			if err != nil {
				return err
			}
			if vm.State == "running" {
				return inputErrorf("vm %s is running: stop it first, or tick \"force\" to stop and delete it", name)
			}
		}
		return s.Client.DeleteVM(r.Context(), name)
	}()
	if err != nil {
		err = fmt.Errorf("deleting vm %s: %w", name, err)
	} else if strings.HasPrefix(to, "/vms/") {
		to = "/" // the VM's page is gone
	}
	s.done(w, r, to, name+" deleted", err, nil)
}

func (s *Server) setNAT(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var nat bool
	var err error
	switch v := r.PostFormValue("nat"); v {
	case "on", "true", "1":
		nat = true
	case "off", "false", "0":
	default:
		err = inputErrorf("setting nat on vm %s: the form's nat must be on or off, got %q", name, v)
	}
	var vm *rpc.VM
	if err == nil {
		if vm, err = s.Client.SetVM(r.Context(), name, rpc.SetRequest{NAT: &nat}); err != nil {
			err = fmt.Errorf("setting nat on vm %s: %w", name, err)
		}
	}
	s.done(w, r, back(r), fmt.Sprintf("%s: NAT %s", name, onOff(nat)), err, vm)
}
