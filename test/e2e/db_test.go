package e2e

import (
	"database/sql"
	"fmt"
	"testing"

	_ "modernc.org/sqlite"
)

// countRows counts the rows, in every table of the database at path, whose
// text columns mention needle.
func countRows(t testing.TB, path, needle string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatalf("opening %s: %v", path, err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table'`)
	if err != nil {
		t.Fatalf("listing tables: %v", err)
	}
	var tables []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	total := 0
	for _, table := range tables {
		cols, err := db.Query(fmt.Sprintf("SELECT name FROM pragma_table_info('%s')", table))
		if err != nil {
			t.Fatalf("columns of %s: %v", table, err)
		}
		var names []string
		for cols.Next() {
			var n string
			cols.Scan(&n)
			names = append(names, n)
		}
		cols.Close()
		for _, c := range names {
			var n int
			q := fmt.Sprintf("SELECT count(*) FROM %q WHERE CAST(%q AS TEXT) LIKE '%%' || ? || '%%'", table, c)
			if err := db.QueryRow(q, needle).Scan(&n); err != nil {
				t.Fatalf("counting %s.%s: %v", table, c, err)
			}
			total += n
		}
	}
	return total
}
