// Command testinit is the /sbin/init of the boot test's root disk: it checks
// what banger-init handed over, reports on the console and reboots.
package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	var problems []string
	if os.Getpid() != 1 {
		problems = append(problems, fmt.Sprintf("pid %d, want 1", os.Getpid()))
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		problems = append(problems, "no /proc: "+err.Error())
	}
	var rootType string
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[1] == "/" {
			rootType = f[2] + " " + strings.Split(f[3], ",")[0]
		}
	}
	for _, want := range []string{" /dev devtmpfs", " /sys sysfs"} {
		if !strings.Contains(string(mounts), want) {
			problems = append(problems, "no"+want)
		}
	}
	if _, err := os.Stat("/init"); err == nil {
		problems = append(problems, "initramfs /init still visible")
	}
	report := fmt.Sprintf("pid=%d root=%q args=%q", os.Getpid(), rootType, os.Args[1:])
	if err := os.WriteFile("/banger-test-ok", []byte(report+"\n"), 0o644); err != nil {
		problems = append(problems, "writing /banger-test-ok: "+err.Error())
	}
	unix.Sync()
	if len(problems) > 0 {
		fmt.Printf("BANGER-INIT-TEST-FAIL %s %s\n", report, strings.Join(problems, "; "))
	} else {
		fmt.Printf("BANGER-INIT-TEST-OK %s\n", report)
	}
	os.Stdout.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}
