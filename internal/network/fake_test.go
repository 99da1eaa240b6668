package network

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// fakeIP answers `ip` reads from canned output and records every call.
type fakeIP struct {
	show  []string // successive answers to "ip -j -d addr show"; "" means no such device
	calls []string
}

func (f *fakeIP) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	f.calls = append(f.calls, "run "+name+" "+strings.Join(args, " "))
	if len(f.show) == 0 {
		return nil, errors.New("unexpected read")
	}
	out := f.show[0]
	f.show = f.show[1:]
	if out == "" {
		return nil, errors.New(`ip: exit status 1: Device "x" does not exist.`)
	}
	return []byte(out), nil
}

func (f *fakeIP) RunPrivileged(_ context.Context, name string, args ...string) ([]byte, error) {
	f.calls = append(f.calls, "priv "+name+" "+strings.Join(args, " "))
	return nil, nil
}

func TestEnsureBridgeCommands(t *testing.T) {
	tests := []struct {
		name string
		show []string
		want []string
	}{
		{
			name: "missing",
			show: []string{"", `[{"ifname":"eth0","addr_info":[{"family":"inet","local":"192.168.1.5","prefixlen":24}]}]`,
				`[{"ifname":"banger0","flags":["BROADCAST"],"linkinfo":{"info_kind":"bridge"}}]`},
			want: []string{
				"run ip -j -d addr show dev banger0",
				"run ip -j addr show",
				"priv ip link add name banger0 type bridge",
				"run ip -j -d addr show dev banger0",
				"priv ip addr add 172.30.0.1/24 dev banger0",
				"priv ip link set dev banger0 up",
			},
		},
		{
			name: "ready",
			show: []string{`[{"ifname":"banger0","flags":["UP"],"linkinfo":{"info_kind":"bridge"},
				"addr_info":[{"family":"inet","local":"172.30.0.1","prefixlen":24}]}]`},
			want: []string{"run ip -j -d addr show dev banger0"},
		},
		{
			name: "wrong prefix",
			show: []string{`[{"ifname":"banger0","flags":["UP"],"linkinfo":{"info_kind":"bridge"},
				"addr_info":[{"family":"inet","local":"172.30.0.1","prefixlen":16}]}]`,
				`[{"ifname":"banger0","addr_info":[{"family":"inet","local":"172.30.0.1","prefixlen":16}]}]`},
			want: []string{"run ip -j -d addr show dev banger0", "run ip -j addr show", "priv ip addr add 172.30.0.1/24 dev banger0"},
		},
	}
	for _, tt := range tests {
		f := &fakeIP{show: tt.show}
		m := &Manager{R: f}
		if err := m.EnsureBridge(context.Background()); err != nil {
			t.Errorf("EnsureBridge(%s) = %v", tt.name, err)
		}
		if !slices.Equal(f.calls, tt.want) {
			t.Errorf("EnsureBridge(%s) ran\n%s\nwant\n%s", tt.name, strings.Join(f.calls, "\n"), strings.Join(tt.want, "\n"))
		}
	}
}

func TestEnsureBridgeRefusesATakenSubnet(t *testing.T) {
	f := &fakeIP{show: []string{"", `[{"ifname":"banger0","addr_info":[{"family":"inet","local":"172.30.0.1","prefixlen":24}]}]`}}
	m := &Manager{R: f, Bridge: "banger1000"}
	err := m.EnsureBridge(context.Background())
	if err == nil || !strings.Contains(err.Error(), "overlaps 172.30.0.1/24 on banger0") || !strings.Contains(err.Error(), "172.30.1.0/24") {
		t.Fatalf("EnsureBridge over another bridge's subnet = %v, want a refusal naming it and a free subnet", err)
	}
	for _, c := range f.calls {
		if strings.HasPrefix(c, "priv ") {
			t.Errorf("EnsureBridge changed something before refusing: %v", f.calls)
		}
	}
}

func TestCreateTAPCommands(t *testing.T) {
	f := &fakeIP{show: []string{""}}
	m := &Manager{R: f, Bridge: "br1"}
	if err := m.CreateTAP(context.Background(), "bgtap-1", 1000, 1001); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"run ip -j -d addr show dev bgtap-1",
		"priv ip tuntap add dev bgtap-1 mode tap user 1000 group 1001",
		"priv ip link set dev bgtap-1 master br1 up",
	}
	if !slices.Equal(f.calls, want) {
		t.Errorf("CreateTAP() ran\n%s\nwant\n%s", strings.Join(f.calls, "\n"), strings.Join(want, "\n"))
	}
}
