package firecracker

import (
	"os"
	"testing"

	"github.com/banger/banger/internal/hypervisor/firecracker/fctest"
)

// TestMain lets this test binary run as a fake firecracker process (see
// fctest.InstallFake), so that Backend is tested against a real process.
func TestMain(m *testing.M) {
	fctest.RunIfFake()
	os.Exit(m.Run())
}
