package agentd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/guestconfig"
)

// System is what the agent reads and changes of the machine it runs in.
// The default (Server.System nil) is the guest's own; tests give one of
// their own, so that a guest's identity never touches the host running
// them.
type System interface {
	Hostname() (string, error)
	// UptimeMS is how long the machine has been up (a restore continues
	// the snapshotted machine's).
	UptimeMS() int64
	// MachineID is /etc/machine-id, "" when there is none.
	MachineID() string
	// HostKeys are the SSH host public keys, one authorized_keys line each.
	HostKeys() []string
	// Settled reports that init has started what it starts at boot;
	// SSHListening that sshd accepts connections.
	Settled(ctx context.Context) bool
	SSHListening() bool

	SetClock(t time.Time) error
	AddEntropy(b []byte) error
	// SetNetwork gives the interface n.Device its address, route, MAC and
	// resolvers and the machine n.Hostname; with no address (n.Client
	// zero) only the hostname.
	SetNetwork(ctx context.Context, n guestconfig.Network, mac string) error
	SetMachineID(id string) error
	// NewHostKeys replaces the SSH host keys with fresh ones of the same
	// types, for the connections sshd accepts from then on.
	NewHostKeys(ctx context.Context) error
	// SetOpencodePassword writes the opencode server's password file and
	// restarts the server when the file changed; changed says whether it did.
	SetOpencodePassword(ctx context.Context, pw string) (changed bool, err error)
	GrowFilesystems(ctx context.Context) error
	// ParkSSHD readies sshd for a template's snapshot: NewHostKeys of each
	// restore then only hands it the rest of its start.
	ParkSSHD(ctx context.Context) error
	// Sync makes durable what the steps above wrote: they write their
	// files unsynced, and one sync of the filesystem costs less than each
	// file's own.
	Sync() error
}

// identityTimeout bounds one identity request in the guest.
const identityTimeout = 2 * time.Minute

// identity applies id (clock and entropy first, then the rest at once) and
// answers with the guest's health afterwards. Nothing is applied of an
// identity that does not validate; a failing step fails the request,
// which names what was applied.
func (s *Server) identity(id *agent.Identity) agent.Response {
	if id == nil {
		return agent.Response{Error: "identity: the request carries no identity"}
	}
	if err := id.Validate(); err != nil {
		return agent.Response{Error: err.Error()}
	}
	nc, _ := id.NetworkConfig()
	s.mu.Lock()
	defer s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), identityTimeout)
	defer cancel()
	sys := s.system()
	type step struct {
		name string
		on   bool
		fn   func() error
	}
	// The clock and the RNG come first, one after the other: keys and ids
	// are made from the reseeded RNG. The rest is independent, and runs
	// at once (the ip process and the fsyncs are slow under emulation).
	phases := [][]step{
		{
			{"clock", id.TimeUnixNano != 0, func() error { return sys.SetClock(time.Unix(0, id.TimeUnixNano)) }},
			{"entropy", len(id.Entropy) > 0, func() error { return sys.AddEntropy(id.Entropy) }},
		},
		{
			{"network", id.Hostname != "" || id.Network != nil, func() error {
				mac := ""
				if id.Network != nil {
					mac = id.Network.MAC
				}
				return sys.SetNetwork(ctx, nc, mac)
			}},
			{"machine-id", id.MachineID != "", func() error { return sys.SetMachineID(id.MachineID) }},
			{"host-keys", id.NewHostKeys, func() error { return sys.NewHostKeys(ctx) }},
			{"opencode-password", id.OpencodePassword != "", func() error {
				changed, err := sys.SetOpencodePassword(ctx, id.OpencodePassword)
				if err == nil && !changed {
					return errUnchanged
				}
				return err
			}},
			{"filesystems", id.GrowFilesystems, func() error { return s.growFilesystems(ctx) }},
		},
	}
	var applied, took []string
	for i, phase := range phases {
		errs := make([]error, len(phase))
		durs := make([]time.Duration, len(phase))
		timed := func(k int, fn func() error) {
			t0 := time.Now()
			errs[k] = fn()
			durs[k] = time.Since(t0)
		}
		var wg sync.WaitGroup
		for k, st := range phase {
			if !st.on {
				errs[k] = errUnchanged
				continue
			}
			if i == 0 {
				timed(k, st.fn)
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				timed(k, st.fn)
			}()
		}
		wg.Wait()
		var failed []string
		if i > 0 {
			if err := sys.Sync(); err != nil {
				failed = append(failed, err.Error())
			}
		}
		for k, err := range errs {
			if phase[k].on {
				took = append(took, fmt.Sprintf("%s=%v", phase[k].name, durs[k].Round(time.Millisecond)))
			}
			switch {
			case errors.Is(err, errUnchanged):
			case err != nil:
				failed = append(failed, fmt.Sprintf("%s: %v", phase[k].name, err))
			default:
				applied = append(applied, phase[k].name)
			}
		}
		if len(failed) > 0 {
			s.log().Error("identity failed", "failed", failed, "applied", applied)
			return agent.Response{Error: fmt.Sprintf("identity: %s (applied: %v)", strings.Join(failed, "; "), applied)}
		}
	}
	s.log().Info("identity applied", "what", id.String(), "applied", applied, "took", took)
	resp := s.health(false)
	resp.Applied = applied
	return resp
}

// templateTimeout bounds a template request in the guest.
const templateTimeout = time.Minute

// template readies the guest for the snapshot of a template (ParkSSHD).
func (s *Server) template() agent.Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), templateTimeout)
	defer cancel()
	if err := s.system().ParkSSHD(ctx); err != nil {
		s.log().Error("readying the template failed", "err", err)
		return agent.Response{Error: "template: " + err.Error()}
	}
	return agent.Response{OK: true}
}

// errUnchanged marks a step that found nothing to change.
var errUnchanged = errors.New("unchanged")
