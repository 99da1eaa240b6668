package e2e

import (
	"bufio"
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// floodConns is the figure: 20,000 idle connections, opened by
// floodProcs processes of one user.
const (
	floodConns = 20000
	floodProcs = 4
)

// TestWebFlood: another local user's 20,000 idle connections to the web UI
// neither exhaust bangerd's file descriptors nor stop the owner: 'banger vm
// list' answers within a second and the UI still serves root.
func TestWebFlood(t *testing.T) {
	e := newEnv(t)
	root := e.webClient(webBase)
	flooder := newTestUser(t, "")
	pid := e.pid

	// Each flooding process may hold fewer descriptors than the flood
	// needs (RLIMIT_NOFILE is 20,000 here, and root cannot raise it without
	// CAP_SYS_RESOURCE), so the flooder runs floodProcs of them.
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/limits"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "Max open files") {
				t.Logf("bangerd: %s", strings.Join(strings.Fields(l), " "))
			}
		}
	}

	listTimes := func(n int) []time.Duration {
		var ds []time.Duration
		for range n {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			start := time.Now()
			if _, errOut, err := e.banger(ctx, "vm", "list"); err != nil {
				t.Errorf("banger vm list: %v: %s", err, errOut)
			}
			ds = append(ds, time.Since(start))
			cancel()
		}
		return ds
	}
	fdsBefore := countFDs(t, pid)
	before := listTimes(5)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	lines := make(chan string, floodProcs)
	start := time.Now()
	for range floodProcs {
		cmd := e.asUser(ctx, flooder, "flood", "127.0.0.1:7777", strconv.Itoa(floodConns/floodProcs))
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Errorf("flooding helper: %v", err)
			}
		}()
		go func() {
			l, _ := bufio.NewReader(stdout).ReadString('\n')
			lines <- strings.TrimSpace(l)
		}()
	}
	// While the flooders open their connections, and after: sample
	// bangerd's descriptors and time the owner's CLI and UI.
	var during []time.Duration
	maxFDs := 0
	var reports []string
	holding := 0
	for len(reports) < floodProcs {
		select {
		case r := <-lines:
			reports = append(reports, r)
			if f := strings.Fields(r); len(f) > 1 && f[0] == "holding" {
				n, _ := strconv.Atoi(f[1])
				holding += n
			}
		case <-time.After(500 * time.Millisecond):
		}
		maxFDs = max(maxFDs, countFDs(t, pid))
		during = append(during, listTimes(1)...)
		if time.Since(start) > 4*time.Minute {
			t.Fatalf("the flooding helpers did not finish opening their connections: %q", reports)
		}
	}
	t.Logf("flooder (uid %d), %d processes, all connected after %s: %s", flooder.UID, floodProcs, time.Since(start).Round(time.Millisecond), strings.Join(reports, "; "))
	if holding < floodConns {
		t.Errorf("the flooder holds %d connections, want %d: %q", holding, floodConns, reports)
	}
	// Now the flood stands: every connection is open on the flooder's side.
	for range 5 {
		maxFDs = max(maxFDs, countFDs(t, pid))
		during = append(during, listTimes(1)...)
		uiStart := time.Now()
		resp, err := root.Get(webBase + "/")
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("root's GET / during the flood = %v, %v, want 200", resp, err)
		} else {
			resp.Body.Close()
			t.Logf("root's GET / during the flood: %s", time.Since(uiStart).Round(time.Millisecond))
		}
		time.Sleep(200 * time.Millisecond)
	}
	slices.Sort(during)
	slices.Sort(before)
	t.Logf("bangerd fds: %d before, at most %d during the flood of %d connections", fdsBefore, maxFDs, holding)
	t.Logf("banger vm list: median %s before; during the flood median %s, max %s over %d runs",
		before[len(before)/2].Round(time.Millisecond), during[len(during)/2].Round(time.Millisecond), during[len(during)-1].Round(time.Millisecond), len(during))
	if worst := during[len(during)-1]; worst > time.Second {
		t.Errorf("banger vm list took %s during the flood, want under a second", worst)
	}
	if limit := fdsBefore + perPeerShare + 100; maxFDs > limit {
		t.Errorf("bangerd held %d fds during the flood, want at most %d (its %d, the flooder's share of %d, and slack)", maxFDs, limit, fdsBefore, perPeerShare)
	}
	if b, err := os.ReadFile(e.logPath); err == nil && strings.Contains(string(b), "too many open files") {
		t.Errorf("bangerd ran out of file descriptors:\n%s", tail(string(b), 20))
	}
}

// perPeerShare is internal/web's per-uid connection share.
const perPeerShare = 64

func countFDs(t *testing.T, pid int) int {
	t.Helper()
	des, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatalf("counting bangerd's fds: %v", err)
	}
	return len(des)
}
