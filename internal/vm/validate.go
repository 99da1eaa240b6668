package vm

import (
	"fmt"
	"regexp"
)

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// MinMemoryMiB is the smallest guest memory banger accepts.
const MinMemoryMiB = 256

// MaxVCPUs is the largest vCPU count banger accepts.
const MaxVCPUs = 32

// ValidateName checks that name can be a DNS label under the .vm zone.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("a VM needs a name: pass --name, for example --name testbox")
	}
	if !labelRE.MatchString(name) {
		return fmt.Errorf("invalid VM name %q: use 1 to 63 lowercase letters, digits and hyphens, starting and ending with a letter or digit, because the name becomes a DNS name (testbox.vm)", truncate(name, 80))
	}
	return nil
}

// ValidateShape checks the CPU and memory of a VM; maxMemoryMiB (0: none)
// is what the host can give.
func ValidateShape(vcpus, memoryMiB, maxMemoryMiB int, hypervisor string) error {
	if vcpus < 1 || vcpus > MaxVCPUs {
		return fmt.Errorf("invalid --vcpus %d: use 1 to %d", vcpus, MaxVCPUs)
	}
	if hypervisor == "firecracker" && vcpus > 1 && vcpus%2 != 0 {
		return fmt.Errorf("invalid --vcpus %d: firecracker takes 1 or an even number", vcpus)
	}
	if memoryMiB < MinMemoryMiB {
		return fmt.Errorf("memory %d MiB is too small: use --memory %d or more", memoryMiB, MinMemoryMiB)
	}
	if maxMemoryMiB > 0 && memoryMiB > maxMemoryMiB {
		return fmt.Errorf("memory %d MiB is more than this host has (%d MiB): use a smaller --memory", memoryMiB, maxMemoryMiB)
	}
	return nil
}
