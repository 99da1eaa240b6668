package vm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/agent"
	"github.com/banger/banger/internal/store"
)

// fuzzHostKeys are real public keys of every allowed type.
var fuzzHostKeys = []string{
	"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN7W+viVAMd9qpiiI17NTezQLGJ2kHCRq6LpszVp9sED root@guest",
	"ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBGmHr/8ChwEmt3FMB7lB57vNtIdOL8gFzaQIqFjb9gHWLJgqmrN29Nyn0GJYJFUM9ZPFP75MqchmcW5iCksZd4M= root@guest",
	"ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBHmorYRPrIw2QszLaDcvkG7Zgs1ch4Pc7CAi4C8CPT2pilU3DxJQuA5vB41mxuE2sO9na+5CdMMGy8Z5DRA2ueiA+x7exxT9sErahs4HtirAIwHLzW9bYTkj6rr+f+fNeQ== root@guest",
	"ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBADSwRMv5KNKaCljB9Heq8H7xtV1oOCruityqe+44TIIGkMcIBj8oOPuzmNs+WrXYHAdAlNoTI5tZAdBhP4a8NgGXAGNC/hEJtWTFGnFcQ3hIo7XAQ1h6MM0xgtV/JohUOeLkaMFh1wTs30yshpiE0CFQH7j3vmimztn0JUBZ02oXyvdWA== root@guest",
	"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC5Oc6bXc6/wNDLQIRmv4N9J/VwKiTx7qGmT7yojqlCwchN9qTpt9TSOn6AnIPNSmK4RJT01jTOHfvywOAEIHOOqyoqTN4GA1bBbNLfQVn/RS/87594Zcoy6qwMevJjAnJG5vsEhcxCztv2sjJgFe0Elipg4bqS5BaoccFa5cSKLQ== root@guest",
}

// healthReply is a guest's health answer reporting keys.
func healthReply(keys ...string) []byte {
	b, _ := json.Marshal(agent.Response{OK: true, Hostname: "victim", SSHHostKeys: keys})
	return append(bytes.ReplaceAll(b, []byte(`"ok":true`), []byte(`"ok":true,"id":$ID`)), '\n')
}

// FuzzHostKeyPinning: whatever a guest answers its health request with,
// pinning what the agent client returns leaves known_hosts with the other
// VMs' lines untouched and, for this VM, only lines "NAME.vm TYPE BASE64"
// of an allowed type that hold a key of that type, at most maxHostKeys of
// them; a refusal leaves the file as it was.
func FuzzHostKeyPinning(f *testing.F) {
	ed, ecdsa := fuzzHostKeys[0], fuzzHostKeys[1]
	edf := strings.Fields(ed)
	for _, r := range [][]byte{
		healthReply(ed),
		healthReply(fuzzHostKeys...),
		healthReply(ed, ed),
		healthReply(edf[0] + " " + edf[1]),
		healthReply("* " + ed),
		healthReply("@cert-authority * " + ed),
		healthReply(ed + "\nother.vm " + edf[0] + " " + edf[1]),
		healthReply("0\n0"),
		healthReply(edf[0] + " " + strings.Fields(ecdsa)[1]),
		healthReply("ssh-dss " + edf[1]),
		healthReply(`command="x" ` + ed),
		healthReply(ed, ed, ed, ed, ed, ed, ed, ed, ed),
		healthReply(ed + "\r"),
		healthReply(edf[0] + "  " + edf[1] + "\tcomment with spaces"),
		healthReply(),
		[]byte(`{"ok":true,"id":999999,"ssh_host_keys":["` + ed + `"]}` + "\n"),
		[]byte(`{"ok":false,"error":"no keys yet"}` + "\n"),
	} {
		f.Add(r, "victim")
	}
	f.Fuzz(func(t *testing.T, reply []byte, name string) {
		if ValidateName(name) != nil || name == "other" {
			return
		}
		c := &agent.Client{Dial: func(ctx context.Context) (net.Conn, error) {
			host, guest := net.Pipe()
			go func() {
				defer guest.Close()
				line, err := bufio.NewReader(guest).ReadBytes('\n')
				if err != nil {
					return
				}
				var req agent.Request
				if json.Unmarshal(line, &req) != nil {
					return
				}
				guest.Write(bytes.ReplaceAll(reply, []byte("$ID"), []byte(strconv.FormatUint(req.ID, 10))))
			}()
			return host, nil
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h, err := c.Health(ctx)
		if err != nil {
			return
		}

		path := filepath.Join(t.TempDir(), "known_hosts")
		alias := name + ".vm"
		others := "other.vm " + strings.Join(strings.Fields(ed)[:2], " ") + "\n" +
			"other.vm " + strings.Join(strings.Fields(ecdsa)[:2], " ") + "\n"
		before := others + alias + " " + strings.Join(strings.Fields(fuzzHostKeys[4])[:2], " ") + "\n"
		if err := os.WriteFile(path, []byte(before), 0o600); err != nil {
			t.Fatal(err)
		}
		hk := &hostKeysCap{known: &KnownHosts{Path: path}}
		perr := hk.Ready(ctx, &store.VM{Name: name}, h)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		after := string(data)
		if perr != nil {
			if after != before {
				t.Fatalf("pinning %q for %s failed (%v) but changed known_hosts:\n%s", h.SSHHostKeys, name, perr, after)
			}
			return
		}
		rest, ok := strings.CutPrefix(after, others)
		if !ok {
			t.Fatalf("pinning %q for %s changed the other VMs' lines:\n%s", h.SSHHostKeys, name, after)
		}
		lines := strings.Split(strings.TrimSuffix(rest, "\n"), "\n")
		if !strings.HasSuffix(rest, "\n") || len(lines) < 1 || len(lines) > maxHostKeys || len(lines) > len(h.SSHHostKeys) {
			t.Fatalf("pinning %d keys %q for %s wrote %d lines, want 1 to %d:\n%s", len(h.SSHHostKeys), h.SSHHostKeys, name, len(lines), maxHostKeys, rest)
		}
		for _, line := range lines {
			fields := strings.Split(line, " ")
			if len(fields) != 3 || fields[0] != alias || !slices.Contains(hostKeyTypes, fields[1]) {
				t.Fatalf("pinning %q for %s wrote line %q, want %q TYPE BASE64 of an allowed type", h.SSHHostKeys, name, line, alias)
			}
			blob, err := base64.StdEncoding.DecodeString(fields[2])
			if err != nil {
				t.Fatalf("pinning %q for %s wrote line %q: %v", h.SSHHostKeys, name, line, err)
			}
			pk, err := ssh.ParsePublicKey(blob)
			if err != nil || pk.Type() != fields[1] || base64.StdEncoding.EncodeToString(pk.Marshal()) != fields[2] {
				t.Fatalf("pinning %q for %s wrote line %q, which is not one %s key: %v", h.SSHHostKeys, name, line, fields[1], err)
			}
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("known_hosts mode after pinning = %v, %v; want 0600", fi.Mode(), err)
		}
	})
}
