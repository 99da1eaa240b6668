package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/rpc"
	"github.com/banger/banger/internal/web/login"
)

func (a *app) newUICmd() *cobra.Command {
	var noOpen, remote bool
	cmd := &cobra.Command{
		Use:   "ui [--no-open] [--remote]",
		Short: "Open the web UI in a browser, logged in",
		Long: `Print a link that logs a browser into bangerd's web UI, and open it with
xdg-open when there is a display. The link works once, within 5 minutes, and
only for the user it is made for: you, or under sudo the user who ran sudo.
The browser then keeps a login cookie for 7 days; the cookie works only for
that same user.

Without a login the web UI answers only bangerd's own user (it checks which
user owns each connection). The link is what lets in a browser that runs as
someone else: your own browser for a bangerd that runs as root
('sudo banger ui'), or, with web_auth = "login" in the config, every browser.

The link goes to stdout and the explanation to stderr, so scripts can take
the link alone.`,
		Example: `  banger ui
  sudo banger ui             # bangerd runs as root; your browser logs in
  banger ui --no-open        # print the link only
  banger ui --remote         # for a browser on another host (web_auth = "login")`,
		Args: noArgs,
		RunE: a.withClient(func(ctx context.Context, c *rpc.Client, _ []string) error {
			return a.ui(ctx, c, noOpen, remote)
		}),
	}
	cmd.Flags().BoolVar(&noOpen, "no-open", false, "print the link without opening a browser")
	cmd.Flags().BoolVar(&remote, "remote", false, "make the link for a browser on another host (needs web_auth = \"login\")")
	return cmd
}

func (a *app) ui(ctx context.Context, c *rpc.Client, noOpen, remote bool) error {
	st, err := c.Status(ctx)
	if err != nil {
		return fmt.Errorf("opening the web UI: getting bangerd's status: %w", err)
	}
	f, err := readLoginFile(st)
	if err != nil {
		return err
	}
	uid, who := browserUser()
	base := f.URL
	if remote {
		if f.Auth != "login" {
			return usagef(nil, "opening the web UI: --remote needs web_auth = \"login\" and a web_listen_addr other hosts can reach (bangerd has web_auth = %q, listening on %s)", f.Auth, f.Listen)
		}
		uid, who = login.Remote, "a browser on another host"
		base = remoteURL(f)
	}
	link := base + "/login?token=" + url.QueryEscape(f.Token(uid, time.Now()))
	fmt.Fprintf(a.stderr, "This link logs %s into banger's web UI at %s. It works once, within %s:\n",
		who, f.URL, login.TokenTTL)
	fmt.Fprintln(a.stdout, link)
	if noOpen || remote {
		return nil
	}
	if err := openBrowser(link, uid); err != nil {
		a.debugf("not opening a browser: %v", err)
		fmt.Fprintln(a.stderr, "Open it in your browser.")
		return nil
	}
	fmt.Fprintln(a.stderr, "Opening it with xdg-open.")
	return nil
}

// readLoginFile reads the running bangerd's login secret.
func readLoginFile(st *rpc.Status) (*login.File, error) {
	path := filepath.Join(st.StateDir, login.FileName)
	f, err := login.Read(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("opening the web UI: bangerd (pid %d) serves no web UI: web_listen_addr is \"\" in its config, or the UI did not start (see bangerd's log, %s)", st.PID, config.DefaultPaths().Log)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("opening the web UI: %w: run 'banger ui' as the user bangerd runs as (for a bangerd that runs as root: sudo banger ui)", err)
	case err != nil:
		return nil, fmt.Errorf("opening the web UI: %w", err)
	case f.PID != st.PID:
		return nil, fmt.Errorf("opening the web UI: bangerd (pid %d) serves no web UI; %s is left from pid %d: see bangerd's log (%s), and check web_listen_addr", st.PID, path, f.PID, config.DefaultPaths().Log)
	}
	return f, nil
}

// browserUser is whose browser the link is for: the user who ran sudo when
// banger runs as root through sudo, else banger's own user.
func browserUser() (int, string) {
	uid := os.Getuid()
	if os.Geteuid() == 0 {
		if n, err := strconv.Atoi(os.Getenv("SUDO_UID")); err == nil && n > 0 {
			uid = n
		}
	}
	name := "uid " + strconv.Itoa(uid)
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		name = u.Username + " (" + name + ")"
	}
	return uid, "the browser of " + name
}

// remoteURL is f's URL with a host other machines can use when the UI
// listens on every address.
func remoteURL(f *login.File) string {
	host, port, err := net.SplitHostPort(f.Listen)
	if err != nil {
		return f.URL
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if name, err := os.Hostname(); err == nil && name != "" {
			return "http://" + net.JoinHostPort(name, port)
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

// openBrowser runs xdg-open on link as the user uid when a display is
// there, without waiting for the browser.
func openBrowser(link string, uid int) error {
	if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
		return errors.New("no DISPLAY or WAYLAND_DISPLAY")
	}
	bin, err := exec.LookPath("xdg-open")
	if err != nil {
		return errors.New("xdg-open is not installed (apt-get install xdg-utils)")
	}
	cmd := exec.Command(bin, link)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if uid != os.Geteuid() {
		// banger runs as root under sudo: the browser is the sudo user's.
		u, err := user.LookupId(strconv.Itoa(uid))
		if err != nil {
			return fmt.Errorf("finding user %d: %w", uid, err)
		}
		gid, _ := strconv.Atoi(u.Gid)
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		rt := "/run/user/" + strconv.Itoa(uid)
		cmd.Env = []string{"HOME=" + u.HomeDir, "USER=" + u.Username, "LOGNAME=" + u.Username,
			"PATH=/usr/local/bin:/usr/bin:/bin", "XDG_RUNTIME_DIR=" + rt, "DBUS_SESSION_BUS_ADDRESS=unix:path=" + rt + "/bus"}
		for _, k := range []string{"DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY"} {
			if v := os.Getenv(k); v != "" {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("running xdg-open: %w", err)
	}
	go cmd.Wait()
	// Give xdg-open a moment: banger exits right after.
	time.Sleep(200 * time.Millisecond)
	return nil
}
