package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/doctor"
	"github.com/banger/banger/internal/hypervisor/firecracker"
	"github.com/banger/banger/internal/hypervisor/qemu"
)

func (a *app) newDoctorCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host for what banger needs",
		Long: `doctor checks the runtime bundle, the hypervisors (and whether KVM really
works, not only whether /dev/kvm exists), the host tools with the Debian
package that provides each, sudo, the bridge, NAT and ip_forward, the .vm DNS
zone and image-build readiness. It runs the same checks bangerd runs before
acting.

It exits 1 when something 'banger vm create' needs is missing.`,
		Example: `  banger doctor
  banger doctor --json | jq '.checks[] | select(.status != "ok")'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(config.DefaultPaths().ConfigFile)
			if err != nil {
				return err
			}
			wd, _ := os.Getwd()
			rep := doctor.Run(cmd.Context(), doctor.Inputs{
				Config:      cfg,
				Firecracker: &firecracker.Backend{Binary: cfg.FirecrackerBinary},
				QEMU:        &qemu.Backend{Binary: cfg.QEMUBinary},
				WorkDir:     wd,
			})
			if asJSON {
				if err := printJSON(a.stdout, rep); err != nil {
					return err
				}
			} else {
				a.printDoctor(rep)
			}
			if !rep.OK {
				return &exitError{code: exitFailure}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func (a *app) printDoctor(rep doctor.Report) {
	marks := map[doctor.Status]string{doctor.OK: "ok  ", doctor.Warn: "warn", doctor.Fail: "FAIL"}
	area := ""
	for _, c := range rep.Checks {
		if c.Area != area {
			area = c.Area
			fmt.Fprintf(a.stdout, "%s\n", area)
		}
		fmt.Fprintf(a.stdout, "  [%s] %-18s %s\n", marks[c.Status], c.Name, c.Detail)
		if c.Fix != "" && c.Status != doctor.OK {
			fmt.Fprintf(a.stdout, "         %-18s fix: %s\n", "", c.Fix)
		}
	}
	if rep.OK {
		fmt.Fprintln(a.stdout, "\nbanger can create VMs on this host.")
	} else {
		fmt.Fprintln(a.stdout, "\nbanger cannot create VMs yet: fix the FAIL lines above.")
	}
}
