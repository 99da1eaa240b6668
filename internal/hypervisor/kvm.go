package hypervisor

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// KVMUsable returns nil when hardware KVM really works: /dev/kvm is
// accessible and the CPU advertises vmx or svm. A /dev/kvm node alone is not
// proof: nested paravirtual KVM exposes the node without the CPU flag and
// fails on ordinary guests.
func KVMUsable() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening /dev/kvm: %w (load kvm_intel or kvm_amd, and add your user to the kvm group)", err)
	}
	f.Close()
	ok, err := cpuHasVirtFlag("/proc/cpuinfo")
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("/dev/kvm exists but the CPU has no vmx or svm flag (nested or paravirtual KVM), so hardware virtualization does not work here")
	}
	return nil
}

func cpuHasVirtFlag(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("reading cpu flags: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "flags") {
			continue
		}
		for _, fl := range strings.Fields(line) {
			if fl == "vmx" || fl == "svm" {
				return true, nil
			}
		}
		return false, nil
	}
	return false, sc.Err()
}
