package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// maxClientErr bounds the client's errors: they reach people (create
// failures, logs) and may quote what the guest said.
const maxClientErr = 512

// replySeeds are answers a guest might give: good, stale, garbage, errors.
var replySeeds = []string{
	`{"ok":true,"id":$ID,"hostname":"vm","uptime_ms":12,"ssh_host_keys":["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGgI root@vm"]}` + "\n",
	`{"ok":true,"hostname":"vm"}` + "\n",
	`{"ok":true,"id":999999,"hostname":"stale"}` + "\n" + `{"ok":true,"id":$ID,"hostname":"fresh"}` + "\n",
	"garbage\n" + `{"ok":true,"id":$ID}` + "\r\n",
	`{"ok":false,"error":"unknown op \"health\""}` + "\n",
	`{"ok":false}` + "\n",
	`{"ok":false,"id":$ID,"error":"\u001b[2J\u001b]0;owned\u0007` + strings.Repeat("x", 600) + `"}` + "\n",
	`{"ok":true,"uptime_ms":"soon"}` + "\n",
	`{"ok":true,"id":-1}` + "\n",
	`{"ok":true,"ssh_host_keys":null}`,
	"",
	"\n\n\n",
}

// guestReply is what the client must make of reply as the protocol says:
// lines are JSON answers, those that do not parse or carry another id are
// skipped, and the first one left is the answer.
func guestReply(reply []byte, id uint64) (resp *Response, answered bool) {
	sc := bufio.NewScanner(bytes.NewReader(reply))
	sc.Buffer(make([]byte, 4096), MaxLine)
	for sc.Scan() {
		var r Response
		if json.Unmarshal(sc.Bytes(), &r) != nil || r.ID != 0 && r.ID != id {
			continue
		}
		return &r, true
	}
	return nil, false
}

// FuzzClientReply: whatever the guest answers a health request with, the
// client returns the first answer that is its own, or an error that is
// short, printable and free of control characters.
func FuzzClientReply(f *testing.F) {
	for _, s := range replySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, reply []byte) {
		var id atomic.Uint64
		c := &Client{Dial: func(ctx context.Context) (net.Conn, error) {
			host, guest := net.Pipe()
			go func() {
				defer guest.Close()
				line, err := bufio.NewReader(guest).ReadBytes('\n')
				if err != nil {
					return
				}
				var req Request
				if err := json.Unmarshal(line, &req); err != nil || req.Op != OpHealth {
					t.Errorf("request %q is not a health request", line)
					return
				}
				id.Store(req.ID)
				guest.Write(bytes.ReplaceAll(reply, []byte("$ID"), []byte(strconv.FormatUint(req.ID, 10))))
			}()
			return host, nil
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h, err := c.Health(ctx)
		if ctx.Err() != nil {
			t.Fatalf("Health(%q) hung: %v", reply, err)
		}
		want, answered := guestReply(bytes.ReplaceAll(reply, []byte("$ID"), []byte(strconv.FormatUint(id.Load(), 10))), id.Load())
		if err != nil {
			msg := err.Error()
			if len(msg) > maxClientErr || !utf8.ValidString(msg) || strings.ContainsFunc(msg, func(r rune) bool { return unicode.Is(unicode.Cc, r) }) {
				t.Fatalf("Health(%q) error %q: want at most %d printable bytes", reply, msg, maxClientErr)
			}
			if answered && want.OK {
				t.Fatalf("Health(%q) = %v, want the answer %+v", reply, err, want)
			}
			return
		}
		if !answered || !want.OK {
			t.Fatalf("Health(%q) = %+v, want an error (answer %+v)", reply, h, want)
		}
		keys := want.SSHHostKeys
		if keys == nil {
			keys = []string{}
		}
		if got := (Health{OK: true, Hostname: want.Hostname, UptimeMS: want.UptimeMS, SSHHostKeys: keys}); !reflect.DeepEqual(*h, got) {
			t.Fatalf("Health(%q) = %+v, want %+v", reply, *h, got)
		}
	})
}
