package vm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/guestconfig"
	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/network"
	"github.com/banger/banger/internal/opencode"
	"github.com/banger/banger/internal/store"
)

// entropyBytes is how much of the host's randomness a restored guest's RNG
// gets.
const entropyBytes = 64

// identityFor is what the host tells a guest it is after a boot of kind
// bs.kind: a restored guest of another machine gets all of this VM's own
// identity (address, MAC, name, resolvers, machine-id, host keys); a
// resumed one the clock and entropy; every guest its opencode password and
// filesystems as large as its overlays. The second result is false when a
// cold boot needs nothing of it.
func identityFor(vm *store.VM, bs *bootState) (agent.Identity, bool, error) {
	id := agent.Identity{TimeUnixNano: time.Now().UnixNano(), Entropy: make([]byte, entropyBytes)}
	if _, err := rand.Read(id.Entropy); err != nil {
		return id, false, err
	}
	need := bs.kind != coldBoot
	if bs.kind != restoreSame {
		id.OpencodePassword = opencode.Password(vm.Dir)
		id.GrowFilesystems = vm.DiskFormat == string(hypervisor.DiskQcow2)
		need = need || id.OpencodePassword != "" || id.GrowFilesystems
	}
	if bs.kind == restoreNew {
		n := bs.guest.Network
		id.Hostname = n.Hostname
		net := &agent.Network{Device: n.Device, MAC: vm.MAC, Address: n.Prefix().String()}
		if n.Gateway.IsValid() {
			net.Gateway = n.Gateway.String()
		}
		for _, d := range n.DNS {
			net.DNS = append(net.DNS, d.String())
		}
		id.Network = net
		mid := make([]byte, 16)
		if _, err := rand.Read(mid); err != nil {
			return id, false, err
		}
		id.MachineID = hex.EncodeToString(mid)
		id.NewHostKeys = true
	}
	return id, need, nil
}

// giveIdentity sends a booted or restored guest its identity (identityFor)
// and returns its health after it. A restored guest that does not take it,
// or answers with its old host keys, name or machine-id, is an error: it
// would pass for another machine.
func (e *Engine) giveIdentity(ctx context.Context, vm *store.VM, inst hypervisor.Instance, bs *bootState, h *agent.Health) (*agent.Health, error) {
	id, need, err := identityFor(vm, bs)
	if err != nil || !need {
		return h, err
	}
	if !h.Answers(agent.OpIdentity) {
		if bs.kind != coldBoot {
			return nil, fmt.Errorf("the guest agent of %s is older than this banger and cannot take the VM's own identity after a restore: rebuild its image", vm.Name)
		}
		if id.OpencodePassword != "" && vm.DiskFormat == string(hypervisor.DiskQcow2) {
			e.log.Warn("the guest agent is older than this banger: the opencode server gets no password and stays off (rebuild the image)", "vm", vm.Name)
		}
		return h, nil
	}
	nh, err := (&agent.Client{Dial: inst.DialAgent}).Identity(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("giving %s its own identity: %w", vm.Name, err)
	}
	if bs.kind == restoreNew {
		switch {
		case nh.Hostname != id.Hostname:
			return nil, fmt.Errorf("giving %s its own identity: the guest answers as %q", vm.Name, truncate(nh.Hostname, 64))
		case nh.MachineID != id.MachineID:
			return nil, fmt.Errorf("giving %s its own identity: the guest kept another machine-id", vm.Name)
		case slices.ContainsFunc(nh.SSHHostKeys, func(k string) bool { return slices.Contains(h.SSHHostKeys, k) }):
			return nil, fmt.Errorf("giving %s its own identity: the guest kept an SSH host key of the machine it was restored from", vm.Name)
		}
		os.Remove(filepath.Join(vm.Dir, identityPending))
	}
	e.log.Debug("guest identity", "vm", vm.Name, "what", id.String(), "applied", nh.Applied)
	return nh, nil
}

// machineIDOf is the machine id a VM's cold boots offer an image that has
// none (guestconfig.Config.MachineID): made from the VM's id, so that every
// VM has its own and each of its boots offers the same.
func machineIDOf(vmID string) string {
	sum := sha256.Sum256([]byte("banger machine-id\x00" + vmID))
	return hex.EncodeToString(sum[:16])
}

// markPending records, before a restore of another machine's snapshot,
// the network the guest is to get: a daemon that restarts before the
// guest has it gives it then (pendingBoot).
func markPending(vm *store.VM, g guestconfig.Network) error {
	data, err := json.Marshal(g)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(vm.Dir, identityPending), data, 0o600)
}

// pendingBoot returns the boot of a VM whose restored guest may not have
// its own identity yet (the daemon restarted during its readiness checks),
// or a cold one.
func pendingBoot(vm *store.VM) *bootState {
	bs := &bootState{bootMode: bootMode{kind: coldBoot}}
	data, err := os.ReadFile(filepath.Join(vm.Dir, identityPending))
	if err != nil {
		return bs
	}
	var g guestconfig.Network
	if err := json.Unmarshal(data, &g); err != nil || g.Validate() != nil {
		return bs
	}
	bs.kind, bs.guest.Network = restoreNew, g
	return bs
}

// macOf is the MAC a guest of address ip gets.
func macOf(ip string) string {
	a, _ := netip.ParseAddr(ip)
	return network.MAC(a)
}
