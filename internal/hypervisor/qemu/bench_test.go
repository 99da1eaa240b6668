package qemu

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/hypervisor"
	"github.com/banger/banger/internal/vmtest"
)

// benchRestores is how many VMs each snapshot is restored into, all left
// running, so their memory can be measured side by side.
const benchRestores = 4

// BenchmarkWarmStart compares the ways to keep guest RAM in a snapshot,
// for the minimal and the docker image: snapshot size and time, restore to
// the agent's first answer (and to a finished SSH command, for the first
// restore of each round), and the RSS and PSS of benchRestores restored
// VMs running at once. Each of BANGER_BENCH_N (3) rounds boots a template
// VM, waits until it is ready (agent, SSH, and for docker the end of
// systemd's start-up), snapshots it and restores it. Medians are reported.
//
//	stream      RAM copied into the migration stream (state.mig), on disk
//	shared-disk RAM in a shared file on disk, x-ignore-shared, restores map it privately
//	shared-shm  the same with the file (and the snapshot) on /dev/shm
//
// Run: BANGER_VM_TESTS=1 BANGER_RUNTIME=... flock /tmp/banger-vm.lock go test -run '^$' -bench WarmStart -benchtime 1x ./internal/hypervisor/qemu/
func BenchmarkWarmStart(b *testing.B) {
	vmtest.Require(b, "benchmarking warm starts under qemu", vmtest.Root(), vmtest.Tool(DefaultBinary, "qemu-system-x86"), vmtest.Tool("qemu-img", "qemu-utils"))
	rt := testRuntime(b)
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("BANGER_BENCH_N")); err == nil && n > 0 {
		rounds = n
	}
	for _, image := range []string{"minimal", "docker"} {
		for _, mode := range []string{"stream", "shared-disk", "shared-shm"} {
			b.Run(image+"/"+mode, func(b *testing.B) {
				var snapMS, restoreMS, agentMS, sshMS, rss, pss, pssAnon, pssFile, pssShmem []float64
				var stateSize, ramSize float64
				for r := 0; r < rounds; r++ {
					res := warmRound(b, rt, image, mode, r)
					snapMS = append(snapMS, res.snapshot.Seconds()*1000)
					stateSize, ramSize = float64(res.stateBytes), float64(res.ramBytes)
					for _, v := range res.vms {
						restoreMS = append(restoreMS, v.restore.Seconds()*1000)
						agentMS = append(agentMS, v.agent.Seconds()*1000)
						if v.ssh > 0 {
							sshMS = append(sshMS, v.ssh.Seconds()*1000)
						}
						rss = append(rss, v.mem["Rss"])
						pss = append(pss, v.mem["Pss"])
						pssAnon = append(pssAnon, v.mem["Pss_Anon"])
						pssFile = append(pssFile, v.mem["Pss_File"])
						pssShmem = append(pssShmem, v.mem["Pss_Shmem"])
					}
				}
				b.ReportMetric(median(snapMS), "snapshot-ms")
				b.ReportMetric(stateSize/(1<<20), "state-MiB")
				b.ReportMetric(ramSize/(1<<20), "ramfile-used-MiB")
				b.ReportMetric(median(restoreMS), "restore-ms")
				b.ReportMetric(median(agentMS), "to-agent-ms")
				b.ReportMetric(p90(agentMS), "to-agent-p90-ms")
				b.ReportMetric(median(sshMS), "to-ssh-ms")
				b.ReportMetric(median(rss)/1024, "rss-MiB")
				b.ReportMetric(median(pss)/1024, "pss-MiB")
				b.ReportMetric(median(pssAnon)/1024, "pss-anon-MiB")
				b.ReportMetric(median(pssFile)/1024, "pss-file-MiB")
				b.ReportMetric(median(pssShmem)/1024, "pss-shmem-MiB")
			})
		}
	}
}

type warmResult struct {
	snapshot   time.Duration
	stateBytes int64
	ramBytes   int64 // blocks the RAM file uses, 0 in stream mode
	vms        []warmVM
}

type warmVM struct {
	restore, agent time.Duration
	ssh            time.Duration      // first restore only: to a finished ssh command
	mem            map[string]float64 // smaps_rollup, kB
}

// warmRound boots one template of image, snapshots it in mode and
// restores it benchRestores times.
func warmRound(b *testing.B, rt runtimeFiles, image, mode string, round int) warmResult {
	b.Helper()
	ns := vmtest.NewNS(b)
	addTap(b, ns, "tap0")
	wrap := []string{"ip", "netns", "exec", ns.Name}
	be := &Backend{Wrap: wrap}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	root := "/tmp"
	if mode == "shared-shm" {
		root = "/dev/shm"
	}
	mk := func() string {
		d, err := os.MkdirTemp(root, "bqb-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(d) })
		return d
	}
	srcDir, snap := mk(), mk()
	rootfs := rt.minimal
	if image == "docker" {
		rootfs = rt.docker
	}
	// Template disks on disk, always: only RAM placement is compared.
	diskDir, err := os.MkdirTemp("/tmp", "bqd-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(diskDir) })
	srcDisks := rawDisks(b, rt, rootfs, diskDir)
	src := guestSpec(rt, fmt.Sprintf("tpl%d", round), srcDir, "tap0", "02:fc:00:00:00:01", srcDisks)
	if mode != "stream" {
		src.MemoryFile = filepath.Join(srcDir, "ram")
	}
	inst, err := be.Start(ctx, src)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { inst.Kill() })
	h := waitHealth(b, inst, src.ConsoleLog, 5*time.Minute)
	ready := "true"
	if image == "docker" {
		ready = "timeout 240 systemctl is-system-running --wait; true"
	}
	sshRun(b, ns, rt.key, h.SSHHostKeys[0], ready)
	if err := inst.(hypervisor.Pauser).Pause(ctx); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if err := inst.(hypervisor.Snapshotter).Snapshot(ctx, snap); err != nil {
		b.Fatal(err)
	}
	res := warmResult{snapshot: time.Since(t0)}
	inst.Kill()
	sizes := dirSizes(b, snap)
	res.stateBytes = sizes[SnapshotStateName]
	if mode != "stream" {
		res.ramBytes = usedBytes(b, filepath.Join(snap, SnapshotMemoryName))
	}
	delTap(b, ns, "tap0")

	var insts []hypervisor.Instance
	defer func() {
		for _, i := range insts {
			i.Kill()
		}
	}()
	for k := 0; k < benchRestores; k++ {
		tap := fmt.Sprintf("tap%d", k+1)
		addTap(b, ns, tap)
		dir := mk()
		dst := guestSpec(rt, fmt.Sprintf("w%d", k), dir, tap, "02:fc:00:00:01:01", overlayDisks(b, []string{srcDisks[0].Path, srcDisks[1].Path}, "raw", dir))
		t1 := time.Now()
		ri, err := be.Restore(ctx, dst, snap)
		if err != nil {
			b.Fatal(err)
		}
		restored := time.Since(t1)
		insts = append(insts, ri)
		waitHealth(b, ri, dst.ConsoleLog, time.Minute)
		v := warmVM{restore: restored, agent: time.Since(t1)}
		if k == 0 {
			// Only the first restore's TAP holds the guests' subnet alone.
			sshRun(b, ns, rt.key, h.SSHHostKeys[0], "true")
			v.ssh = time.Since(t1)
		}
		res.vms = append(res.vms, v)
	}
	// Let the restored guests settle (timers, the first page faults).
	time.Sleep(3 * time.Second)
	for k, i := range insts {
		res.vms[k].mem = smapsRollup(b, i.PID())
	}
	return res
}

// usedBytes is the space a file takes on its filesystem.
func usedBytes(b testing.TB, path string) int64 {
	b.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		b.Fatal(err)
	}
	return st.Blocks * 512
}

// smapsRollup reads /proc/<pid>/smaps_rollup (kB values).
func smapsRollup(b testing.TB, pid int) map[string]float64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 2 && fields[1] == "kB" {
			n, _ := strconv.ParseFloat(fields[0], 64)
			m[k] = n
		}
	}
	return m
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func p90(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*9+9)/10-1)]
}
