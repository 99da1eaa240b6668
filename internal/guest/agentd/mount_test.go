package agentd

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/agent"
)

func TestMountOp(t *testing.T) {
	var got []agent.Mount
	srv := &Server{Shutdown: func() {}, Mount: func(m agent.Mount) error {
		got = append(got, m)
		if m.Path == "/srv/broken" {
			return &mountError{"no such tag"}
		}
		return nil
	}}
	ctx := context.Background()
	ms := []agent.Mount{{Tag: "banger0", Path: "/root/src"}, {Tag: "banger1", Path: "/srv/docs", ReadOnly: true}}
	if err := pipeClient(t, srv).Mount(ctx, ms); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ms) {
		t.Errorf("mounted %+v, want %+v", got, ms)
	}
	// A bad request mounts nothing at all.
	got = nil
	err := pipeClient(t, srv).Mount(ctx, []agent.Mount{{Tag: "banger0", Path: "/root/src"}, {Tag: "banger1", Path: "/etc/x"}})
	if err == nil || !strings.Contains(err.Error(), "refusing to mount") || len(got) != 0 {
		t.Errorf("Mount(/etc/x) = %v after mounting %+v, want a refusal and nothing mounted", err, got)
	}
	// A failed mount is reported; the others are still made.
	got = nil
	err = pipeClient(t, srv).Mount(ctx, []agent.Mount{{Tag: "banger0", Path: "/srv/broken"}, {Tag: "banger1", Path: "/srv/ok"}})
	if err == nil || !strings.Contains(err.Error(), "no such tag") || len(got) != 2 {
		t.Errorf("Mount(broken, ok) = %v after %+v, want the failure and both tried", err, got)
	}
}

type mountError struct{ s string }

func (e *mountError) Error() string { return e.s }

func TestParseMountinfo(t *testing.T) {
	in := `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 254:16 / /root rw,relatime shared:2 - ext4 /dev/vdb rw
31 25 0:40 / /root/src rw,nosuid,nodev,relatime shared:3 - virtiofs banger0 rw
32 22 0:41 / /srv/my\040docs ro,nosuid,nodev,relatime - virtiofs banger1 rw
garbage line
`
	got, err := parseMountinfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []mountEntry{
		{target: "/", fstype: "ext4", source: "/dev/vda"},
		{target: "/root", fstype: "ext4", source: "/dev/vdb"},
		{target: "/root/src", fstype: "virtiofs", source: "banger0"},
		{target: "/srv/my docs", fstype: "virtiofs", source: "banger1", readOnly: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseMountinfo() = %+v, want %+v", got, want)
	}
}
