package netsetup

import (
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/guestconfig"
)

func TestCommands(t *testing.T) {
	c, err := guestconfig.ParseNetwork("ip=172.16.0.2::172.16.0.1:255.255.255.0:vm1:eth0:off:172.16.0.1")
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"link", "set", "lo", "up"},
		{"link", "set", "eth0", "up"},
		{"addr", "replace", "172.16.0.2/24", "dev", "eth0"},
		{"route", "replace", "default", "via", "172.16.0.1", "dev", "eth0"},
	}
	if got := ipCommands(c); !reflect.DeepEqual(got, want) {
		t.Errorf("Commands() = %q, want %q", got, want)
	}
	if got, want := resolvConf(c), "nameserver 172.16.0.1\n"; !strings.HasSuffix(got, want) {
		t.Errorf("ResolvConf() = %q, want it to end %q", got, want)
	}
}

func TestHostsWithName(t *testing.T) {
	tests := []struct{ old, name, want string }{
		{"127.0.0.1\tlocalhost\n", "vm1", "127.0.0.1\tlocalhost\n127.0.1.1\tvm1\n"},
		{"127.0.0.1\tlocalhost\n127.0.1.1\told\n", "new", "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n"},
	}
	for _, tt := range tests {
		if got := hostsWithName(tt.old, tt.name); got != tt.want {
			t.Errorf("hostsWithName(%q, %q) = %q, want %q", tt.old, tt.name, got, tt.want)
		}
	}
}

// TestVsockLoopback serves over a real AF_VSOCK socket through the host's

func TestReconfigureBatch(t *testing.T) {
	c, err := guestconfig.ParseNetwork("ip=172.30.0.7::172.30.0.1:255.255.255.0:box7:eth0:off:172.30.0.1")
	if err != nil {
		t.Fatal(err)
	}
	want := "link set dev eth0 down\n" +
		"link set dev eth0 address 02:ba:ac:1e:00:07\n" +
		"addr flush dev eth0\n" +
		"addr add 172.30.0.7/24 dev eth0\n" +
		"link set dev eth0 up\n" +
		"route replace default via 172.30.0.1 dev eth0\n"
	if got := reconfigureBatch(c, "02:ba:ac:1e:00:07"); got != want {
		t.Errorf("reconfigureBatch() = %q, want %q", got, want)
	}
	if got := reconfigureBatch(c, ""); strings.Contains(got, "address") {
		t.Errorf("reconfigureBatch() without a MAC = %q, want no address change", got)
	}
}
