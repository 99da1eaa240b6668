package transfer

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The guest side of a copy is one POSIX sh script run through ssh, using
// only what every banger image has (GNU tar and coreutils). Its own errors
// are lines "banger-cp: MESSAGE" on stderr with exit status 3.

// ScriptExit is the exit status of a script's own refusals.
const ScriptExit = 3

// ErrorPrefix starts the scripts' own error lines.
const ErrorPrefix = "banger-cp: "

// receiveScript extracts an archive from the host (see Sender) into a
// staging directory beside the destination and moves it into place once
// the archive's DoneMarker has arrived. Arguments: DEST, then NAME KIND
// (f or d) per source. Everything is checked before the stream is read.
const receiveScript = `set -u
die() { printf 'banger-cp: %s\n' "$*" >&2; exit 3; }
dst=$1; shift
n=$(($# / 2))
if [ -d "$dst" ]; then
	into=1; parent=$dst
else
	case $dst in */) die "$dst: no such directory";; esac
	[ "$n" -eq 1 ] || die "$dst is not a directory: copying several sources needs an existing directory"
	into=0; parent=$(dirname -- "$dst")
	[ -d "$parent" ] || die "$parent: no such directory"
fi
target() { if [ "$into" = 1 ]; then printf '%s/%s.' "${parent%/}" "$1"; else printf '%s.' "$dst"; fi; }
name=; odd=1
for a do
	if [ "$odd" = 1 ]; then name=$a; odd=0; continue; fi
	odd=1; t=$(target "$name"); t=${t%.}
	if [ -d "$t" ] && [ ! -L "$t" ]; then
		[ "$a" = d ] || die "$t is a directory: cannot overwrite it with a file"
	elif [ -e "$t" ] || [ -L "$t" ]; then
		[ "$a" = f ] || die "$t exists and is not a directory: cannot overwrite it with a directory"
	fi
done
stage=$(mktemp -d "${parent%/}/.banger-cp.XXXXXX") || die "cannot write in $parent"
trap 'rm -rf -- "$stage"' EXIT
trap 'exit 130' HUP INT TERM PIPE
full() { set -- $(df -P -k -- "$parent" | tail -n 1); [ "${4:-x}" -lt 1024 ] 2>/dev/null; }
if ! tar -x -f - -C "$stage" --no-same-owner --preserve-permissions; then
	full && die "no space left on device in $parent"
	die "receiving into $parent failed"
fi
[ -f "$stage/` + DoneMarker + `" ] || die "the copy stream ended early: nothing was written"
k=0; odd=1
for a do
	if [ "$odd" = 1 ]; then name=$a; odd=0; continue; fi
	odd=1; t=$(target "$name"); t=${t%.}; s=$stage/$k; k=$((k + 1))
	if [ -d "$t" ] && [ ! -L "$t" ]; then
		cp -a -l --remove-destination -- "$s/." "$t/" || die "moving the copy into $t failed"
	else
		mv -f -T -- "$s" "$t" || die "moving the copy to $t failed"
	fi
done
`

// sendScript writes a header line "banger-cp 1 TOTAL" (the sources'
// apparent size in bytes) and then one tar archive of the sources, each
// given by its real path (the operand's own symlink followed) as
// "./BASENAME" under its directory. Arguments: RECURSIVE (0 or 1), then
// the sources.
const sendScript = `set -u
die() { printf 'banger-cp: %s\n' "$*" >&2; exit 3; }
r=$1; shift
n=$#; total=0
for s do
	if [ ! -e "$s" ]; then
		[ -L "$s" ] && die "$s is a symlink to a missing file"
		die "$s: no such file or directory"
	fi
	real=$(readlink -f -- "$s" && echo .) || die "$s: cannot resolve it"; real=${real%??}
	[ "$real" = / ] && die "$s: copying the root directory is not supported: name a directory under it"
	if [ -d "$real" ]; then
		[ "$r" = 1 ] || die "$s is a directory: use -r to copy directories"
	elif [ ! -f "$real" ]; then
		die "$s is not a regular file or a directory"
	fi
	sz=$(du -s -b -- "$real") || die "$s: cannot read it"; sz=${sz%%[!0-9]*}
	total=$((total + ${sz:-0}))
	dir=${real%/*}; set -- "$@" -C "${dir:-/}" "./${real##*/}"
done
shift "$n"
printf 'banger-cp 1 %s\n' "$total"
exec tar -c -f - --format=posix --pax-option=delete=atime,delete=ctime "$@"
`

// quote makes s one word for a POSIX shell.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// command is the remote command line ssh sends: sh running script with
// args, each quoted (ssh joins its arguments into one string for the
// remote user's shell).
func command(script string, args []string) string {
	var b strings.Builder
	b.WriteString("sh -c ")
	b.WriteString(quote(script))
	b.WriteString(" banger-cp")
	for _, a := range args {
		b.WriteByte(' ')
		b.WriteString(quote(a))
	}
	return b.String()
}

// ReceiveCommand is the remote command that receives srcs at dest.
func ReceiveCommand(dest string, srcs []Source) string {
	args := []string{dest}
	for _, s := range srcs {
		kind := "f"
		if s.IsDir {
			kind = "d"
		}
		args = append(args, s.Name, kind)
	}
	return command(receiveScript, args)
}

// SendCommand is the remote command that sends the guest's paths srcs.
func SendCommand(srcs []string, recursive bool) string {
	r := "0"
	if recursive {
		r = "1"
	}
	return command(sendScript, append([]string{r}, srcs...))
}

// ReadHeader reads sendScript's header line and returns its total. The
// line is guest output: at most 64 bytes, in exactly that form.
func ReadHeader(br *bufio.Reader) (int64, error) {
	var line []byte
	for len(line) <= 64 {
		c, err := br.ReadByte()
		if err != nil {
			if err == io.EOF && len(line) == 0 {
				return 0, io.EOF
			}
			return 0, fmt.Errorf("reading the guest's header: %w", err)
		}
		if c == '\n' {
			f := strings.Fields(string(line))
			if len(f) == 3 && f[0] == "banger-cp" && f[1] == "1" {
				if n, err := strconv.ParseInt(f[2], 10, 64); err == nil && n >= 0 {
					return n, nil
				}
			}
			return 0, fmt.Errorf("the guest sent a malformed header %q", line)
		}
		line = append(line, c)
	}
	return 0, fmt.Errorf("the guest sent a header longer than 64 bytes")
}
