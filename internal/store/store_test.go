package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"
)

func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", "banger.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestOpenCreatesDirAndMigratesIdempotently(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("state dir mode = %o, want 700", got)
	}
	if err := s.CreateVM(ctx, &VM{Name: "keep"}); err != nil {
		t.Fatal(err)
	}
	var mode string
	if err := s.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v, want wal", mode, err)
	}
	var fk int
	if err := s.db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk); err != nil || fk != 1 {
		t.Errorf("foreign_keys = %d, %v, want 1", fk, err)
	}
	s.Close()

	for i := 0; i < 2; i++ {
		s2, err := Open(path)
		if err != nil {
			t.Fatalf("reopen %d: %v", i, err)
		}
		v, err := s2.SchemaVersion(ctx)
		if err != nil || v != len(migrations) {
			t.Errorf("SchemaVersion() = %d, %v, want %d", v, err, len(migrations))
		}
		var n int
		s2.db.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n)
		if n != len(migrations) {
			t.Errorf("schema_migrations rows = %d, want %d", n, len(migrations))
		}
		if _, err := s2.GetVM(ctx, "keep"); err != nil {
			t.Errorf("GetVM(keep) after reopen: %v", err)
		}
		s2.Close()
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	s, path := openTest(t)
	if _, err := s.db.Exec(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, 'x')`, len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s2, err := Open(path); err == nil {
		s2.Close()
		t.Fatal("Open(newer schema) = nil error, want an error")
	}
}

func TestVMCRUD(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	vm := &VM{
		Name: "alpha", Image: "docker", State: StateCreating, Hypervisor: "qemu", VCPUs: 2,
		MemoryMiB: 1024, DiskSizeBytes: 8 << 30, IP: "172.30.0.2", MAC: "02:42:ac:1e:00:02",
		TAP: "tap-abc", PID: 0, CID: 3, NAT: true, Dir: "/var/lib/banger/vms/x",
		RuntimeDir: "/run/banger/x",
	}
	if err := s.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if vm.ID == "" || vm.CreatedAt.IsZero() {
		t.Fatalf("CreateVM left ID %q, CreatedAt %v unset", vm.ID, vm.CreatedAt)
	}
	for _, key := range []string{vm.ID, "alpha", vm.ID[:6]} {
		got, err := s.GetVM(ctx, key)
		if err != nil {
			t.Fatalf("GetVM(%q): %v", key, err)
		}
		if !got.CreatedAt.Equal(vm.CreatedAt) {
			t.Errorf("GetVM(%q).CreatedAt = %v, want %v", key, got.CreatedAt, vm.CreatedAt)
		}
		got.CreatedAt, got.UpdatedAt = vm.CreatedAt, vm.UpdatedAt
		if !reflect.DeepEqual(*got, *vm) {
			t.Errorf("GetVM(%q) = %+v, want %+v", key, *got, *vm)
		}
	}
	if _, err := s.GetVM(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetVM(nope) = %v, want ErrNotFound", err)
	}

	if vm.DiskFormat != "raw" {
		t.Errorf("CreateVM without a disk format recorded %q, want raw", vm.DiskFormat)
	}
	vm.State, vm.PID, vm.Error, vm.DiskFormat = StateSuspended, 1234, "", "qcow2"
	time.Sleep(time.Millisecond)
	before := vm.UpdatedAt
	if err := s.UpdateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetVM(ctx, vm.ID)
	if got.State != StateSuspended || got.PID != 1234 || got.DiskFormat != "qcow2" || !got.UpdatedAt.After(before) {
		t.Errorf("after UpdateVM: state %q pid %d format %q updated %v, want suspended 1234 qcow2 after %v", got.State, got.PID, got.DiskFormat, got.UpdatedAt, before)
	}
	if err := s.UpdateVM(ctx, &VM{ID: "missing", Name: "m"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateVM(missing) = %v, want ErrNotFound", err)
	}

	if err := s.CreateVM(ctx, &VM{Name: "beta"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateVM(ctx, &VM{Name: "gamma"}); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range list {
		names = append(names, v.Name)
	}
	if fmt.Sprint(names) != "[alpha beta gamma]" {
		t.Errorf("ListVMs() names = %v, want [alpha beta gamma]", names)
	}

	if err := s.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVM(ctx, vm.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeleteVM(deleted) = %v, want ErrNotFound", err)
	}
	if _, err := s.GetVM(ctx, "alpha"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetVM(alpha) after delete = %v, want ErrNotFound", err)
	}
}

func TestCreateVMConflicts(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	if err := s.CreateVM(ctx, &VM{Name: "a", IP: "10.0.0.2", CID: 3, TAP: "tap-a"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		vm   VM
		want string
	}{
		{VM{Name: "a"}, "name"},
		{VM{Name: "b", IP: "10.0.0.2"}, "ip"},
		{VM{Name: "c", CID: 3}, "cid"},
		{VM{Name: "d", TAP: "tap-a"}, "tap"},
	}
	for _, tt := range tests {
		err := s.CreateVM(ctx, &tt.vm)
		if !errors.Is(err, ErrExists) {
			t.Errorf("CreateVM(%+v) = %v, want ErrExists", tt.vm, err)
			continue
		}
		if want := fmt.Sprintf("creating vm %s: %s already exists", tt.vm.Name, tt.want); err.Error() != want {
			t.Errorf("CreateVM(%s) = %q, want %q", tt.vm.Name, err, want)
		}
	}
	// Empty IP, CID and TAP are not unique values.
	for _, n := range []string{"e", "f"} {
		if err := s.CreateVM(ctx, &VM{Name: n}); err != nil {
			t.Errorf("CreateVM(%s without lease) = %v, want nil", n, err)
		}
	}
}

func TestAmbiguousIDPrefix(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	for _, id := range []string{"abc1", "abc2"} {
		if err := s.CreateVM(ctx, &VM{ID: id, Name: "n" + id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.GetVM(ctx, "abc"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("GetVM(abc) = %v, want an ambiguity error", err)
	}
	if got, err := s.GetVM(ctx, "abc2"); err != nil || got.ID != "abc2" {
		t.Errorf("GetVM(abc2) = %v, %v, want abc2", got, err)
	}
	if _, err := s.GetVM(ctx, "ab%"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetVM(ab%%) = %v, want ErrNotFound", err)
	}
}

func TestConcurrentLeases(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	subnet := netip.MustParsePrefix("172.30.0.0/24")
	gw := netip.MustParseAddr("172.30.0.1")
	const n = 20
	vms := make([]*VM, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i] = &VM{Name: fmt.Sprintf("vm%02d", i)}
			errs[i] = s.CreateVMWithLease(ctx, vms[i], subnet, gw)
		}()
	}
	wg.Wait()
	ips, cids := map[string]bool{}, map[uint32]bool{}
	for i, vm := range vms {
		if errs[i] != nil {
			t.Fatalf("CreateVMWithLease(%s): %v", vm.Name, errs[i])
		}
		a := netip.MustParseAddr(vm.IP)
		if !subnet.Contains(a) || a == gw || a == subnet.Addr() {
			t.Errorf("%s got IP %s, want a host address of %s other than %s", vm.Name, a, subnet, gw)
		}
		if ips[vm.IP] || cids[vm.CID] {
			t.Errorf("%s got duplicate lease %s / CID %d", vm.Name, vm.IP, vm.CID)
		}
		if vm.CID < MinCID {
			t.Errorf("%s got CID %d, want >= %d", vm.Name, vm.CID, MinCID)
		}
		ips[vm.IP], cids[vm.CID] = true, true
	}
	// Leases are dense: .2-.21 and CIDs 3-22.
	for i := 2; i < 2+n; i++ {
		if ip := fmt.Sprintf("172.30.0.%d", i); !ips[ip] {
			t.Errorf("IP %s not leased, want the lowest %d hosts used", ip, n)
		}
	}
	for c := uint32(MinCID); c < MinCID+n; c++ {
		if !cids[c] {
			t.Errorf("CID %d not leased, want the lowest %d CIDs used", c, n)
		}
	}

	// Freed leases are reused lowest first.
	if err := s.DeleteVM(ctx, vms[0].ID); err != nil {
		t.Fatal(err)
	}
	v := &VM{Name: "again"}
	if err := s.CreateVMWithLease(ctx, v, subnet, gw); err != nil {
		t.Fatal(err)
	}
	if v.IP != vms[0].IP || v.CID != vms[0].CID {
		t.Errorf("re-lease = %s/%d, want freed %s/%d", v.IP, v.CID, vms[0].IP, vms[0].CID)
	}
}

func TestLeaseExhaustion(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	subnet := netip.MustParsePrefix("10.9.0.0/30")
	gw := netip.MustParseAddr("10.9.0.1")
	vm := &VM{Name: "only"}
	if err := s.CreateVMWithLease(ctx, vm, subnet, gw); err != nil {
		t.Fatal(err)
	}
	if vm.IP != "10.9.0.2" {
		t.Errorf("lease in %s = %s, want 10.9.0.2", subnet, vm.IP)
	}
	err := s.CreateVMWithLease(ctx, &VM{Name: "more"}, subnet, gw)
	if !errors.Is(err, ErrNoFreeAddress) {
		t.Fatalf("CreateVMWithLease(full /30) = %v, want ErrNoFreeAddress", err)
	}
	if _, err := s.GetVM(ctx, "more"); !errors.Is(err, ErrNotFound) {
		t.Errorf("failed lease left vm behind: GetVM(more) = %v", err)
	}
}

func TestAllocateIP(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	if err := s.CreateVM(ctx, &VM{Name: "x", IP: "192.168.5.2"}); err != nil {
		t.Fatal(err)
	}
	gw := netip.MustParseAddr("192.168.5.1")
	tests := []struct {
		subnet   string
		reserved []netip.Addr
		want     string
	}{
		{"192.168.5.0/24", []netip.Addr{gw}, "192.168.5.3"},
		{"192.168.5.0/24", nil, "192.168.5.1"},
		{"192.168.5.77/24", []netip.Addr{gw, netip.MustParseAddr("192.168.5.3")}, "192.168.5.4"},
		{"192.168.6.0/23", []netip.Addr{netip.MustParseAddr("192.168.6.1")}, "192.168.6.2"},
		{"192.168.5.0/30", []netip.Addr{gw}, ""},
		{"192.168.5.0/31", nil, ""},
	}
	for _, tt := range tests {
		got, err := s.AllocateIP(ctx, netip.MustParsePrefix(tt.subnet), tt.reserved)
		if tt.want == "" {
			if !errors.Is(err, ErrNoFreeAddress) {
				t.Errorf("AllocateIP(%s, %v) = %v, %v, want ErrNoFreeAddress", tt.subnet, tt.reserved, got, err)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("AllocateIP(%s, %v) = %v, %v, want %s", tt.subnet, tt.reserved, got, err, tt.want)
		}
	}
}

func TestLastAddr(t *testing.T) {
	tests := []struct{ prefix, want string }{
		{"10.0.0.0/24", "10.0.0.255"},
		{"10.0.0.0/30", "10.0.0.3"},
		{"10.0.0.0/20", "10.0.15.255"},
		{"10.0.0.0/8", "10.255.255.255"},
		{"10.0.0.9/32", "10.0.0.9"},
	}
	for _, tt := range tests {
		if got := lastAddr(netip.MustParsePrefix(tt.prefix)); got.String() != tt.want {
			t.Errorf("lastAddr(%s) = %s, want %s", tt.prefix, got, tt.want)
		}
	}
}

func TestImages(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	img := &Image{Name: "minimal", Rootfs: "/a/rootfs.ext4", WorkSeed: "/a/seed.ext4"}
	if err := s.UpsertImage(ctx, img); err != nil {
		t.Fatal(err)
	}
	created := img.CreatedAt
	if err := s.UpsertImage(ctx, &Image{Name: "docker", Rootfs: "/d"}); err != nil {
		t.Fatal(err)
	}
	upd := &Image{Name: "minimal", Rootfs: "/b/rootfs.ext4", Managed: true, SeedKey: "abc123"}
	if err := s.UpsertImage(ctx, upd); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, "minimal")
	if err != nil {
		t.Fatal(err)
	}
	if got.Rootfs != "/b/rootfs.ext4" || got.WorkSeed != "" || !got.Managed || got.SeedKey != "abc123" || !got.CreatedAt.Equal(created) {
		t.Errorf("GetImage(minimal) = %+v, want the updated row created at %v", got, created)
	}
	list, err := s.ListImages(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "docker" || list[1].Name != "minimal" {
		t.Errorf("ListImages() = %+v, %v, want docker, minimal", list, err)
	}
	if err := s.DeleteImage(ctx, "docker"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteImage(ctx, "docker"); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeleteImage(deleted) = %v, want ErrNotFound", err)
	}
	if _, err := s.GetImage(ctx, "docker"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetImage(deleted) = %v, want ErrNotFound", err)
	}
}

func TestStages(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	a, b := &VM{Name: "a"}, &VM{Name: "b"}
	for _, vm := range []*VM{a, b} {
		if err := s.CreateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	s.RecordStage(ctx, a.ID, "clone", 10*time.Millisecond)
	s.RecordStage(ctx, b.ID, "clone", 20*time.Millisecond)
	s.RecordStage(ctx, a.ID, "boot", 3*time.Second)
	got, err := s.StageDurations(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Stage != "clone" || got[0].Duration != 10*time.Millisecond ||
		got[1].Stage != "boot" || got[1].Duration != 3*time.Second || got[0].At.IsZero() {
		t.Errorf("StageDurations(a) = %+v, want clone 10ms, boot 3s", got)
	}
	all, err := s.AllStages(ctx)
	if err != nil || len(all) != 3 {
		t.Errorf("AllStages() = %d stages, %v, want 3", len(all), err)
	}
	if err := s.RecordStage(ctx, "ghost", "x", time.Second); err == nil {
		t.Error("RecordStage(unknown vm) = nil, want a foreign key error")
	}
	if err := s.ClearStages(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.StageDurations(ctx, b.ID); len(got) != 0 {
		t.Errorf("StageDurations(b) after ClearStages = %+v, want none", got)
	}
	s.RecordStage(ctx, b.ID, "clone", 20*time.Millisecond)
	if err := s.DeleteVM(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if all, _ := s.AllStages(ctx); len(all) != 1 || all[0].VMID != b.ID {
		t.Errorf("AllStages() after deleting a = %+v, want only b's stage", all)
	}
}

func TestConcurrentOpenHandles(t *testing.T) {
	// Two Stores on one file (as with a daemon and a CLI debugging tool) must not hit SQLITE_BUSY.
	ctx := context.Background()
	s1, path := openTest(t)
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	subnet := netip.MustParsePrefix("172.31.0.0/24")
	gw := netip.MustParseAddr("172.31.0.1")
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := s1
			if i%2 == 1 {
				st = s2
			}
			errs <- st.CreateVMWithLease(ctx, &VM{Name: fmt.Sprintf("c%d", i)}, subnet, gw)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("CreateVMWithLease across handles: %v", err)
		}
	}
	list, _ := s1.ListVMs(ctx)
	seen := map[string]bool{}
	for _, v := range list {
		if seen[v.IP] {
			t.Errorf("IP %s leased twice across handles", v.IP)
		}
		seen[v.IP] = true
	}
}

func TestOpenOddPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a dir #1?x=y%20", "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateVM(context.Background(), &VM{Name: "v"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("database not at %q: %v", path, err)
	}
}

// TestMigrateKeepsImages opens a database left at schema version 1 (before
// images had seed_key) and checks that its images survive the migration.
func TestMigrateKeepsImages(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// Roll the schema back to version 1 by hand.
	for _, q := range []string{
		`DROP TABLE vm_mounts`, `DROP TABLE vm_ports`, `DROP TABLE vm_stages`, `DROP TABLE vms`, `DROP TABLE images`, `DELETE FROM schema_migrations`,
		migrations[0],
		`INSERT INTO schema_migrations (version, applied_at) VALUES (1, 'x')`,
		`INSERT INTO images (name, rootfs, work_seed, managed, created_at) VALUES ('old', '/o/rootfs.ext4', '', 1, '2026-01-02T03:04:05Z')`,
	} {
		if _, err := s.db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s.Close()
	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.SchemaVersion(ctx); err != nil || v != len(migrations) {
		t.Fatalf("SchemaVersion() = %d, %v; want %d", v, err, len(migrations))
	}
	img, err := s.GetImage(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	if img.Rootfs != "/o/rootfs.ext4" || !img.Managed || img.SeedKey != "" {
		t.Errorf("migrated image = %+v, want rootfs /o/rootfs.ext4, managed, no seed key", img)
	}
}

func TestMounts(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	subnet, gw := netip.MustParsePrefix("172.30.0.0/24"), netip.MustParseAddr("172.30.0.1")
	ms := []Mount{{Host: "/home/dev/src", Guest: "/root/src"}, {Host: "/srv/docs", Guest: "/srv/docs", ReadOnly: true}}
	a := &VM{Name: "a", Mounts: ms}
	if err := s.CreateVMWithLease(ctx, a, subnet, gw); err != nil {
		t.Fatal(err)
	}
	b := &VM{Name: "b"}
	if err := s.CreateVMWithLease(ctx, b, subnet, gw); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "a")
	if err != nil || !reflect.DeepEqual(got.Mounts, ms) {
		t.Fatalf("GetVM(a).Mounts = %+v, %v; want %+v", got.Mounts, err, ms)
	}
	list, _ := s.ListVMs(ctx)
	if len(list) != 2 || !reflect.DeepEqual(list[0].Mounts, ms) || list[1].Mounts != nil {
		t.Errorf("ListVMs mounts = %+v, want a's and none for b", list)
	}
	// UpdateVM keeps them.
	got.Mounts = nil
	got.State = StateRunning
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.GetVM(ctx, "a"); !reflect.DeepEqual(again.Mounts, ms) {
		t.Errorf("after UpdateVM: mounts %+v, want them kept", again.Mounts)
	}
	// A refused create records none of its mounts.
	dup := &VM{Name: "a", Mounts: ms}
	if err := s.CreateVMWithLease(ctx, dup, subnet, gw); !errors.Is(err, ErrExists) {
		t.Errorf("CreateVMWithLease(a again) = %v, want ErrExists", err)
	}
	// Deleting a VM deletes its mounts.
	if err := s.DeleteVM(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	var n int
	s.db.QueryRow(`SELECT COUNT(*) FROM vm_mounts`).Scan(&n)
	if n != 0 {
		t.Errorf("%d mount rows left after DeleteVM", n)
	}
}

// TestMigrateKeepsVMs opens a database left at schema version 2 (before
// work sizes, ports and mounts) and checks that its VMs survive, with no
// size recorded, no ports and no mounts.
func TestMigrateKeepsVMs(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`DROP TABLE vm_mounts`, `DROP TABLE vm_ports`, `DROP TABLE vm_stages`, `DROP TABLE vms`, `DROP TABLE images`, `DELETE FROM schema_migrations`,
		migrations[0], migrations[1],
		`INSERT INTO schema_migrations (version, applied_at) VALUES (1, 'x'), (2, 'x')`,
		`INSERT INTO vms (id, name, state, ip, created_at, updated_at) VALUES ('abc', 'old', 'stopped', '172.30.0.2', '2026-01-02T03:04:05Z', '2026-01-02T03:04:05Z')`,
	} {
		if _, err := s.db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s.Close()
	if s, err = Open(path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vm, err := s.GetVM(ctx, "old")
	if err != nil || vm.State != StateStopped || vm.WorkSizeBytes != 0 || vm.Ports != nil || vm.Mounts != nil {
		t.Fatalf("migrated VM = %+v, %v; want it stopped, without a work size, ports or mounts", vm, err)
	}
}

func TestPorts(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	subnet, gw := netip.MustParsePrefix("172.30.0.0/24"), netip.MustParseAddr("172.30.0.1")
	web := []Port{{Proto: "tcp", HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80}, {Proto: "udp", HostIP: "0.0.0.0", HostPort: 5353, GuestPort: 53}}
	a := &VM{Name: "a", WorkSizeBytes: 16 << 30, Ports: web}
	if err := s.CreateVMWithLease(ctx, a, subnet, gw); err != nil {
		t.Fatal(err)
	}
	b := &VM{Name: "b"}
	if err := s.CreateVMWithLease(ctx, b, subnet, gw); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "a")
	if err != nil || got.WorkSizeBytes != 16<<30 || !reflect.DeepEqual(got.Ports, web) {
		t.Fatalf("GetVM(a) = %+v, %v; want its work size and ports %+v", got, err, web)
	}
	// Another VM cannot take a port a VM publishes, and changes nothing.
	clash := &VM{Name: "clash", Ports: []Port{{Proto: "tcp", HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 81}}}
	if err := s.CreateVMWithLease(ctx, clash, subnet, gw); !errors.Is(err, ErrExists) {
		t.Errorf("CreateVMWithLease with a taken port = %v, want ErrExists", err)
	}
	if _, err := s.GetVM(ctx, "clash"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a refused create left VM clash: %v", err)
	}
	mine := []Port{{Proto: "tcp", HostIP: "127.0.0.1", HostPort: 9000, GuestPort: 9000}}
	if err := s.SetVMPorts(ctx, b.ID, append(mine, web[0])); !errors.Is(err, ErrExists) {
		t.Errorf("SetVMPorts with a's port = %v, want ErrExists", err)
	}
	if got, _ := s.GetVM(ctx, "b"); got.Ports != nil {
		t.Errorf("a refused SetVMPorts left b with %+v", got.Ports)
	}
	if err := s.SetVMPorts(ctx, b.ID, mine); err != nil {
		t.Fatal(err)
	}
	list, _ := s.ListVMs(ctx)
	if len(list) != 2 || !reflect.DeepEqual(list[0].Ports, web) || !reflect.DeepEqual(list[1].Ports, mine) {
		t.Errorf("ListVMs ports = %+v", list)
	}
	// UpdateVM keeps the ports; SetVMPorts(nil) removes them.
	got.Ports = nil
	got.WorkSizeBytes = 32 << 30
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.GetVM(ctx, "a"); again.WorkSizeBytes != 32<<30 || !reflect.DeepEqual(again.Ports, web) {
		t.Errorf("after UpdateVM: %+v, want work size 32G and the ports kept", again)
	}
	if err := s.SetVMPorts(ctx, "nosuch", mine); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetVMPorts(nosuch) = %v, want ErrNotFound", err)
	}
	// Deleting a VM frees its ports.
	if err := s.DeleteVM(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.SetVMPorts(ctx, b.ID, web); err != nil {
		t.Errorf("taking a deleted VM's ports: %v", err)
	}
	var n int
	s.db.QueryRow(`SELECT COUNT(*) FROM vm_ports WHERE vm_id = ?`, a.ID).Scan(&n)
	if n != 0 {
		t.Errorf("%d ports of a deleted VM left", n)
	}
}

// TestVMIP: the DNS server's lookup answers by exact name only, never by
// an ID or its prefix, and says "" for a VM without an address.
func TestVMIP(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	for _, vm := range []*VM{{ID: "abc1", Name: "web", IP: "172.30.0.5"}, {ID: "abc2", Name: "noaddr"}} {
		if err := s.CreateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct{ name, want string }{
		{"web", "172.30.0.5"},
		{"noaddr", ""},
		{"abc1", ""}, // an ID is not a name
		{"we", ""},
		{"WEB", ""},
		{"", ""},
	} {
		if got, err := s.VMIP(ctx, tt.name); err != nil || got != tt.want {
			t.Errorf("VMIP(%q) = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}
