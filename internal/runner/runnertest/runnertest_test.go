package runnertest

import (
	"context"
	"errors"
	"reflect"
	"testing"
)

func TestRunner(t *testing.T) {
	r := &Runner{}
	boom := errors.New("boom")
	r.Reply("ip -j", Reply{Out: "first"}, Reply{Out: "second"})
	r.Reply("ip -j addr show dev x", Reply{Err: boom})
	r.OK("nft")
	ctx := context.Background()
	for _, tt := range []struct {
		priv    bool
		argv    []string
		out     string
		wantErr bool
	}{
		{false, []string{"ip", "-j", "link"}, "first", false},
		{false, []string{"ip", "-j", "link"}, "second", false},
		{false, []string{"ip", "-j", "link"}, "second", false}, // the last repeats
		{true, []string{"ip", "-j", "addr", "show", "dev", "x"}, "", true},
		{true, []string{"nft", "list", "tables"}, "", false},
		{false, []string{"debugfs"}, "", true}, // nobody answers
	} {
		var out []byte
		var err error
		if tt.priv {
			out, err = r.RunPrivileged(ctx, tt.argv[0], tt.argv[1:]...)
		} else {
			out, err = r.Run(ctx, tt.argv[0], tt.argv[1:]...)
		}
		if string(out) != tt.out || (err != nil) != tt.wantErr {
			t.Errorf("%v = %q, %v; want %q, error %v", tt.argv, out, err, tt.out, tt.wantErr)
		}
	}
	want := []string{"run ip -j link", "run ip -j link", "run ip -j link", "priv ip -j addr show dev x", "priv nft list tables", "run debugfs"}
	if got := r.Calls(); !reflect.DeepEqual(got, want) {
		t.Errorf("Calls() = %q, want %q", got, want)
	}
}
