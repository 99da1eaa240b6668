package rootfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/image/ext4"
	"github.com/banger/banger/internal/opencode"
	"github.com/banger/banger/internal/runner"
)

// sshdConfig is the sshd drop-in shared by both kinds.
const sshdConfig = `# Written by banger. Host keys are generated in the guest at first boot.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
UseDNS no
# Empty, but for the pipe the agent parks sshd at in a snapshot whose restores get new host keys.
` + agent.SSHDParkInclude + `
`

const fstab = `# Written by banger: vda is the image, vdb the VM's own /root disk.
/dev/vda / ext4 defaults 0 1
/dev/vdb /root ext4 defaults,nofail 0 2
`

// dockerFstab leaves /root out: banger-root.service mounts it, without
// waiting for udev to announce /dev/vdb (a mount from fstab would).
const dockerFstab = `# Written by banger: vda is the image. vdb, the VM's own /root disk, is
# mounted early by banger-root.service, not from here.
/dev/vda / ext4 defaults 0 1
`

const hosts = `127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
`

const resolvConf = "# Written at boot by banger-vsock-agent net-setup from the kernel ip= argument.\n"

// The docker image boots its readiness path first: banger-net, banger-root,
// ssh and banger-agent start as soon as systemd has loaded its units, with
// nothing of early boot before them (DefaultDependencies=no, and no
// ordering after systemd-remount-fs: the initramfs mounts / read-write).
// Everything else waits for the agent (afterAgentDropIn).

const netUnit = `[Unit]
Description=banger guest network from the kernel ip= argument
DefaultDependencies=no
Before=network-pre.target banger-agent.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + AgentPath + ` net-setup

[Install]
WantedBy=multi-user.target
`

// rootUnit mounts the VM's own /root disk (authorized_keys lives there)
// from the device node the kernel made, where a mount unit would wait for
// udev, which runs after readiness here. Its journal makes fsck needless.
const rootUnit = `[Unit]
Description=banger: mount the VM's own /root disk
DefaultDependencies=no
Before=ssh.service banger-agent.service
ConditionPathExists=/dev/vdb
ConditionPathIsMountPoint=!/root

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount -t ext4 -o defaults /dev/vdb /root

[Install]
WantedBy=multi-user.target
`

// tmpUnit empties /tmp at boot before sshd starts, which Debian leaves to
// systemd-tmpfiles-setup ("D /tmp"). That unit runs after readiness here
// (afterAgent), so it would empty /tmp under a user who is logged in, and
// delete the tmux sessions' sockets; tmpConf keeps it from touching /tmp.
const tmpUnit = `[Unit]
Description=banger: empty /tmp at boot, before anyone can log in
DefaultDependencies=no
Before=ssh.service banger-agent.service banger-tmux.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=-/usr/bin/find /tmp -mindepth 1 -xdev -delete

[Install]
WantedBy=multi-user.target
`

// tmpConf replaces Debian's tmpfiles.d/tmp.conf: /tmp is made, not emptied
// (tmpUnit empties it, earlier).
const tmpConf = `# Written by banger: banger-tmp.service empties /tmp at boot, before sshd
# starts; systemd-tmpfiles-setup runs after readiness and must not.
d /tmp 1777 root root -
`

// agentUnit starts once sshd is ready (ssh.service is Type=notify), so an
// agent that answers has the host keys and sshd accepts connections.
const agentUnit = `[Unit]
Description=banger guest agent (vsock and virtio-serial)
DefaultDependencies=no
After=banger-net.service banger-root.service ssh.service
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=simple
ExecStart=` + AgentPath + ` serve
Restart=always
RestartSec=1
StartupCPUWeight=10000

[Install]
WantedBy=multi-user.target
`

// sshDropIn starts sshd at once, beside banger-net and banger-root (sshd
// needs neither to start: it listens on every address and reads
// authorized_keys at login; the agent, which says it is ready, waits for
// all three). The host key is made on first boot by the agent binary, in
// Go: a shell and ssh-keygen would cost about half a second under TCG.
// Only ed25519: RSA generation costs seconds under TCG. Until boot
// finishes, sshd (and so the host's first login, which is what makes the
// VM ready) and the agent outweigh everything that starts after the agent
// (StartupCPUWeight; the default weight is 100); afterwards all weigh the
// same again. sshd runs with -r: it forks for each connection without
// re-executing itself, which would cost a few hundred milliseconds of each
// login under TCG (and of readiness); the agent parks it in a template
// (agent.SSHDParkInclude) or reloads it when it gives a restored guest new
// host keys.
const sshDropIn = `# Written by banger.
[Unit]
DefaultDependencies=no
After=systemd-journald.socket
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStartPre=
ExecStartPre=` + AgentPath + ` ssh-host-key
ExecStart=
ExecStart=/usr/sbin/sshd -D -r $SSHD_OPTS
StartupCPUWeight=10000
`

// afterAgentDropIn orders a unit of early boot after the agent. Every
// ordinary service (docker, containerd, opencode, tmux restore, getty) is
// after sysinit.target, which gets it too; the early units that run
// before sysinit.target (udev, AppArmor, tmpfiles, sysctl...) get it one
// by one (afterAgent). So nothing competes with the readiness path for the
// vCPUs, and all of it still runs at every boot.
const afterAgentDropIn = `# Written by banger: starts after the readiness path (network, /root,
# sshd, the guest agent), so that it does not compete with it for the vCPUs.
[Unit]
After=banger-agent.service
`

// afterAgent are the units that get afterAgentDropIn: sysinit.target, and
// the units of early boot the docker image runs before it.
var afterAgent = []string{
	"sysinit.target",
	"systemd-udevd.service", "systemd-udev-trigger.service",
	"apparmor.service",
	"systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service", "kmod-static-nodes.service",
	"systemd-modules-load.service", "systemd-sysctl.service", "systemd-sysusers.service",
	"systemd-random-seed.service", "systemd-remount-fs.service",
	"dev-mqueue.mount", "sys-fs-fuse-connections.mount",
}

// opencodeUnit runs the opencode server on opencode.Port. It starts after
// SSH and the agent, and at a lower priority, so that it never delays
// banger's readiness path; under TCG it takes a while to come up.
var opencodeUnit = fmt.Sprintf(`[Unit]
Description=opencode server on port %[1]d
After=banger-net.service banger-agent.service ssh.service
Wants=banger-net.service
RequiresMountsFor=/root
# A binary that cannot run here (SIGILL on a CPU without SSE4.2) gives up
# after five tries instead of restarting for ever.
StartLimitIntervalSec=60
StartLimitBurst=5

[Service]
Type=simple
User=root
Environment=HOME=/root
# The binary is pinned by the image; it must not replace itself.
Environment=OPENCODE_DISABLE_AUTOUPDATE=1
# OPENCODE_SERVER_PASSWORD, written per VM by bangerd: clients use basic
# auth, user opencode. Without the file the server does not start.
EnvironmentFile=`+opencode.EnvFile+`
WorkingDirectory=/root
ExecStart=/usr/local/bin/opencode serve --port %[1]d --hostname 0.0.0.0
Restart=on-failure
RestartSec=2
Nice=10

[Install]
WantedBy=multi-user.target
`, opencode.Port)

// tmuxUnit gives root's tmux sessions the tmux-resurrect/continuum
// behaviour: they come back, detached and with their windows, panes and
// directories, after a stop and start. It restores at boot and saves at
// shutdown. Ordered after ssh.service, it is stopped before it, so the save
// runs while a tmux server started from an SSH session (which lives in
// ssh.service's cgroup: logind is masked) still runs. A tmux server that
// restore starts lives in this unit (RemainAfterExit keeps it).
const tmuxUnit = `[Unit]
Description=banger: restore root's tmux sessions at boot, save them at shutdown
After=banger-net.service banger-root.service ssh.service root.mount
RequiresMountsFor=/root

[Service]
Type=oneshot
RemainAfterExit=yes
User=root
Environment=HOME=/root LANG=C.UTF-8
WorkingDirectory=/root
ExecStart=` + AgentPath + ` tmux-restore
ExecStop=` + AgentPath + ` tmux-save
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
`

// tmuxSaveUnit and tmuxSaveTimer save root's tmux sessions every 30 s, so a
// VM whose hypervisor is killed loses at most that much.
const tmuxSaveUnit = `[Unit]
Description=banger: save root's tmux sessions
RequiresMountsFor=/root
# Never save before the restore has run: that would overwrite the sessions
# still to come back.
After=banger-tmux.service

[Service]
Type=oneshot
User=root
Environment=HOME=/root
ExecStart=` + AgentPath + ` tmux-save
`

const tmuxSaveTimer = `[Unit]
Description=banger: save root's tmux sessions every 30 seconds

[Timer]
OnBootSec=1min
OnUnitActiveSec=30s
AccuracySec=5s

[Install]
WantedBy=timers.target
`

// miseBashrc is appended to the image's /etc/bash.bashrc, which every
// interactive bash reads (login shells through /etc/profile). /root is
// the VM's own disk, so root's dotfiles are not the place.
const miseBashrc = `
# Written by banger: mise for interactive shells.
if [ -x /usr/local/bin/mise ]; then
	eval "$(/usr/local/bin/mise activate bash)"
fi
`

// masked units slow a TCG boot down and do nothing useful in a disposable VM.
var masked = []string{
	"apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service", "apt-daily-upgrade.service",
	"dpkg-db-backup.timer", "dpkg-db-backup.service",
	"e2scrub_all.timer", "e2scrub_all.service", "e2scrub_reap.service",
	"fstrim.timer", "man-db.timer", "systemd-timesyncd.service",
	"getty@tty1.service", "getty-static.service", "systemd-logind.service", "systemd-pstore.service",
	"systemd-journal-flush.service", "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "dev-hugepages.mount",
	"ssh.socket",
	// Modules that load when first used anyway (their device nodes are
	// static), and configfs, which nothing here uses.
	"modprobe@configfs.service", "modprobe@dm_mod.service", "modprobe@fuse.service", "modprobe@loop.service",
	"sys-kernel-config.mount",
	// An empty machine-id makes every VM boot a "first boot", when systemd
	// enables units by preset; these must stay off.
	"systemd-networkd.service", "systemd-networkd.socket", "systemd-network-generator.service",
	"systemd-networkd-wait-online.service", "systemd-firstboot.service",
}

// maskedGenerators are systemd generators for what a banger VM never has:
// encrypted, integrity or verity volumes, hibernation, GPT partitions,
// offline updates, SysV init scripts (every script here has a native unit)
// and the systemd.debug_shell and systemd.run kernel arguments (banger
// writes the command line). Each costs an exec at every boot.
var maskedGenerators = []string{
	"systemd-cryptsetup-generator", "systemd-integritysetup-generator", "systemd-veritysetup-generator",
	"systemd-hibernate-resume-generator", "systemd-gpt-auto-generator", "systemd-system-update-generator",
	"systemd-sysv-generator", "systemd-debug-generator", "systemd-run-generator",
}

// customize turns a copy of the debootstrap tree at root into a banger image.
// Files are prepared as the calling user in an overlay and copied in as root
// so that the image holds root-owned files even when banger is not root.
func customize(ctx context.Context, r runner.Runner, opts Options, root string) error {
	dir, err := os.MkdirTemp(opts.CacheDir, "overlay-")
	if err != nil {
		return fmt.Errorf("customizing rootfs: creating overlay: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("customizing rootfs: %w", err)
	}
	o := ext4.Tree{Dir: dir}
	bins, err := fetchTools(ctx, r, opts.CacheDir, toolsFor(opts.Kind), opts.Log)
	if err != nil {
		return fmt.Errorf("customizing rootfs: %w", err)
	}
	if err := fillOverlay(o, opts, root, bins); err != nil {
		return fmt.Errorf("customizing rootfs: %w", err)
	}
	if _, err := r.RunPrivileged(ctx, "cp", "-a", "--no-preserve=ownership", dir+"/.", root+"/"); err != nil {
		return fmt.Errorf("customizing rootfs: copying overlay: %w", err)
	}

	// Host keys are made in the guest at first boot, never baked in.
	ents, err := os.ReadDir(filepath.Join(root, "etc/ssh"))
	if err != nil {
		return fmt.Errorf("customizing rootfs: listing ssh host keys: %w", err)
	}
	var keys []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ssh_host_") {
			keys = append(keys, filepath.Join(root, "etc/ssh", e.Name()))
		}
	}
	if len(keys) > 0 {
		if _, err := r.RunPrivileged(ctx, "rm", append([]string{"-f", "--"}, keys...)...); err != nil {
			return fmt.Errorf("customizing rootfs: removing ssh host keys: %w", err)
		}
	}
	if _, err := r.RunPrivileged(ctx, "chroot", root, "passwd", "-l", "root"); err != nil {
		return fmt.Errorf("customizing rootfs: locking root password: %w", err)
	}
	if opts.Modules != "" {
		if err := installModules(ctx, r, opts.Modules, root); err != nil {
			return fmt.Errorf("customizing rootfs: %w", err)
		}
	}
	return nil
}

// imageFile is one file the overlay writes.
type imageFile struct {
	rel, content string
	mode         os.FileMode
}

// imageFiles are the files of an image of kind, besides the agent, the npm
// tools and the docker image's bash.bashrc (Debian's, with miseBashrc).
func imageFiles(kind Kind) []imageFile {
	files := []imageFile{
		{strings.TrimPrefix(agent.SSHDDropIn, "/"), sshdConfig, 0o644},
		{"etc/fstab", fstab, 0o644},
		{"etc/hostname", "", 0o644},
		{"etc/hosts", hosts, 0o644},
		{"etc/resolv.conf", resolvConf, 0o644},
		// Each VM gets its own machine id at boot.
		{"etc/machine-id", "", 0o444},
	}
	if kind != KindDocker {
		return files
	}
	files[1].content = dockerFstab
	files = append(files,
		imageFile{"etc/systemd/system/banger-net.service", netUnit, 0o644},
		imageFile{"etc/systemd/system/banger-root.service", rootUnit, 0o644},
		imageFile{"etc/systemd/system/banger-tmp.service", tmpUnit, 0o644},
		imageFile{"etc/tmpfiles.d/tmp.conf", tmpConf, 0o644},
		imageFile{"etc/systemd/system/banger-agent.service", agentUnit, 0o644},
		imageFile{"etc/systemd/system/ssh.service.d/banger.conf", sshDropIn, 0o644},
		imageFile{"etc/systemd/system/opencode-server.service", opencodeUnit, 0o644},
		imageFile{"etc/systemd/system/banger-tmux.service", tmuxUnit, 0o644},
		imageFile{"etc/systemd/system/banger-tmux-save.service", tmuxSaveUnit, 0o644},
		imageFile{"etc/systemd/system/banger-tmux-save.timer", tmuxSaveTimer, 0o644},
	)
	for _, u := range afterAgent {
		files = append(files, imageFile{"etc/systemd/system/" + u + ".d/banger.conf", afterAgentDropIn, 0o644})
	}
	return files
}

// imageLinks are the symlinks of an image of kind: {rel, target}.
func imageLinks(kind Kind) [][2]string {
	switch kind {
	case KindMinimal:
		// /sbin is /usr/sbin in bookworm; the agent runs as init when
		// invoked as "init".
		return [][2]string{{"usr/sbin/init", AgentPath}}
	case KindDocker:
		wants := "etc/systemd/system/multi-user.target.wants/"
		links := [][2]string{
			{"etc/systemd/system/default.target", "/lib/systemd/system/multi-user.target"},
			{wants + "banger-net.service", "/etc/systemd/system/banger-net.service"},
			{wants + "banger-root.service", "/etc/systemd/system/banger-root.service"},
			{wants + "banger-tmp.service", "/etc/systemd/system/banger-tmp.service"},
			{wants + "banger-agent.service", "/etc/systemd/system/banger-agent.service"},
			{wants + "ssh.service", "/lib/systemd/system/ssh.service"},
			{wants + "docker.service", "/lib/systemd/system/docker.service"},
			{wants + "containerd.service", "/lib/systemd/system/containerd.service"},
			{wants + "opencode-server.service", "/etc/systemd/system/opencode-server.service"},
			{wants + "banger-tmux.service", "/etc/systemd/system/banger-tmux.service"},
			{"etc/systemd/system/timers.target.wants/banger-tmux-save.timer", "/etc/systemd/system/banger-tmux-save.timer"},
			{"etc/systemd/system/sockets.target.wants/docker.socket", "/lib/systemd/system/docker.socket"},
			// Keep the kernel's eth0 name: net-setup configures eth0.
			{"etc/systemd/network/99-default.link", "/dev/null"},
		}
		for _, u := range masked {
			links = append(links, [2]string{"etc/systemd/system/" + u, "/dev/null"})
		}
		for _, g := range maskedGenerators {
			links = append(links, [2]string{"etc/systemd/system-generators/" + g, "/dev/null"})
		}
		return links
	}
	return nil
}

// overlayKey identifies the files and links customize writes into an image
// of kind, for the finished image's cache key: changing a unit rebuilds
// the image.
func overlayKey(kind Kind) string {
	extra := ""
	if kind == KindDocker {
		extra = miseBashrc
	}
	return keyOf(imageFiles(kind), imageLinks(kind), extra)
}

// keyOf hashes files, links and extra, each with its length.
func keyOf(files []imageFile, links [][2]string, extra string) string {
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "file %d %s %o %d\n%s\n", len(f.rel), f.rel, f.mode, len(f.content), f.content)
	}
	for _, l := range links {
		fmt.Fprintf(h, "link %d %s %d %s\n", len(l[0]), l[0], len(l[1]), l[1])
	}
	fmt.Fprintf(h, "extra %d\n%s\n", len(extra), extra)
	return hex.EncodeToString(h.Sum(nil))
}

// fillOverlay writes the image's files into o. bins maps tool names to
// binaries installed as /usr/local/bin/<name>.
func fillOverlay(o ext4.Tree, opts Options, root string, bins map[string]string) error {
	files := imageFiles(opts.Kind)
	if opts.Kind == KindDocker {
		bashrc, err := os.ReadFile(filepath.Join(root, "etc/bash.bashrc"))
		if err != nil {
			return fmt.Errorf("reading bash.bashrc: %w", err)
		}
		if !strings.Contains(string(bashrc), "mise activate") {
			files = append(files, imageFile{"etc/bash.bashrc", string(bashrc) + miseBashrc, 0o644})
		}
	}
	for _, f := range files {
		if err := o.Write(f.rel, f.mode, f.content); err != nil {
			return err
		}
	}
	if err := o.CopyFile(strings.TrimPrefix(AgentPath, "/"), 0o755, opts.Agent); err != nil {
		return fmt.Errorf("installing agent: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(bins)) {
		if err := o.LinkOrCopy("usr/local/bin/"+name, 0o755, bins[name]); err != nil {
			return fmt.Errorf("installing %s: %w", name, err)
		}
	}
	for _, l := range imageLinks(opts.Kind) {
		if t, err := os.Readlink(filepath.Join(root, l[0])); err == nil && t == l[1] {
			continue
		}
		if err := o.Symlink(l[0], l[1]); err != nil {
			return err
		}
	}
	return nil
}

// installModules copies <kver> trees from dir to /usr/lib/modules and runs
// depmod for each when the host has it.
func installModules(ctx context.Context, r runner.Runner, dir, root string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reading kernel modules %s: %w", dir, err)
	}
	dst := filepath.Join(root, "usr/lib/modules")
	if _, err := r.RunPrivileged(ctx, "mkdir", "-p", dst); err != nil {
		return fmt.Errorf("installing kernel modules: %w", err)
	}
	if _, err := r.RunPrivileged(ctx, "cp", "-a", "--no-preserve=ownership", dir+"/.", dst+"/"); err != nil {
		return fmt.Errorf("installing kernel modules: %w", err)
	}
	// modprobe needs modules.dep: use the host's depmod, else the image's own.
	depmod, hostErr := findTool("depmod")
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		var err error
		switch {
		case hostErr == nil:
			_, err = r.RunPrivileged(ctx, depmod, "-b", root, e.Name())
		case fileExists(filepath.Join(root, "usr/sbin/depmod")):
			_, err = r.RunPrivileged(ctx, "chroot", root, "/usr/sbin/depmod", e.Name())
		default:
			continue // no kmod anywhere: modules stay unusable by name, as in the minimal image
		}
		if err != nil {
			return fmt.Errorf("running depmod for %s: %w", e.Name(), err)
		}
	}
	return nil
}

// fileExists reports whether p exists, without following a final symlink
// (image symlinks are absolute and point into the image, not the host).
func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
