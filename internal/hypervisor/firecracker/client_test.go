package firecracker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/hypervisor/firecracker/fctest"
)

// fixture is an in-process fake API with the files a VM config points at.
type fixture struct {
	dir    string
	srv    *fctest.Server
	c      *Client
	kernel string
	initrd string
	disk   string
	disk2  string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{dir: dir, srv: fctest.NewServer("vm-1")}
	f.kernel = touch(t, dir, "vmlinux")
	f.initrd = touch(t, dir, "initrd.img")
	f.disk = touch(t, dir, "root.ext4")
	f.disk2 = touch(t, dir, "work.ext4")
	sock := filepath.Join(dir, APISocketName)
	if err := f.srv.Listen(sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.srv.Close() })
	f.c = NewClient(sock)
	t.Cleanup(f.c.Close)
	return f
}

func touch(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// configure makes every pre-boot call banger makes, with valid bodies.
func (f *fixture) configure(t *testing.T, ctx context.Context) {
	t.Helper()
	c := f.c
	logPath := touch(t, f.dir, "firecracker.log")
	for _, step := range []struct {
		name string
		err  error
	}{
		{"logger", c.PutLogger(ctx, Logger{LogPath: logPath, Level: "Info", ShowLevel: true})},
		{"machine", c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 256})},
		{"boot", c.PutBootSource(ctx, BootSource{KernelImagePath: f.kernel, InitrdPath: f.initrd, BootArgs: "console=ttyS0"})},
		{"root", c.PutDrive(ctx, Drive{DriveID: "root", PathOnHost: f.disk, IsRootDevice: true})},
		{"work", c.PutDrive(ctx, Drive{DriveID: "work", PathOnHost: f.disk2})},
		{"eth0", c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap-vm1", GuestMAC: "06:00:0a:00:00:02"})},
		{"vsock", c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: filepath.Join(f.dir, VsockSocketName)})},
		{"entropy", c.PutEntropy(ctx, Entropy{})},
	} {
		if step.err != nil {
			t.Fatalf("%s: %v", step.name, step.err)
		}
	}
}

func TestClientConfiguresAndBoots(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)

	info, err := f.c.Instance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := InstanceInfo{ID: "vm-1", State: StateNotStarted, VMMVersion: fctest.Version, AppName: "Firecracker"}
	if info != want {
		t.Errorf("Instance() = %+v, want %+v", info, want)
	}
	if v, err := f.c.Version(ctx); err != nil || v != fctest.Version {
		t.Errorf("Version() = %q, %v, want %q", v, err, fctest.Version)
	}

	f.configure(t, ctx)
	if err := f.c.Action(ctx, InstanceStart); err != nil {
		t.Fatalf("InstanceStart: %v", err)
	}
	if info, _ := f.c.Instance(ctx); info.State != StateRunning {
		t.Errorf("state after InstanceStart = %q, want %q", info.State, StateRunning)
	}
	if err := f.c.PatchVM(ctx, Paused); err != nil {
		t.Fatal(err)
	}
	if info, _ := f.c.Instance(ctx); info.State != StatePaused {
		t.Errorf("state after pause = %q, want %q", info.State, StatePaused)
	}
	if err := f.c.PatchVM(ctx, Resumed); err != nil {
		t.Fatal(err)
	}

	wantCalls := []string{
		"GET /", "GET /version",
		"PUT /logger", "PUT /machine-config", "PUT /boot-source", "PUT /drives/root", "PUT /drives/work",
		"PUT /network-interfaces/eth0", "PUT /vsock", "PUT /entropy", "PUT /actions",
		"GET /", "PATCH /vm", "GET /", "PATCH /vm",
	}
	if got := f.srv.Succeeded(); !reflect.DeepEqual(got, wantCalls) {
		t.Errorf("calls = %q, want %q", got, wantCalls)
	}
	// The wire format is what the API documents.
	bodies := map[string]string{}
	for _, c := range f.srv.Calls() {
		bodies[c.String()] = c.Body
	}
	for call, want := range map[string]string{
		"PUT /machine-config": `{"vcpu_count":2,"mem_size_mib":256,"smt":false}`,
		"PUT /drives/work":    `{"drive_id":"work","path_on_host":"` + f.disk2 + `","is_root_device":false,"is_read_only":false}`,
		"PUT /entropy":        `{}`,
		"PATCH /vm":           `{"state":"Resumed"}`,
	} {
		if got := bodies[call]; got != want {
			t.Errorf("body of %s = %s, want %s", call, got, want)
		}
	}
}

func TestClientRejectsBadCalls(t *testing.T) {
	tests := []struct {
		name   string
		booted bool // configure and InstanceStart first
		method string
		path   string
		body   string // raw JSON; "" sends no body
		fault  string // substring of the fault_message; "" means success
	}{
		{"machine ok", false, "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`, ""},
		{"machine odd vcpus without smt", false, "PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":128,"smt":false}`, ""},
		{"machine odd vcpus with smt", false, "PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":128,"smt":true}`, "with smt it must be 1 or even"},
		{"machine no body", false, "PUT", "/machine-config", ``, "no body"},
		{"machine unknown field", false, "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"vcpus":2}`, `unknown field "vcpus"`},
		{"machine missing mem", false, "PUT", "/machine-config", `{"vcpu_count":1}`, "needs vcpu_count and mem_size_mib"},
		{"machine 0 vcpus", false, "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":128}`, "out of range"},
		{"machine 33 vcpus", false, "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":128}`, "out of range"},
		{"machine 0 mem", false, "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":0}`, "must be positive"},
		{"machine wrong type", false, "PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":128}`, "invalid JSON body"},
		{"machine trailing data", false, "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}{}`, "data after the object"},
		{"boot no kernel", false, "PUT", "/boot-source", `{"boot_args":"x"}`, "needs kernel_image_path"},
		{"boot missing kernel file", false, "PUT", "/boot-source", `{"kernel_image_path":"/nonexistent/vmlinux"}`, "no such file"},
		{"boot missing initrd file", false, "PUT", "/boot-source", `{"kernel_image_path":"KERNEL","initrd_path":"/nonexistent/initrd"}`, "initrd_path"},
		{"drive ok", false, "PUT", "/drives/root", `{"drive_id":"root","path_on_host":"DISK","is_root_device":true,"is_read_only":false}`, ""},
		{"drive id mismatch", false, "PUT", "/drives/root", `{"drive_id":"rootfs","path_on_host":"DISK","is_root_device":true,"is_read_only":false}`, "differs"},
		{"drive missing file", false, "PUT", "/drives/root", `{"drive_id":"root","path_on_host":"/nonexistent.ext4","is_root_device":true,"is_read_only":false}`, "path_on_host"},
		{"drive no is_root_device", false, "PUT", "/drives/root", `{"drive_id":"root","path_on_host":"DISK","is_read_only":false}`, "needs drive_id and is_root_device"},
		{"drive no is_read_only", false, "PUT", "/drives/root", `{"drive_id":"root","path_on_host":"DISK","is_root_device":true}`, "needs path_on_host and is_read_only"},
		{"drive bad cache", false, "PUT", "/drives/root", `{"drive_id":"root","path_on_host":"DISK","is_root_device":true,"is_read_only":false,"cache_type":"Fast"}`, "cache_type"},
		{"nic ok", false, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}`, ""},
		{"nic id mismatch", false, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth1","host_dev_name":"tap0"}`, "differs"},
		{"nic no tap", false, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, "needs iface_id and host_dev_name"},
		{"nic bad mac", false, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00"}`, "not a MAC"},
		{"vsock cid 2", false, "PUT", "/vsock", `{"guest_cid":2,"uds_path":"VSOCK"}`, "must be 3 or more"},
		{"vsock no path", false, "PUT", "/vsock", `{"guest_cid":3}`, "needs guest_cid and uds_path"},
		{"entropy no body", false, "PUT", "/entropy", ``, "no body"},
		{"logger bad level", false, "PUT", "/logger", `{"level":"Loud"}`, "unknown log level"},
		{"logger missing file", false, "PUT", "/logger", `{"log_path":"/nonexistent/fc.log"}`, "opening log_path"},
		{"action unknown", false, "PUT", "/actions", `{"action_type":"Reboot"}`, "unknown action_type"},
		{"start without boot source", false, "PUT", "/actions", `{"action_type":"InstanceStart"}`, "no boot source"},
		{"ctrl-alt-del before boot", false, "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, "not running"},
		{"pause before boot", false, "PATCH", "/vm", `{"state":"Paused"}`, "has not started"},
		{"unknown path", false, "PUT", "/balloons", `{}`, "invalid request method and/or path"},
		{"wrong method", false, "POST", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`, "invalid request method and/or path"},
		{"machine after boot", true, "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`, "only allowed before the microVM starts"},
		{"drive after boot", true, "PUT", "/drives/extra", `{"drive_id":"extra","path_on_host":"DISK","is_root_device":false,"is_read_only":true}`, "only allowed before"},
		{"second root after boot", true, "PUT", "/drives/extra", `{"drive_id":"extra","path_on_host":"DISK","is_root_device":true,"is_read_only":true}`, "only allowed before"},
		{"start twice", true, "PUT", "/actions", `{"action_type":"InstanceStart"}`, "already started"},
		{"vm bad state", true, "PATCH", "/vm", `{"state":"Stopped"}`, "unknown vm state"},
		{"snapshot while running", true, "PUT", "/snapshot/create", `{"mem_file_path":"/tmp/x","snapshot_path":"/tmp/y"}`, "must be paused"},
		{"load after configuring", true, "PUT", "/snapshot/load", `{"snapshot_path":"/tmp/y","mem_file_path":"/tmp/x"}`, "only allowed before"},
		{"logger after boot", true, "PUT", "/logger", `{"level":"Debug"}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := ctxT(t)
			if tt.booted {
				f.configure(t, ctx)
				if err := f.c.Action(ctx, InstanceStart); err != nil {
					t.Fatal(err)
				}
			}
			body := strings.NewReplacer("KERNEL", f.kernel, "DISK", f.disk, "VSOCK", filepath.Join(f.dir, "v.sock")).Replace(tt.body)
			var in []byte
			if body != "" {
				in = []byte(body)
			}
			err := f.c.send(ctx, tt.method, tt.path, in, nil)
			if tt.fault == "" {
				if err != nil {
					t.Fatalf("%s %s %s = %v, want success", tt.method, tt.path, body, err)
				}
				return
			}
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("%s %s %s = %v, want an *APIError", tt.method, tt.path, body, err)
			}
			if ae.Status != http.StatusBadRequest || !strings.Contains(ae.Fault, tt.fault) {
				t.Errorf("%s %s %s = %d %q, want 400 with %q", tt.method, tt.path, body, ae.Status, ae.Fault, tt.fault)
			}
		})
	}
}

func TestFakeOnlyOneRootDrive(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	if err := f.c.PutDrive(ctx, Drive{DriveID: "a", PathOnHost: f.disk, IsRootDevice: true}); err != nil {
		t.Fatal(err)
	}
	// Replacing the same drive is an update, not a second root.
	if err := f.c.PutDrive(ctx, Drive{DriveID: "a", PathOnHost: f.disk2, IsRootDevice: true}); err != nil {
		t.Fatalf("updating root drive: %v", err)
	}
	err := f.c.PutDrive(ctx, Drive{DriveID: "b", PathOnHost: f.disk2, IsRootDevice: true})
	if err == nil || !strings.Contains(err.Error(), "drive a already is") {
		t.Errorf("second root drive = %v, want a refusal naming drive a", err)
	}
	if err := f.c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"}); err != nil {
		t.Fatal(err)
	}
	err = f.c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth1", HostDevName: "tap0"})
	if err == nil || !strings.Contains(err.Error(), "already used") {
		t.Errorf("second interface on tap0 = %v, want a refusal", err)
	}
}

func TestAPIErrorText(t *testing.T) {
	tests := []struct {
		err  APIError
		want string
	}{
		{APIError{"PUT", "/drives/root", 400, "drive_id differs"}, "PUT /drives/root: firecracker says: drive_id differs"},
		{APIError{"GET", "/", 500, ""}, "GET /: firecracker answered 500 Internal Server Error"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("(%+v).Error() = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestClientDecodesErrorBodies(t *testing.T) {
	tests := []struct {
		status int
		body   string
		want   string
	}{
		{400, `{"fault_message":"The kernel file cannot be opened"}`, "PUT /boot-source: firecracker says: The kernel file cannot be opened"},
		{500, "internal trouble\n", "PUT /boot-source: firecracker says: internal trouble"},
		{400, ``, "PUT /boot-source: firecracker answered 400 Bad Request"},
	}
	for _, tt := range tests {
		sock := filepath.Join(t.TempDir(), "api.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tt.status)
			w.Write([]byte(tt.body))
		})}
		go srv.Serve(ln)
		c := NewClient(sock)
		err = c.PutBootSource(ctxT(t), BootSource{KernelImagePath: "/k"})
		if err == nil || err.Error() != tt.want {
			t.Errorf("PutBootSource against %d %q = %v, want %q", tt.status, tt.body, err, tt.want)
		}
		c.Close()
		srv.Close()
	}
}

func TestClientNoSocket(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "missing.sock"))
	_, err := c.Instance(ctxT(t))
	if err == nil || !strings.Contains(err.Error(), "GET / on ") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Instance() without a socket = %v, want an error naming the call that wraps ENOENT", err)
	}
}

func TestClientSnapshotRoundTrip(t *testing.T) {
	f := newFixture(t)
	ctx := ctxT(t)
	f.configure(t, ctx)
	if err := f.c.Action(ctx, InstanceStart); err != nil {
		t.Fatal(err)
	}
	snap, mem := filepath.Join(f.dir, "vm.snap"), filepath.Join(f.dir, "vm.mem")
	if err := f.c.CreateSnapshot(ctx, SnapshotCreate{SnapshotPath: snap, MemFilePath: mem}); err == nil {
		t.Error("CreateSnapshot while running succeeded, want a refusal")
	}
	if err := f.c.PatchVM(ctx, Paused); err != nil {
		t.Fatal(err)
	}
	if err := f.c.CreateSnapshot(ctx, SnapshotCreate{SnapshotPath: snap, MemFilePath: mem}); err != nil {
		t.Fatal(err)
	}

	// Restore into a fresh fake, on a new vsock path.
	dir2 := t.TempDir()
	srv2 := fctest.NewServer("vm-1")
	if err := srv2.Listen(filepath.Join(dir2, APISocketName)); err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	c2 := NewClient(filepath.Join(dir2, APISocketName))
	defer c2.Close()
	vs := filepath.Join(dir2, VsockSocketName)
	err := c2.LoadSnapshot(ctx, SnapshotLoad{
		SnapshotPath:     snap,
		MemBackend:       MemBackend{BackendType: "File", BackendPath: mem},
		ResumeVM:         true,
		NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap-vm2"}},
		VsockOverride:    &VsockOverride{UDSPath: vs},
	})
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := c2.Instance(ctx); info.State != StateRunning {
		t.Errorf("state after LoadSnapshot(resume) = %q, want %q", info.State, StateRunning)
	}
	newDisk := touch(t, dir2, "root.ext4")
	if err := c2.PatchDrive(ctx, PartialDrive{DriveID: "root", PathOnHost: newDisk}); err != nil {
		t.Fatal(err)
	}
	cfg, err := c2.VMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := VMConfig{
		MachineConfig: MachineConfig{VCPUCount: 2, MemSizeMiB: 256},
		Drives: []Drive{
			{DriveID: "root", PathOnHost: newDisk, IsRootDevice: true},
			{DriveID: "work", PathOnHost: f.disk2},
		},
		NetworkInterfaces: []NetworkInterface{{IfaceID: "eth0", HostDevName: "tap-vm2", GuestMAC: "06:00:0a:00:00:02"}},
		Vsock:             &Vsock{GuestCID: 3, UDSPath: vs},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("VMConfig() after restore = %+v, want %+v", cfg, want)
	}
	for _, c := range srv2.Calls() {
		if c.String() == "PATCH /drives/root" && c.Body != `{"drive_id":"root","path_on_host":"`+newDisk+`"}` {
			t.Errorf("PATCH /drives/root body = %s", c.Body)
		}
	}
	conn, err := dialVsock(ctx, vs, 1024)
	if err != nil {
		t.Fatalf("dialing the restored agent: %v", err)
	}
	conn.Close()
}
