package void

import (
	"fmt"

	"github.com/banger/banger/internal/image/rootfs"
	"github.com/banger/banger/internal/opencode"
)

// The guest side of the Void image: runit's three stages, written for a
// disposable microVM (no udev, no getty, nothing that slows a TCG boot),
// and one runit service per daemon. Services live in /etc/sv/<name> and are
// enabled by links in /etc/runit/runsvdir/default, as on Void.

// guestPath is the PATH of the stages and services.
const guestPath = "/usr/local/sbin:/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin"

// stage1 prepares the system: API filesystems, /root (the VM's own disk,
// vdb), the network from the kernel's ip= argument, and runit's reboot
// flag, so that the end of stage 3 (a shutdown) reboots, which ends a
// banger VM (its hypervisor runs with reboot = exit).
var stage1 = `#!/bin/sh
# Written by banger: runit stage 1 of a banger microVM.
PATH=` + guestPath + `
export PATH
mountpoint -q /proc || mount -t proc -o nosuid,noexec,nodev proc /proc
mountpoint -q /sys || mount -t sysfs -o nosuid,noexec,nodev sys /sys
mountpoint -q /dev || mount -t devtmpfs -o mode=0755,nosuid dev /dev
mount -t tmpfs -o mode=0755,nosuid,nodev run /run
mkdir -p /dev/pts /dev/shm /run/runit /run/sshd /run/lock
mount -t devpts -o mode=0620,gid=5,nosuid,noexec devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
mount -o remount,rw /
mountpoint -q /root || mount /root
` + rootfs.AgentPath + ` net-setup || echo "banger: network setup failed" >&2
install -m 000 /dev/null /etc/runit/stopit
install -m 100 /dev/null /etc/runit/reboot
exit 0
`

// stage2 supervises the enabled services.
var stage2 = `#!/bin/sh
# Written by banger: runit stage 2, the services of /etc/runit/runsvdir/default.
PATH=` + guestPath + `
exec env - PATH="$PATH" runsvdir -P /etc/runit/runsvdir/default 'log: .................................................................................................................................'
`

// stage3 stops the services and unmounts, then runit reboots.
var stage3 = `#!/bin/sh
# Written by banger: runit stage 3. runit reboots afterwards (/etc/runit/reboot).
PATH=` + guestPath + `
export PATH
sv -w 20 force-stop /etc/runit/runsvdir/default/* >/dev/null 2>&1
sv exit /etc/runit/runsvdir/default/* >/dev/null 2>&1
kill -TERM -1 2>/dev/null; sleep 1; kill -KILL -1 2>/dev/null
sync
umount -r /root 2>/dev/null
mount -o remount,ro / 2>/dev/null
sync
exit 0
`

// ctrlaltdel runs on Ctrl-Alt-Del (and QEMU's power button through it):
// a clean shutdown.
var ctrlaltdel = `#!/bin/sh
# Written by banger: Ctrl-Alt-Del shuts the VM down (runit reboots, which ends it).
PATH=` + guestPath + `
install -m 100 /dev/null /etc/runit/stopit
`

// sshdRun generates the host key on first boot (ed25519 only: RSA costs
// seconds under TCG) and runs sshd in the foreground.
var sshdRun = `#!/bin/sh
# Written by banger: sshd; the host key is made in the guest at first boot.
exec 2>&1
[ -s /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key || exit 1
mkdir -p /run/sshd /var/chroot/ssh /var/empty
exec $(command -v sshd) -D -e
`

// agentRun serves the banger agent on vsock and virtio-serial.
var agentRun = `#!/bin/sh
# Written by banger: the guest agent (vsock port 1024 and the org.banger.agent virtio-serial port).
exec 2>&1
exec ` + rootfs.AgentPath + ` serve
`

// dockerRun starts dockerd (with its own containerd) once sshd and the
// agent are up, so that they get the vCPUs first during a TCG boot.
var dockerRun = `#!/bin/sh
# Written by banger: dockerd, after sshd and the agent.
exec 2>&1
sv check /etc/sv/sshd /etc/sv/banger-agent >/dev/null || exit 1
exec dockerd
`

// opencodeRun runs the opencode server on opencode.Port with the
// per-VM password bangerd writes; without the file it stays down.
var opencodeRun = fmt.Sprintf(`#!/bin/sh
# Written by banger: the opencode server on port %[1]d. bangerd writes
# OPENCODE_SERVER_PASSWORD into %[2]s for each VM (basic auth, user
# opencode); without that file the server does not start.
exec 2>&1
if [ ! -r %[2]s ]; then
	echo "opencode-server: %[2]s is missing; not starting"
	sv down .
	exit 0
fi
OPENCODE_SERVER_PASSWORD=$(sed -n 's/^OPENCODE_SERVER_PASSWORD=//p' %[2]s | tail -n 1)
if [ -z "$OPENCODE_SERVER_PASSWORD" ]; then
	echo "opencode-server: no OPENCODE_SERVER_PASSWORD in %[2]s; not starting"
	sv down .
	exit 0
fi
sv check /etc/sv/sshd /etc/sv/banger-agent >/dev/null || exit 1
export OPENCODE_SERVER_PASSWORD HOME=/root OPENCODE_DISABLE_AUTOUPDATE=1
cd /root || exit 1
exec nice -n 10 /usr/local/bin/opencode serve --port %[1]d --hostname 0.0.0.0
`, opencode.Port, opencode.EnvFile)

// logRun is the log service of a chatty service: its output goes to
// /var/log/<name>/current (svlogd) instead of the serial console.
func logRun(name string) string {
	return "#!/bin/sh\n# Written by banger: " + name + "'s output, in /var/log/" + name + "/current.\n" +
		"mkdir -p /var/log/" + name + "\nexec svlogd -tt /var/log/" + name + "\n"
}

// services are the runit services the image enables; log services too.
var services = []struct {
	name, run string
	log       bool
}{
	{"sshd", sshdRun, false},
	{"banger-agent", agentRun, false},
	{"docker", dockerRun, true},
	{"opencode-server", opencodeRun, true},
}

// sshdConfig is the whole sshd_config: the packages' own may differ between
// Void and the fixture; banger needs only this.
const sshdConfig = `# Written by banger. The host key is generated in the guest at first boot.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys
UseDNS no
PrintMotd no
`

const fstab = `# Written by banger: vda is the image, vdb the VM's own /root disk.
/dev/vda / ext4 defaults 0 1
/dev/vdb /root ext4 defaults,nofail 0 2
`

const hosts = `127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
`

const resolvConf = "# Written at boot by banger-vsock-agent net-setup from the kernel ip= argument.\n"

// svProfile lets sv find the services by name, as on Void.
const svProfile = `# Written by banger: sv status sshd, sv restart docker, ...
export SVDIR=/etc/runit/runsvdir/default
`

// miseProfile activates mise in interactive bash shells.
const miseProfile = `
# Written by banger: mise for interactive shells.
if [ -n "$BASH_VERSION" ] && [ -x /usr/local/bin/mise ]; then
	case $- in *i*) eval "$(/usr/local/bin/mise activate bash)" ;; esac
fi
`
