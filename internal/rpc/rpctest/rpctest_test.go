package rpctest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
)

// wantAPIError checks that err is the daemon's answer with status and code.
func wantAPIError(t *testing.T, what string, err error, status int, code string) {
	t.Helper()
	var ae *rpc.APIError
	if !errors.As(err, &ae) || ae.Status != status || ae.Err.Code != code || ae.Err.Message == "" {
		t.Errorf("%s = %v (%#v), want %d %s with a message", what, err, ae, status, code)
	}
}

func TestErrors(t *testing.T) {
	f := Start(t)
	c := f.Client()
	ctx := context.Background()
	f.Add(rpc.VM{Name: "box", State: "running"})
	_, err := c.GetVM(ctx, "nope")
	wantAPIError(t, "GetVM nope", err, 404, rpc.CodeNotFound)
	_, err = c.StopVM(ctx, "nope")
	wantAPIError(t, "StopVM nope", err, 404, rpc.CodeNotFound)
	_, err = c.StartVM(ctx, "nope", nil)
	wantAPIError(t, "StartVM nope", err, 404, rpc.CodeNotFound)
	_, err = c.CreateVM(ctx, rpc.CreateRequest{Name: "box"}, nil)
	wantAPIError(t, "CreateVM box again", err, 409, rpc.CodeExists)
	_, err = c.CreateVM(ctx, rpc.CreateRequest{Name: "Bad_Name"}, nil)
	wantAPIError(t, "CreateVM Bad_Name", err, 400, rpc.CodeInvalid)
	_, err = c.CreateVM(ctx, rpc.CreateRequest{Name: "x", Image: "nosuch"}, nil)
	wantAPIError(t, "CreateVM with an unknown image", err, 400, rpc.CodeInvalid)
	_, err = c.RegisterImage(ctx, rpc.RegisterImageRequest{Name: "mine", Rootfs: "/x/r.qcow2"})
	wantAPIError(t, "RegisterImage of a qcow2", err, 400, rpc.CodeInvalid)
	_, err = c.RegisterImage(ctx, rpc.RegisterImageRequest{Name: "docker", Rootfs: "/x/r.ext4"})
	wantAPIError(t, "RegisterImage over a bundle image", err, 409, rpc.CodeExists)
	wantAPIError(t, "DeleteImage docker", c.DeleteImage(ctx, "docker"), 400, rpc.CodeInvalid)
	wantAPIError(t, "DeleteImage nosuch", c.DeleteImage(ctx, "nosuch"), 404, rpc.CodeNotFound)
	if err := c.DeleteVM(ctx, "box"); err != nil {
		t.Errorf("DeleteVM box = %v", err)
	}
	wantAPIError(t, "DeleteVM box again", c.DeleteVM(ctx, "box"), 404, rpc.CodeNotFound)
}

func TestBoot(t *testing.T) {
	f := Start(t)
	c := f.Client()
	ctx := context.Background()
	var types []string
	vm, err := c.CreateVM(ctx, rpc.CreateRequest{Name: "a", NAT: true}, func(ev rpc.Event) { types = append(types, ev.Type) })
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"stage", "stage_done", "stage", "log", "stage_done", "done"}; !slices.Equal(types, want) {
		t.Errorf("events = %q, want %q", types, want)
	}
	if vm.State != "running" || vm.IP != "172.30.0.2" || vm.Image != "docker" || vm.VCPUs != 2 || vm.MemoryMiB != 1024 || !vm.NAT || len(vm.Stages) != 2 {
		t.Errorf("created vm = %+v", vm)
	}
	if got, _ := c.GetVM(ctx, vm.ID); got.Name != "a" {
		t.Errorf("GetVM by id %s = %+v", vm.ID, got)
	}

	f.FailBoot("b", "guest did not answer")
	vm, err = c.CreateVM(ctx, rpc.CreateRequest{Name: "b"}, nil)
	if err == nil || err.Error() != "guest did not answer" || vm == nil || vm.State != "error" || vm.IP != "172.30.0.3" {
		t.Errorf("failed boot = %+v, %v, want the error and the vm in the error state", vm, err)
	}

	// A boot whose client goes away carries on once released.
	release := f.Hold("b")
	cctx, cancel := context.WithCancel(ctx)
	_, err = c.StartVM(cctx, "b", func(ev rpc.Event) {
		if ev.Type == "log" {
			cancel()
		}
	})
	if err == nil {
		t.Fatalf("StartVM with a held boot and a cancelled client returned no error")
	}
	if vm, _ := f.VM("b"); vm.State != "starting" {
		t.Errorf("held vm state = %s, want starting", vm.State)
	}
	f.FailBoot("b", "")
	release()
	deadline := time.Now().Add(5 * time.Second)
	for vm, _ := f.VM("b"); vm.State != "running"; vm, _ = f.VM("b") {
		if time.Now().After(deadline) {
			t.Fatalf("released vm state = %s, want running", vm.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestListAndShutdown(t *testing.T) {
	f := New()
	f.ReverseVMs = true
	f.Add(rpc.VM{Name: "a"})
	f.Add(rpc.VM{Name: "b"})
	socket := filepath.Join(TempDir(t), "run", "bangerd.sock")
	served := make(chan error, 1)
	go func() { served <- f.ListenAndServe(context.Background(), socket) }()
	c := rpc.NewClient(socket)
	ctx := context.Background()
	var vms []rpc.VM
	var err error
	for range 100 {
		if vms, err = c.ListVMs(ctx); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || len(vms) != 2 || vms[0].Name != "b" {
		t.Fatalf("ListVMs = %+v, %v, want b then a", vms, err)
	}
	if st, err := c.Status(ctx); err != nil || st.VMs != 2 || st.Socket != socket {
		t.Errorf("Status = %+v, %v", st, err)
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("ListenAndServe = %v, want nil after a shutdown", err)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("socket after shutdown: %v, want it gone", err)
	}
}
