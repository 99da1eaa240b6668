package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/rpc"
)

func (a *app) newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "image",
		Aliases: []string{"images"},
		Short:   "List the images VMs boot from",
		Long:    "Images are the root filesystems VMs boot from; they come with the runtime bundle. Pick one with: banger vm create NAME --image IMAGE",
		Example: `  banger image list`,
		Args:    subcommandArgs,
		RunE:    showHelp,
	}
	cmd.AddCommand(a.newImageListCmd())
	return cmd
}

func (a *app) newImageListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List images",
		Example: `  banger image list
  banger image ls --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			imgs, err := c.ListImages(ctx)
			if err != nil {
				return fmt.Errorf("listing images: %w", err)
			}
			if imgs == nil {
				imgs = []rpc.Image{}
			}
			if asJSON {
				return printJSON(a.stdout, imgs)
			}
			if len(imgs) == 0 {
				fmt.Fprintln(a.stderr, "No images. Install a runtime bundle: banger runtime --help")
				return nil
			}
			tw := newTable(a.stdout)
			fmt.Fprintln(tw, "NAME\tDEFAULT\tSIZE\tROOTFS")
			for _, img := range imgs {
				def := ""
				if img.Default {
					def = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", img.Name, def, fmtBytes(img.Size), orDash(img.Rootfs))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the images as a JSON array")
	return cmd
}

// completeImages completes --image when bangerd already runs.
func (a *app) completeImages(cmd *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	ctx, cancel := context.WithTimeout(cmdContext(cmd), 2*time.Second)
	defer cancel()
	c, up, err := a.runningClient(ctx)
	if err != nil || !up {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	imgs, err := c.ListImages(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, img := range imgs {
		if strings.HasPrefix(img.Name, toComplete) {
			desc := fmtBytes(img.Size)
			if img.Default {
				desc += ", default"
			}
			out = append(out, cobra.CompletionWithDesc(img.Name, desc))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
