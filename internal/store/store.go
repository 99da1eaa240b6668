// Package store keeps bangerd's state (VMs, images, create-stage timings) in SQLite.
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

var (
	// ErrNotFound is returned when a VM or image does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists is returned when a create would duplicate a unique name, IP, CID or TAP.
	ErrExists = errors.New("already exists")
	// ErrAmbiguous is returned when an id prefix names several VMs.
	ErrAmbiguous = errors.New("id prefix is ambiguous")
	// ErrNoFreeAddress is returned when a subnet or the CID space has no free entry left.
	ErrNoFreeAddress = errors.New("no free address")
)

// migrations are applied in order; migration i (0-based) is schema version i+1.
// Never edit or reorder an entry once released: append a new one.
var migrations = []string{
	// 1: initial schema.
	`CREATE TABLE vms (
		id              TEXT PRIMARY KEY,
		name            TEXT NOT NULL UNIQUE,
		image           TEXT NOT NULL DEFAULT '',
		state           TEXT NOT NULL,
		hypervisor      TEXT NOT NULL DEFAULT '',
		vcpus           INTEGER NOT NULL DEFAULT 0,
		memory_mib      INTEGER NOT NULL DEFAULT 0,
		disk_size_bytes INTEGER NOT NULL DEFAULT 0,
		ip              TEXT UNIQUE,
		mac             TEXT NOT NULL DEFAULT '',
		tap             TEXT UNIQUE,
		pid             INTEGER NOT NULL DEFAULT 0,
		cid             INTEGER UNIQUE,
		nat             INTEGER NOT NULL DEFAULT 0,
		dir             TEXT NOT NULL DEFAULT '',
		runtime_dir     TEXT NOT NULL DEFAULT '',
		error           TEXT NOT NULL DEFAULT '',
		created_at      TEXT NOT NULL,
		updated_at      TEXT NOT NULL
	);
	CREATE TABLE images (
		name       TEXT PRIMARY KEY,
		rootfs     TEXT NOT NULL,
		work_seed  TEXT NOT NULL DEFAULT '',
		managed    INTEGER NOT NULL DEFAULT 0,
		created_at TEXT NOT NULL
	);
	CREATE TABLE vm_stages (
		id          INTEGER PRIMARY KEY AUTOINCREMENT,
		vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
		stage       TEXT NOT NULL,
		duration_ns INTEGER NOT NULL,
		at          TEXT NOT NULL
	);
	CREATE INDEX vm_stages_vm_id ON vm_stages(vm_id);`,
	// 2: the SSH key a managed image's work-seed authorizes.
	`ALTER TABLE images ADD COLUMN seed_key TEXT NOT NULL DEFAULT '';`,
	// 3: a VM's egress policy (JSON; '' is the default policy).
	`ALTER TABLE vms ADD COLUMN egress TEXT NOT NULL DEFAULT '';`,
	// 4: images that carry their own kernel, initramfs and modules, and
	// the kernel each VM boots ('' is the bundle's).
	`ALTER TABLE images ADD COLUMN kernel TEXT NOT NULL DEFAULT '';
	ALTER TABLE images ADD COLUMN initrd TEXT NOT NULL DEFAULT '';
	ALTER TABLE images ADD COLUMN modules TEXT NOT NULL DEFAULT '';
	ALTER TABLE images ADD COLUMN kernel_version TEXT NOT NULL DEFAULT '';
	ALTER TABLE vms ADD COLUMN kernel TEXT NOT NULL DEFAULT '';
	ALTER TABLE vms ADD COLUMN initrd TEXT NOT NULL DEFAULT '';`,
	// 5: the size of each VM's /root disk, and the ports VMs publish on the
	// host (one host address, port and protocol belongs to one VM).
	`ALTER TABLE vms ADD COLUMN work_size_bytes INTEGER NOT NULL DEFAULT 0;
	CREATE TABLE vm_ports (
		vm_id      TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
		proto      TEXT NOT NULL,
		host_ip    TEXT NOT NULL,
		host_port  INTEGER NOT NULL,
		guest_port INTEGER NOT NULL,
		PRIMARY KEY (proto, host_ip, host_port)
	);
	CREATE INDEX vm_ports_vm_id ON vm_ports(vm_id);`,
	// 6: the host folders each VM mounts, in their order (a folder's
	// place is its virtio-fs tag).
	`CREATE TABLE vm_mounts (
		vm_id     TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
		idx       INTEGER NOT NULL,
		host      TEXT NOT NULL,
		guest     TEXT NOT NULL,
		read_only INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (vm_id, idx)
	);`,
	// 7: the format of a VM's disk files: raw clones, or qcow2 overlays over
	// banger's read-only bases. Never guessed from the files: a guest
	// controls a raw disk's bytes.
	`ALTER TABLE vms ADD COLUMN disk_format TEXT NOT NULL DEFAULT 'raw';`,
}

// Store is an open state database. It is safe for concurrent use.
type Store struct {
	db *sql.DB
}

// Open opens (creating if needed) the database at path and migrates it to the latest schema.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("opening state database %s: %w", path, err)
	}
	if err := refuseEmpty(path); err != nil {
		return nil, err
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening state database %s: %w", path, err)
	}
	// One connection serialises every statement in this process, so writers
	// never race each other into SQLITE_BUSY; busy_timeout covers other processes.
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	s := &Store{db: db}
	if err := s.check(context.Background(), path); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.migrate(context.Background()); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening state database %s: %w", path, err)
	}
	return s, nil
}

// aside is the advice for a database bangerd will not open.
func aside(path string) string {
	return fmt.Sprintf("stop bangerd, move it aside (mv %s %s.broken) and start again with a fresh state, or restore it from a backup; the VMs' disks under the data dir are kept either way", path, path)
}

// refuseEmpty refuses a database file that exists but is empty while no
// write-ahead log holds its pages: a truncation, not a new database. Opening
// it would silently start over and orphan every VM directory.
func refuseEmpty(path string) error {
	fi, err := os.Stat(path)
	if err != nil || fi.Size() > 0 {
		return nil // a missing file is a new database; other errors surface at open
	}
	if wal, err := os.Stat(path + "-wal"); err == nil && wal.Size() > 0 {
		return nil // a fresh database whose pages are all still in the log
	}
	return fmt.Errorf("opening state database %s: the file is empty (0 bytes), so banger's record of its VMs and images is gone: %s", path, aside(path))
}

// check runs SQLite's quick_check, refusing a database that is not one or
// is damaged.
func (s *Store) check(ctx context.Context, path string) error {
	rows, err := s.db.QueryContext(ctx, `PRAGMA quick_check(8)`)
	if err != nil {
		return fmt.Errorf("checking state database %s: %w: %s", path, err, aside(path))
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return fmt.Errorf("checking state database %s: %w: %s", path, err, aside(path))
		}
		if line != "ok" {
			problems = append(problems, truncate(line, 200))
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("checking state database %s: %w: %s", path, err, aside(path))
	}
	if len(problems) > 0 {
		return fmt.Errorf("checking state database %s: it is damaged (%s): %s", path, strings.Join(problems, "; "), aside(path))
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("closing state database: %w", err)
	}
	return nil
}

// SchemaVersion returns the highest applied migration.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("reading schema version: %w", err)
	}
	return v, nil
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		applied_at TEXT NOT NULL
	)`); err != nil {
		return fmt.Errorf("creating schema_migrations: %w", err)
	}
	current, err := s.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	if current > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this bangerd (%d): upgrade banger", current, len(migrations))
	}
	for i := current; i < len(migrations); i++ {
		version := i + 1
		err := s.inTx(ctx, func(tx *sql.Tx) error {
			// Re-check inside the write lock: another process may have migrated meanwhile.
			var done int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, version).Scan(&done); err != nil {
				return err
			}
			if done > 0 {
				return nil
			}
			if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, version, formatTime(time.Now()))
			return err
		})
		if err != nil {
			return fmt.Errorf("applying migration %d: %w", version, err)
		}
		slog.Info("applied state database migration", "version", version)
	}
	return nil
}

// inTx runs fn in a transaction (BEGIN IMMEDIATE) and commits when fn succeeds.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

func newID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

const timeLayout = time.RFC3339Nano

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func parseTime(s string) (time.Time, error) { return time.Parse(timeLayout, s) }

var uniqueRE = regexp.MustCompile(`UNIQUE constraint failed: \w+\.(\w+)`)

// conflict maps a UNIQUE or PRIMARY KEY violation to an error wrapping ErrExists
// that names the offending column; other errors pass through.
func conflict(err error) error {
	var se *sqlite.Error
	if !errors.As(err, &se) || se.Code()&0xff != sqlite3.SQLITE_CONSTRAINT {
		return err
	}
	if se.Code() != sqlite3.SQLITE_CONSTRAINT_UNIQUE && se.Code() != sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY {
		return err
	}
	col := "key"
	if m := uniqueRE.FindStringSubmatch(se.Error()); m != nil {
		col = m[1]
	}
	return fmt.Errorf("%s %w", col, ErrExists)
}
