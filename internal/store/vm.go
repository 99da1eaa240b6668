package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// VM states.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateStopped  = "stopped"
	StateError    = "error"
	// StateSuspended: the guest's memory and devices are saved in its
	// directory and no hypervisor runs.
	StateSuspended = "suspended"
)

// VM is one microVM's persisted state.
type VM struct {
	ID            string
	Name          string
	Image         string
	State         string // StateCreating, StateRunning, StateStopped or StateError
	Hypervisor    string
	VCPUs         int
	MemoryMiB     int
	DiskSizeBytes int64
	// WorkSizeBytes is the size of the VM's /root disk.
	WorkSizeBytes int64
	IP            string
	MAC           string
	TAP           string
	PID           int
	CID           uint32
	NAT           bool
	// Egress is the VM's egress policy as JSON (egress.Policy); "" is the
	// default policy.
	Egress string
	// Kernel and Initrd are what the VM boots, its image's own; "" is the
	// bundle's.
	Kernel, Initrd string
	Dir            string // data dir holding the VM's disks
	RuntimeDir     string
	// DiskFormat is the format of the VM's disk files: "raw" or "qcow2".
	DiskFormat string
	Error      string
	CreatedAt  time.Time
	UpdatedAt  time.Time
	// Ports are the ports the VM publishes on the host, in the order they
	// were added. UpdateVM leaves them alone: SetVMPorts changes them.
	Ports []Port
	// Mounts are the host folders the VM mounts, fixed at create (UpdateVM
	// leaves them alone).
	Mounts []Mount
}

// Mount is one host folder a VM mounts: Host on the host, at Guest in the
// guest, read-only or not.
type Mount struct {
	Host     string
	Guest    string
	ReadOnly bool
}

// Port is one port a VM publishes: HostIP:HostPort on the host, relayed to
// GuestPort on the guest, for Proto ("tcp" or "udp").
type Port struct {
	Proto     string
	HostIP    string
	HostPort  int
	GuestPort int
}

// MinCID is the lowest vsock context ID handed to guests (0-2 are reserved).
const MinCID = 3

const vmColumns = `id, name, image, state, hypervisor, vcpus, memory_mib, disk_size_bytes,
	ip, mac, tap, pid, cid, nat, dir, runtime_dir, error, created_at, updated_at, egress, kernel, initrd,
	work_size_bytes, disk_format`

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// CreateVMWithLease inserts vm, with its ports and mounts, after picking, in the same transaction,
// the lowest free host address of subnet (never the network, broadcast or gateway
// address) and the lowest free CID; it fills vm.IP and vm.CID. Concurrent calls never
// share a lease. A port another VM publishes is an error wrapping ErrExists.
func (s *Store) CreateVMWithLease(ctx context.Context, vm *VM, subnet netip.Prefix, gateway netip.Addr) error {
	if err := prepareVM(vm); err != nil {
		return fmt.Errorf("creating vm %s: %w", vm.Name, err)
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		ip, err := allocateIP(ctx, tx, subnet, []netip.Addr{gateway})
		if err != nil {
			return err
		}
		cid, err := allocateCID(ctx, tx)
		if err != nil {
			return err
		}
		vm.IP, vm.CID = ip.String(), cid
		if err := insertVM(ctx, tx, vm); err != nil {
			return err
		}
		if err := insertPorts(ctx, tx, vm.ID, vm.Ports); err != nil {
			return err
		}
		return insertMounts(ctx, tx, vm.ID, vm.Mounts)
	})
	if err != nil {
		return fmt.Errorf("creating vm %s: %w", vm.Name, err)
	}
	return nil
}

func prepareVM(vm *VM) error {
	if vm.Name == "" {
		return errors.New("vm name is empty")
	}
	if vm.ID == "" {
		id, err := newID()
		if err != nil {
			return err
		}
		vm.ID = id
	}
	now := time.Now().UTC()
	if vm.CreatedAt.IsZero() {
		vm.CreatedAt = now
	}
	if vm.UpdatedAt.IsZero() {
		vm.UpdatedAt = vm.CreatedAt
	}
	if vm.State == "" {
		vm.State = StateCreating
	}
	vm.DiskFormat = diskFormat(vm.DiskFormat)
	return nil
}

func insertVM(ctx context.Context, q querier, vm *VM) error {
	_, err := q.ExecContext(ctx, `INSERT INTO vms (`+vmColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		vm.ID, vm.Name, vm.Image, vm.State, vm.Hypervisor, vm.VCPUs, vm.MemoryMiB, vm.DiskSizeBytes,
		nullString(vm.IP), vm.MAC, nullString(vm.TAP), vm.PID, nullCID(vm.CID), vm.NAT,
		vm.Dir, vm.RuntimeDir, vm.Error, formatTime(vm.CreatedAt), formatTime(vm.UpdatedAt), vm.Egress, vm.Kernel, vm.Initrd,
		vm.WorkSizeBytes, diskFormat(vm.DiskFormat))
	return conflict(err)
}

func insertPorts(ctx context.Context, q querier, id string, ports []Port) error {
	for _, p := range ports {
		if _, err := q.ExecContext(ctx, `INSERT INTO vm_ports (vm_id, proto, host_ip, host_port, guest_port) VALUES (?, ?, ?, ?, ?)`,
			id, p.Proto, p.HostIP, p.HostPort, p.GuestPort); err != nil {
			return fmt.Errorf("recording port %s:%d/%s: %w", p.HostIP, p.HostPort, p.Proto, conflict(err))
		}
	}
	return nil
}

func insertMounts(ctx context.Context, q querier, id string, ms []Mount) error {
	for i, m := range ms {
		if _, err := q.ExecContext(ctx, `INSERT INTO vm_mounts (vm_id, idx, host, guest, read_only) VALUES (?, ?, ?, ?, ?)`,
			id, i, m.Host, m.Guest, m.ReadOnly); err != nil {
			return fmt.Errorf("recording mount %s: %w", m.Guest, conflict(err))
		}
	}
	return nil
}

// SetVMPorts replaces the ports of the VM with this ID, in one transaction.
// A port another VM publishes is an error wrapping ErrExists, and changes
// nothing.
func (s *Store) SetVMPorts(ctx context.Context, id string, ports []Port) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM vms WHERE id = ?`, id).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return ErrNotFound
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM vm_ports WHERE vm_id = ?`, id); err != nil {
			return err
		}
		return insertPorts(ctx, tx, id, ports)
	})
	if err != nil {
		return fmt.Errorf("setting the ports of vm %s: %w", id, err)
	}
	return nil
}

func allocateIP(ctx context.Context, q querier, subnet netip.Prefix, reserved []netip.Addr) (netip.Addr, error) {
	subnet = subnet.Masked()
	if !subnet.IsValid() || !subnet.Addr().Is4() {
		return netip.Addr{}, fmt.Errorf("subnet %s is not a valid IPv4 prefix", subnet)
	}
	if subnet.Bits() > 30 {
		return netip.Addr{}, fmt.Errorf("subnet %s has no room for guests: use a /30 or larger: %w", subnet, ErrNoFreeAddress)
	}
	used := map[netip.Addr]bool{}
	for _, a := range reserved {
		used[a] = true
	}
	rows, err := q.QueryContext(ctx, `SELECT ip FROM vms WHERE ip IS NOT NULL`)
	if err != nil {
		return netip.Addr{}, err
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return netip.Addr{}, err
		}
		if a, err := netip.ParseAddr(s); err == nil {
			used[a] = true
		}
	}
	if err := rows.Err(); err != nil {
		return netip.Addr{}, err
	}
	rows.Close()
	broadcast := lastAddr(subnet)
	for a := subnet.Addr().Next(); a.IsValid() && a.Less(broadcast); a = a.Next() {
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("subnet %s is full: delete unused VMs or configure a larger subnet: %w", subnet, ErrNoFreeAddress)
}

// lastAddr returns the highest address of an IPv4 prefix (its broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	for i := 3; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(1<<n - 1)
		host -= n
	}
	return netip.AddrFrom4(b)
}

func allocateCID(ctx context.Context, q querier) (uint32, error) {
	rows, err := q.QueryContext(ctx, `SELECT cid FROM vms WHERE cid >= ? ORDER BY cid`, MinCID)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	next := int64(MinCID)
	for rows.Next() {
		var cid int64
		if err := rows.Scan(&cid); err != nil {
			return 0, err
		}
		if cid > next {
			break
		}
		next = cid + 1
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if next > 1<<32-2 { // 0xFFFFFFFF is VMADDR_CID_ANY
		return 0, fmt.Errorf("vsock context IDs exhausted: delete unused VMs: %w", ErrNoFreeAddress)
	}
	return uint32(next), nil
}

// GetVM returns the VM whose ID or name is nameOrID, else the only VM whose ID starts
// with nameOrID. It returns an error wrapping ErrNotFound when none matches.
func (s *Store) GetVM(ctx context.Context, nameOrID string) (*VM, error) {
	vms, err := s.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1`, nameOrID, nameOrID, nameOrID)
	if err != nil {
		return nil, fmt.Errorf("getting vm %s: %w", nameOrID, err)
	}
	if len(vms) == 0 && nameOrID != "" {
		pattern := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(nameOrID) + "%"
		vms, err = s.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms WHERE id LIKE ? ESCAPE '\' LIMIT 2`, pattern)
		if err != nil {
			return nil, fmt.Errorf("getting vm %s: %w", nameOrID, err)
		}
		if len(vms) > 1 {
			return nil, fmt.Errorf("getting vm %s: %w: give more characters or the name", nameOrID, ErrAmbiguous)
		}
	}
	if len(vms) == 0 {
		return nil, fmt.Errorf("getting vm %s: %w", nameOrID, ErrNotFound)
	}
	return &vms[0], nil
}

// VMIP returns the address of the VM named name, or "" when there is no
// such VM or it has none. It is one indexed read: the DNS server asks it for
// every .vm query.
func (s *Store) VMIP(ctx context.Context, name string) (string, error) {
	var ip sql.NullString
	err := s.db.QueryRowContext(ctx, `SELECT ip FROM vms WHERE name = ?`, name).Scan(&ip)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading the address of vm %s: %w", name, err)
	}
	return ip.String, nil
}

// ListVMs returns every VM ordered by name.
func (s *Store) ListVMs(ctx context.Context) ([]VM, error) {
	vms, err := s.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("listing vms: %w", err)
	}
	return vms, nil
}

// UpdateVM writes every field of vm (found by ID) and sets vm.UpdatedAt to now.
func (s *Store) UpdateVM(ctx context.Context, vm *VM) error {
	updated := time.Now().UTC()
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET name = ?, image = ?, state = ?, hypervisor = ?,
		vcpus = ?, memory_mib = ?, disk_size_bytes = ?, ip = ?, mac = ?, tap = ?, pid = ?, cid = ?,
		nat = ?, dir = ?, runtime_dir = ?, error = ?, updated_at = ?, egress = ?, work_size_bytes = ?, disk_format = ? WHERE id = ?`,
		vm.Name, vm.Image, vm.State, vm.Hypervisor, vm.VCPUs, vm.MemoryMiB, vm.DiskSizeBytes,
		nullString(vm.IP), vm.MAC, nullString(vm.TAP), vm.PID, nullCID(vm.CID), vm.NAT,
		vm.Dir, vm.RuntimeDir, vm.Error, formatTime(updated), vm.Egress, vm.WorkSizeBytes, diskFormat(vm.DiskFormat), vm.ID)
	if err != nil {
		return fmt.Errorf("updating vm %s: %w", vm.Name, conflict(err))
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("updating vm %s: %w", vm.Name, err)
	} else if n == 0 {
		return fmt.Errorf("updating vm %s: %w", vm.Name, ErrNotFound)
	}
	vm.UpdatedAt = updated
	return nil
}

// DeleteVM deletes the VM with this ID, its stage timings, its ports and its mounts.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("deleting vm %s: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("deleting vm %s: %w", id, err)
	} else if n == 0 {
		return fmt.Errorf("deleting vm %s: %w", id, ErrNotFound)
	}
	return nil
}

func (s *Store) queryVMs(ctx context.Context, query string, args ...any) ([]VM, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var vms []VM
	for rows.Next() {
		var (
			vm               VM
			ip, tap          sql.NullString
			cid              sql.NullInt64
			created, updated string
		)
		if err := rows.Scan(&vm.ID, &vm.Name, &vm.Image, &vm.State, &vm.Hypervisor, &vm.VCPUs,
			&vm.MemoryMiB, &vm.DiskSizeBytes, &ip, &vm.MAC, &tap, &vm.PID, &cid, &vm.NAT,
			&vm.Dir, &vm.RuntimeDir, &vm.Error, &created, &updated, &vm.Egress, &vm.Kernel, &vm.Initrd,
			&vm.WorkSizeBytes, &vm.DiskFormat); err != nil {
			return nil, err
		}
		vm.IP, vm.TAP, vm.CID = ip.String, tap.String, uint32(cid.Int64)
		if vm.CreatedAt, err = parseTime(created); err != nil {
			return nil, err
		}
		if vm.UpdatedAt, err = parseTime(updated); err != nil {
			return nil, err
		}
		vms = append(vms, vm)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close() // one connection: free it for the ports' and mounts' queries
	if err := s.loadPorts(ctx, vms); err != nil {
		return vms, err
	}
	return vms, s.loadMounts(ctx, vms)
}

// byIDs indexes vms (not empty) by ID for the queries of their ports and
// mounts: the index, the IDs as query arguments and their placeholders.
func byIDs(vms []VM) (map[string]*VM, []any, string) {
	byID := make(map[string]*VM, len(vms))
	args := make([]any, len(vms))
	for i := range vms {
		byID[vms[i].ID] = &vms[i]
		args[i] = vms[i].ID
	}
	return byID, args, "?" + strings.Repeat(", ?", len(vms)-1)
}

// loadPorts fills the Ports of vms.
func (s *Store) loadPorts(ctx context.Context, vms []VM) error {
	if len(vms) == 0 {
		return nil
	}
	byID, args, in := byIDs(vms)
	rows, err := s.db.QueryContext(ctx, `SELECT vm_id, proto, host_ip, host_port, guest_port FROM vm_ports
		WHERE vm_id IN (`+in+`) ORDER BY rowid`, args...)
	if err != nil {
		return fmt.Errorf("reading ports: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var p Port
		if err := rows.Scan(&id, &p.Proto, &p.HostIP, &p.HostPort, &p.GuestPort); err != nil {
			return fmt.Errorf("reading ports: %w", err)
		}
		if vm := byID[id]; vm != nil {
			vm.Ports = append(vm.Ports, p)
		}
	}
	return rows.Err()
}

// loadMounts fills the Mounts of vms.
func (s *Store) loadMounts(ctx context.Context, vms []VM) error {
	if len(vms) == 0 {
		return nil
	}
	byID, args, in := byIDs(vms)
	rows, err := s.db.QueryContext(ctx, `SELECT vm_id, host, guest, read_only FROM vm_mounts
		WHERE vm_id IN (`+in+`) ORDER BY vm_id, idx`, args...)
	if err != nil {
		return fmt.Errorf("reading mounts: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var m Mount
		if err := rows.Scan(&id, &m.Host, &m.Guest, &m.ReadOnly); err != nil {
			return fmt.Errorf("reading mounts: %w", err)
		}
		if vm := byID[id]; vm != nil {
			vm.Mounts = append(vm.Mounts, m)
		}
	}
	return rows.Err()
}

// diskFormat is how a VM's disk format is stored: raw unless said.
func diskFormat(f string) string {
	if f == "" {
		return "raw"
	}
	return f
}

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

func nullCID(c uint32) sql.NullInt64 { return sql.NullInt64{Int64: int64(c), Valid: c != 0} }
