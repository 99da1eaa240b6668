package fctest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// put sends a raw request to the server's socket.
func put(t *testing.T, sock, method, path, body string) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func bootedServer(t *testing.T) (s *Server, dir string) {
	t.Helper()
	dir = t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, nil, 0o600)
	s = NewServer("vm-a")
	sock := filepath.Join(dir, "api.sock")
	if err := s.Listen(sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, c := range [][3]string{
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`},
		{"PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, kernel)},
		{"PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, filepath.Join(dir, "v.sock"))},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
	} {
		if code, body := put(t, sock, c[0], c[1], c[2]); code != http.StatusNoContent {
			t.Fatalf("%s %s = %d %s, want 204", c[0], c[1], code, body)
		}
	}
	return s, dir
}

func TestErrorBodyIsFaultMessage(t *testing.T) {
	s, dir := bootedServer(t)
	code, body := put(t, filepath.Join(dir, "api.sock"), "PUT", "/entropy", `{}`)
	want := `{"fault_message":"PUT /entropy is only allowed before the microVM starts, and it has started"}` + "\n"
	if code != http.StatusBadRequest || body != want {
		t.Errorf("PUT /entropy after boot = %d %q, want 400 %q", code, body, want)
	}
	calls := s.Calls()
	if last := calls[len(calls)-1]; last.Status != 400 || !strings.Contains(last.Fault, "only allowed before") {
		t.Errorf("recorded call = %+v, want the 400 and its fault", last)
	}
}

func TestVsockAgent(t *testing.T) {
	tests := []struct {
		connect string
		request string
		want    string // prefix of the agent's answer; "" means the connection closes
	}{
		{"CONNECT 1024\n", `{"op":"health"}`, `{"hostname":"vm-a","ok":true,`},
		{"CONNECT 1024\n", `{"op":"dance"}`, `{"error":"unknown op \"dance\"","ok":false}`},
		{"CONNECT 1024\n", `not json`, `{"error":"decoding request:`},
		{"CONNECT 22\n", `{"op":"health"}`, ""},
		{"HELLO\n", `{"op":"health"}`, ""},
	}
	_, dir := bootedServer(t)
	for _, tt := range tests {
		c, err := net.Dial("unix", filepath.Join(dir, "v.sock"))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, tt.connect)
		br := bufio.NewReader(c)
		ok, err := br.ReadString('\n')
		if tt.want == "" {
			if err == nil {
				t.Errorf("%q answered %q, want the connection closed", tt.connect, ok)
			}
			c.Close()
			continue
		}
		if !strings.HasPrefix(ok, "OK ") {
			t.Fatalf("%q answered %q, %v, want OK <port>", tt.connect, ok, err)
		}
		io.WriteString(c, tt.request+"\n")
		got, _ := br.ReadString('\n')
		if !strings.HasPrefix(got, tt.want) {
			t.Errorf("agent(%s) = %q, want prefix %q", tt.request, got, tt.want)
		}
		c.Close()
	}
}

func TestCtrlAltDelPowersOff(t *testing.T) {
	s, dir := bootedServer(t)
	sock := filepath.Join(dir, "api.sock")
	if code, body := put(t, sock, "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`); code != http.StatusNoContent {
		t.Fatalf("SendCtrlAltDel = %d %s", code, body)
	}
	select {
	case <-s.PoweredOff():
	case <-time.After(5 * time.Second):
		t.Fatal("no power-off after SendCtrlAltDel")
	}
	s.Close()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("api socket after power-off: %v, want it removed", err)
	}
}

func TestMainRejectsBadFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"--no-such-flag"}, &out, &errb); code != 1 {
		t.Errorf("Main(--no-such-flag) = %d, want 1", code)
	}
	sock := filepath.Join(t.TempDir(), "taken.sock")
	os.WriteFile(sock, nil, 0o600)
	if code := Main([]string{"--api-sock", sock}, &out, &errb); code != 1 {
		t.Errorf("Main on an existing path = %d, want 1", code)
	}
	if !strings.Contains(errb.String(), "address already in use") {
		t.Errorf("stderr = %q, want it to say the address is in use", errb.String())
	}
}

// snapshotted is a fake microVM that booted with two drives, a NIC and a
// vsock, was paused and snapshotted.
type snapshotted struct {
	srv             *Server
	dir             string
	snap, mem, disk string
	hostKey         string
}

func snapshotSource(t *testing.T) snapshotted {
	t.Helper()
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, nil, 0o600)
	root, work := filepath.Join(dir, "root.ext4"), filepath.Join(dir, "work.ext4")
	os.WriteFile(root, []byte("root"), 0o600)
	os.WriteFile(work, []byte("work"), 0o600)
	s := NewServer("vm-src")
	sock := filepath.Join(dir, "api.sock")
	if err := s.Listen(sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	snap, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	for _, c := range [][3]string{
		{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`},
		{"PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, kernel)},
		{"PUT", "/drives/root", fmt.Sprintf(`{"drive_id":"root","path_on_host":%q,"is_root_device":true,"is_read_only":false}`, root)},
		{"PUT", "/drives/work", fmt.Sprintf(`{"drive_id":"work","path_on_host":%q,"is_root_device":false,"is_read_only":false}`, work)},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap-src","guest_mac":"06:00:0a:00:00:02"}`},
		{"PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, filepath.Join(dir, "v.sock"))},
		{"PUT", "/entropy", `{}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
		{"PATCH", "/vm", `{"state":"Paused"}`},
		{"PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_type":"Full","snapshot_path":%q,"mem_file_path":%q}`, snap, mem)},
	} {
		if c[1] == "/snapshot/create" {
			// The guest has been up for an hour when it is snapshotted.
			s.mu.Lock()
			s.booted = s.booted.Add(-time.Hour)
			s.mu.Unlock()
		}
		if code, body := put(t, sock, c[0], c[1], c[2]); code != http.StatusNoContent {
			t.Fatalf("%s %s = %d %s, want 204", c[0], c[1], code, body)
		}
	}
	return snapshotted{srv: s, dir: dir, snap: snap, mem: mem, disk: root, hostKey: s.HostKey()}
}

// freshServer is a new fake process's API, nothing configured.
func freshServer(t *testing.T, id string) (*Server, string) {
	t.Helper()
	dir := t.TempDir()
	s := NewServer(id)
	sock := filepath.Join(dir, "api.sock")
	if err := s.Listen(sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

// faultOf is the fault_message of an error body, or "" when it has none.
func faultOf(body string) string {
	var f struct {
		FaultMessage string `json:"fault_message"`
	}
	json.Unmarshal([]byte(body), &f)
	return f.FaultMessage
}

// poweredOff reports whether s ends within a short while.
func poweredOff(s *Server) bool {
	select {
	case <-s.PoweredOff():
		return true
	case <-time.After(200 * time.Millisecond):
		return false
	}
}

func TestSnapshotLoadRules(t *testing.T) {
	src := snapshotSource(t)
	other := snapshotSource(t)
	junk := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(junk, []byte(`{"hello":1}`), 0o600)
	load := func(snap, mem, extra string) string {
		return fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}%s}`, snap, mem, extra)
	}
	tests := []struct {
		name   string
		before [][3]string // calls made first on the fresh process
		body   string      // VSOCK is replaced by a path in the new process's directory
		fault  string      // "" means success
		ends   bool        // the process ends, as Firecracker after a failed load
	}{
		{"file backend", nil, load(src.snap, src.mem, `,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap-new"}],"vsock_override":{"uds_path":"VSOCK"}`), "", false},
		{"deprecated mem_file_path", nil, fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"vsock_override":{"uds_path":"VSOCK"}}`, src.snap, src.mem), "", false},
		{"logger first is allowed", [][3]string{{"PUT", "/logger", `{"level":"Info"}`}}, load(src.snap, src.mem, `,"vsock_override":{"uds_path":"VSOCK"}`), "", false},
		{"recorded vsock path in use", nil, load(src.snap, src.mem, ""), "binding vsock socket", true},
		{"after machine-config", [][3]string{{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`}}, load(src.snap, src.mem, ""), "only allowed on a fresh process", false},
		{"after entropy", [][3]string{{"PUT", "/entropy", `{}`}}, load(src.snap, src.mem, ""), "only allowed on a fresh process", false},
		{"both memory fields", nil, fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}}`, src.snap, src.mem, src.mem), "exactly one of mem_backend and mem_file_path", false},
		{"no memory field", nil, fmt.Sprintf(`{"snapshot_path":%q}`, src.snap), "exactly one of mem_backend and mem_file_path", false},
		{"no snapshot_path", nil, fmt.Sprintf(`{"mem_file_path":%q}`, src.mem), "needs snapshot_path", false},
		{"bad backend type", nil, fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"Disk","backend_path":%q}}`, src.snap, src.mem), "unknown backend_type", false},
		{"override without tap", nil, load(src.snap, src.mem, `,"network_overrides":[{"iface_id":"eth0"}]`), "need iface_id and host_dev_name", false},
		{"override twice", nil, load(src.snap, src.mem, `,"network_overrides":[{"iface_id":"eth0","host_dev_name":"a"},{"iface_id":"eth0","host_dev_name":"b"}]`), "twice", false},
		{"unknown field", nil, load(src.snap, src.mem, `,"drive_overrides":[]`), `unknown field "drive_overrides"`, false},
		{"missing memory file", nil, load(src.snap, src.mem+".gone", ""), "memory file: stat", true},
		{"memory of another snapshot", nil, load(src.snap, other.mem, ""), "does not belong to snapshot", true},
		{"memory file not the fake's", nil, load(src.snap, junk, ""), "not a memory file made by this fake", true},
		{"state file not the fake's", nil, load(junk, src.mem, ""), "not a snapshot made by this fake", true},
		{"unknown iface override", nil, load(src.snap, src.mem, `,"network_overrides":[{"iface_id":"eth1","host_dev_name":"tap-new"}]`), `has no network interface "eth1"`, true},
		{"vsock path taken", nil, load(src.snap, src.mem, fmt.Sprintf(`,"vsock_override":{"uds_path":%q}`, src.snap)), "binding vsock socket", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, dir := freshServer(t, "vm-new")
			sock := filepath.Join(dir, "api.sock")
			for _, c := range tt.before {
				if code, body := put(t, sock, c[0], c[1], c[2]); code != http.StatusNoContent {
					t.Fatalf("%s %s = %d %s", c[0], c[1], code, body)
				}
			}
			body := strings.ReplaceAll(tt.body, "VSOCK", filepath.Join(dir, "new.sock"))
			code, answer := put(t, sock, "PUT", "/snapshot/load", body)
			if tt.fault == "" {
				if code != http.StatusNoContent {
					t.Fatalf("load(%s) = %d %s, want 204", tt.name, code, answer)
				}
				if st := s.State(); st != StatePaused {
					t.Errorf("state after load(%s) = %q, want %q", tt.name, st, StatePaused)
				}
				return
			}
			if code != http.StatusBadRequest || !strings.Contains(faultOf(answer), tt.fault) {
				t.Errorf("load(%s) = %d %s, want 400 with a fault_message containing %q", tt.name, code, answer, tt.fault)
			}
			if got := poweredOff(s); got != tt.ends {
				t.Errorf("process ended after load(%s) = %v, want %v", tt.name, got, tt.ends)
			}
			if !tt.ends && s.State() != StateNotStarted {
				t.Errorf("state after a refused load(%s) = %q, want %q", tt.name, s.State(), StateNotStarted)
			}
		})
	}
}

func TestSnapshotLoadNeedsRecordedDrives(t *testing.T) {
	src := snapshotSource(t)
	os.Remove(src.disk)
	s, dir := freshServer(t, "vm-new")
	code, answer := put(t, filepath.Join(dir, "api.sock"), "PUT", "/snapshot/load",
		fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q}}`, src.snap, src.mem))
	if code != http.StatusBadRequest || !strings.Contains(faultOf(answer), "drive root: path_on_host") {
		t.Errorf("load with a vanished drive = %d %s, want 400 naming drive root", code, answer)
	}
	if !poweredOff(s) {
		t.Error("the process lives on after a failed load")
	}
}

func TestRestoredGuestAnswersOnNewVsock(t *testing.T) {
	src := snapshotSource(t)
	src.srv.Close()
	s, dir := freshServer(t, "vm-new")
	sock, vs := filepath.Join(dir, "api.sock"), filepath.Join(dir, "new.sock")
	newRoot := filepath.Join(dir, "root.ext4")
	os.WriteFile(newRoot, []byte("root"), 0o600)
	for _, c := range [][3]string{
		{"PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_backend":{"backend_type":"File","backend_path":%q},"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap-new"}],"vsock_override":{"uds_path":%q},"resume_vm":false}`, src.snap, src.mem, vs)},
		{"PATCH", "/drives/root", fmt.Sprintf(`{"drive_id":"root","path_on_host":%q}`, newRoot)},
		{"PATCH", "/vm", `{"state":"Resumed"}`},
	} {
		if code, body := put(t, sock, c[0], c[1], c[2]); code != http.StatusNoContent {
			t.Fatalf("%s %s = %d %s, want 204", c[0], c[1], code, body)
		}
	}
	_, cfgBody := put(t, sock, "GET", "/vm/config", "")
	var cfg struct {
		BootSource *json.RawMessage `json:"boot-source"`
		Machine    map[string]any   `json:"machine-config"`
		Drives     []map[string]any `json:"drives"`
		Ifaces     []map[string]any `json:"network-interfaces"`
		Vsock      map[string]any   `json:"vsock"`
	}
	if err := json.Unmarshal([]byte(cfgBody), &cfg); err != nil {
		t.Fatalf("GET /vm/config = %s: %v", cfgBody, err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"boot-source", cfg.BootSource, (*json.RawMessage)(nil)},
		{"vcpu_count", cfg.Machine["vcpu_count"], 2.0},
		{"mem_size_mib", cfg.Machine["mem_size_mib"], 256.0},
		{"drives", len(cfg.Drives), 2},
		{"root path", cfg.Drives[0]["path_on_host"], newRoot},
		{"work path", cfg.Drives[1]["path_on_host"], filepath.Join(src.dir, "work.ext4")},
		{"eth0 tap", cfg.Ifaces[0]["host_dev_name"], "tap-new"},
		{"eth0 mac", cfg.Ifaces[0]["guest_mac"], "06:00:0a:00:00:02"},
		{"vsock path", cfg.Vsock["uds_path"], vs},
		{"vsock cid", cfg.Vsock["guest_cid"], 3.0},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("restored %s = %v, want %v", c.what, c.got, c.want)
		}
	}

	c, err := net.Dial("unix", vs)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "CONNECT 1024\n")
	br := bufio.NewReader(c)
	if ok, err := br.ReadString('\n'); !strings.HasPrefix(ok, "OK ") {
		t.Fatalf("CONNECT on the restored vsock = %q, %v", ok, err)
	}
	io.WriteString(c, `{"op":"health"}`+"\n")
	var h struct {
		Hostname string   `json:"hostname"`
		UptimeMS int64    `json:"uptime_ms"`
		Keys     []string `json:"ssh_host_keys"`
	}
	if err := json.NewDecoder(br).Decode(&h); err != nil {
		t.Fatal(err)
	}
	// The guest is the snapshotted one: its name, key and uptime go on.
	if h.Hostname != "vm-src" || len(h.Keys) != 1 || h.Keys[0] != src.hostKey || h.UptimeMS < time.Hour.Milliseconds() {
		t.Errorf("restored health = %+v, want hostname vm-src, key %s and the snapshot's uptime of an hour or more", h, src.hostKey)
	}
	if s.HostKey() != src.hostKey {
		t.Errorf("HostKey() after restore = %s, want the snapshotted guest's %s", s.HostKey(), src.hostKey)
	}
	if _, err := os.Stat(filepath.Join(src.dir, "v.sock")); !os.IsNotExist(err) {
		t.Errorf("the snapshotted vsock path was bound again (stat: %v)", err)
	}
}

func TestPatchDriveRules(t *testing.T) {
	tests := []struct {
		name   string
		booted bool
		path   string
		body   string // DISK is an existing file
		fault  string
	}{
		{"ok", true, "/drives/root", `{"drive_id":"root","path_on_host":"DISK"}`, ""},
		{"before boot", false, "/drives/root", `{"drive_id":"root","path_on_host":"DISK"}`, "only allowed after the microVM starts"},
		{"unknown drive", true, "/drives/data", `{"drive_id":"data","path_on_host":"DISK"}`, "drive data does not exist"},
		{"missing file", true, "/drives/root", `{"drive_id":"root","path_on_host":"/nonexistent.ext4"}`, "path_on_host"},
		{"id mismatch", true, "/drives/root", `{"drive_id":"work","path_on_host":"DISK"}`, "differs"},
		{"no id", true, "/drives/root", `{"path_on_host":"DISK"}`, "needs drive_id"},
		{"read-only cannot change", true, "/drives/root", `{"drive_id":"root","is_read_only":true}`, `unknown field "is_read_only"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, dir := freshServer(t, "vm-a")
			sock := filepath.Join(dir, "api.sock")
			disk, kernel := filepath.Join(dir, "d.ext4"), filepath.Join(dir, "vmlinux")
			os.WriteFile(disk, nil, 0o600)
			os.WriteFile(kernel, nil, 0o600)
			calls := [][3]string{
				{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`},
				{"PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, kernel)},
				{"PUT", "/drives/root", fmt.Sprintf(`{"drive_id":"root","path_on_host":%q,"is_root_device":true,"is_read_only":false}`, kernel)},
			}
			if tt.booted {
				calls = append(calls, [3]string{"PUT", "/actions", `{"action_type":"InstanceStart"}`})
			}
			for _, c := range calls {
				if code, body := put(t, sock, c[0], c[1], c[2]); code != http.StatusNoContent {
					t.Fatalf("%s %s = %d %s", c[0], c[1], code, body)
				}
			}
			code, answer := put(t, sock, "PATCH", tt.path, strings.ReplaceAll(tt.body, "DISK", disk))
			if tt.fault == "" {
				if code != http.StatusNoContent {
					t.Fatalf("PATCH %s = %d %s, want 204", tt.path, code, answer)
				}
				if got := *s.vmConfigDrive(t, "root").PathOnHost; got != disk {
					t.Errorf("root path after PATCH = %s, want %s", got, disk)
				}
				return
			}
			if code != http.StatusBadRequest || !strings.Contains(faultOf(answer), tt.fault) {
				t.Errorf("PATCH %s %s = %d %s, want 400 with %q", tt.path, tt.body, code, answer, tt.fault)
			}
		})
	}
}

// vmConfigDrive returns drive id as GET /vm/config reports it.
func (s *Server) vmConfigDrive(t *testing.T, id string) drive {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.vmConfig()["drives"].([]drive) {
		if *d.DriveID == id {
			return d
		}
	}
	t.Fatalf("no drive %s in /vm/config", id)
	return drive{}
}

func TestMainPrintsVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"--version"}, &out, &errb); code != 0 {
		t.Fatalf("Main(--version) = %d, want 0 (stderr %q)", code, errb.String())
	}
	if first, _, _ := strings.Cut(out.String(), "\n"); first != "Firecracker v"+Version {
		t.Errorf("Main(--version) first line = %q, want %q", first, "Firecracker v"+Version)
	}
}
