package network

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/banger/banger/internal/runner/runnertest"
)

// fakeIP answers the device reads of ip ("ip -j -d addr show dev X"), one
// canned output after the other, "" meaning no such device; the address
// listing of every device ("ip -j addr show") gets addrs; privileged
// commands succeed. It records every call.
func fakeIP(devReads []string, addrs string) *runnertest.Runner {
	r := &runnertest.Runner{}
	var replies []runnertest.Reply
	for _, out := range devReads {
		if out == "" {
			replies = append(replies, runnertest.Reply{Err: errors.New(`ip: exit status 1: Device "x" does not exist.`)})
		} else {
			replies = append(replies, runnertest.Reply{Out: out})
		}
	}
	r.Reply("ip -j -d addr show dev", replies...)
	r.Reply("ip -j addr show", runnertest.Reply{Out: addrs})
	r.On("ip", func([]string) ([]byte, error) { return nil, nil }) // every privileged ip call
	return r
}

func TestEnsureBridgeCommands(t *testing.T) {
	tests := []struct {
		name  string
		show  []string
		addrs string
		want  []string
	}{
		{
			name:  "missing",
			show:  []string{"", `[{"ifname":"banger0","flags":["BROADCAST"],"linkinfo":{"info_kind":"bridge"}}]`},
			addrs: `[{"ifname":"eth0","addr_info":[{"family":"inet","local":"192.168.1.5","prefixlen":24}]}]`,
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
				"addr_info":[{"family":"inet","local":"172.30.0.1","prefixlen":16}]}]`},
			addrs: `[{"ifname":"banger0","addr_info":[{"family":"inet","local":"172.30.0.1","prefixlen":16}]}]`,
			want:  []string{"run ip -j -d addr show dev banger0", "run ip -j addr show", "priv ip addr add 172.30.0.1/24 dev banger0"},
		},
	}
	for _, tt := range tests {
		f := fakeIP(tt.show, tt.addrs)
		m := &Manager{R: f}
		if err := m.EnsureBridge(context.Background()); err != nil {
			t.Errorf("EnsureBridge(%s) = %v", tt.name, err)
		}
		if got := f.Calls(); !slices.Equal(got, tt.want) {
			t.Errorf("EnsureBridge(%s) ran\n%s\nwant\n%s", tt.name, strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
		}
	}
}

func TestEnsureBridgeRefusesATakenSubnet(t *testing.T) {
	f := fakeIP([]string{""}, `[{"ifname":"banger0","addr_info":[{"family":"inet","local":"172.30.0.1","prefixlen":24}]}]`)
	m := &Manager{R: f, Bridge: "banger1000"}
	err := m.EnsureBridge(context.Background())
	if err == nil || !strings.Contains(err.Error(), "overlaps 172.30.0.1/24 on banger0") || !strings.Contains(err.Error(), "172.30.1.0/24") {
		t.Fatalf("EnsureBridge over another bridge's subnet = %v, want a refusal naming it and a free subnet", err)
	}
	for _, c := range f.Calls() {
		if strings.HasPrefix(c, "priv ") {
			t.Errorf("EnsureBridge changed something before refusing: %v", f.Calls())
		}
	}
}

func TestCreateTAPCommands(t *testing.T) {
	f := fakeIP([]string{""}, "")
	m := &Manager{R: f, Bridge: "br1"}
	if err := m.CreateTAP(context.Background(), "bgtap-1", 1000, 1001); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"run ip -j -d addr show dev bgtap-1",
		"priv ip tuntap add dev bgtap-1 mode tap user 1000 group 1001",
		"priv ip link set dev bgtap-1 master br1 up",
	}
	if got := f.Calls(); !slices.Equal(got, want) {
		t.Errorf("CreateTAP() ran\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
