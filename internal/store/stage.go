package store

import (
	"context"
	"fmt"
	"time"
)

// Stage is how long one step of creating a VM took.
type Stage struct {
	VMID     string
	Stage    string
	Duration time.Duration
	At       time.Time
}

// RecordStage stores that stage of VM vmID took d. Rows go away with the VM.
func (s *Store) RecordStage(ctx context.Context, vmID, stage string, d time.Duration) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO vm_stages (vm_id, stage, duration_ns, at) VALUES (?, ?, ?, ?)`,
		vmID, stage, int64(d), formatTime(time.Now()))
	if err != nil {
		return fmt.Errorf("recording stage %s of vm %s: %w", stage, vmID, err)
	}
	return nil
}

// StageDurations returns the recorded stages of VM vmID in the order they were recorded.
func (s *Store) StageDurations(ctx context.Context, vmID string) ([]Stage, error) {
	st, err := s.queryStages(ctx, `SELECT vm_id, stage, duration_ns, at FROM vm_stages WHERE vm_id = ? ORDER BY id`, vmID)
	if err != nil {
		return nil, fmt.Errorf("reading stages of vm %s: %w", vmID, err)
	}
	return st, nil
}

// AllStages returns every recorded stage of every VM in the order they were recorded.
func (s *Store) AllStages(ctx context.Context) ([]Stage, error) {
	st, err := s.queryStages(ctx, `SELECT vm_id, stage, duration_ns, at FROM vm_stages ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("reading stages: %w", err)
	}
	return st, nil
}

func (s *Store) queryStages(ctx context.Context, query string, args ...any) ([]Stage, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var stages []Stage
	for rows.Next() {
		var (
			st Stage
			ns int64
			at string
		)
		if err := rows.Scan(&st.VMID, &st.Stage, &ns, &at); err != nil {
			return nil, err
		}
		st.Duration = time.Duration(ns)
		if st.At, err = parseTime(at); err != nil {
			return nil, err
		}
		stages = append(stages, st)
	}
	return stages, rows.Err()
}

// ClearStages forgets the recorded stages of VM vmID, before the stages of
// its next boot are recorded.
func (s *Store) ClearStages(ctx context.Context, vmID string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM vm_stages WHERE vm_id = ?`, vmID); err != nil {
		return fmt.Errorf("clearing stages of vm %s: %w", vmID, err)
	}
	return nil
}
