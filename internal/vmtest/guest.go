package vmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// SSH runs script as root in the guest at addr ("172.30.0.2:22"), reached
// from inside ns, logging in with signer and trusting only hostKey; it
// gives the combined output. The session may run for up to 12 minutes,
// and ends at once when ctx does (a guest that is gone sends no FIN).
func (ns *NS) SSH(ctx context.Context, addr string, signer ssh.Signer, hostKey ssh.PublicKey, script string) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	conn, err := ns.Dial(dctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(12 * time.Minute))
	cfg := &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hostKey),
		Timeout:         20 * time.Second,
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return "", err
	}
	client := ssh.NewClient(c, chans, reqs)
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return "", err
	}
	defer sess.Close()
	b, err := sess.CombinedOutput(script)
	if err != nil {
		return string(b), fmt.Errorf("running script: %w: %s", err, b)
	}
	return string(b), nil
}

// GoBuild builds the static binary pkg to out with the Go that runs the
// test (a guest's agent or init).
func GoBuild(t testing.TB, out, pkg string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v: %s", pkg, err, b)
	}
}
