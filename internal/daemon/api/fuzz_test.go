package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/rpc"
)

// maxDecodeErr bounds a decoding error: the body is the client's, and
// what an error quotes of it goes back to the client and into logs.
const maxDecodeErr = 512

// requestTypes are the bodies the API decodes, as new(T) makers.
var requestTypes = []struct {
	what string
	new  func() any
}{
	{"create", func() any { return new(rpc.CreateRequest) }},
	{"set", func() any { return new(rpc.SetRequest) }},
	{"register", func() any { return new(rpc.RegisterImageRequest) }},
	{"build", func() any { return new(rpc.BuildImageRequest) }},
	{"publish", func() any { return new(rpc.PortsRequest) }},
	{"unpublish", func() any { return new(rpc.UnpublishRequest) }},
}

// jsonFields are the JSON names of struct type t's fields.
func jsonFields(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		if n, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); n != "" && n != "-" {
			names = append(names, n)
		}
	}
	return names
}

// FuzzDecode: whatever the body, decode refuses it as a bad request with a
// short error, or the body is exactly one JSON object of known fields
// (encoding/json matches names without regard to case) and decodes as
// json.Unmarshal decodes it; a create request that decodes turns into
// options or a short bad-request error.
func FuzzDecode(f *testing.F) {
	for i := range requestTypes {
		for _, s := range []string{
			`{"name":"box","image":"minimal","vcpus":2,"memory_mib":1024,"disk_size":"8G","nat":true,"no_wait":true}`,
			`{"nat":false}`, `{"name":"img","rootfs":"/srv/a.ext4","work_seed":"/srv/seed.ext4"}`,
			`{"name":"img","kind":"docker","size":"4G"}`, `{}`, ` {"name":"x"} ` + "\n", `{"name":"x"}{"name":"y"}`,
			`{"name":"x"} trailing`, `{"nmae":"x"}`, `{"NAME":"x"}`, `{"name":"x","name":"y"}`, `null`, `[]`, `"x"`, ``,
			`{"vcpus":-1}`, `{"memory_mib":-5}`, `{"disk_size":"` + strings.Repeat("9", 300) + `T"}`, `{"vcpus":1e400}`,
			`{"` + strings.Repeat("x", 300) + `":1}`, `{"nat":null}`, `{"name":"\ud800"}`, `{"name":"x"}]`,
			`{"ports":[{"proto":"tcp","host_ip":"127.0.0.1","host_port":8080,"guest_port":80}]}`,
			`{"ports":[{"host_port":8080}]}`, `{"ports":[{"host_port":8080,"extra":1}]}`, `{"ports":null}`,
			`{"ports":[{"host_port":-1}]}`, `{"ports":[{"host_port":"8080"}]}`, `{"ports":{}}`,
		} {
			f.Add(uint8(i), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		rt := requestTypes[int(which)%len(requestTypes)]
		r := httptest.NewRequest(http.MethodPost, "/v1/", bytes.NewReader(body))
		r.Body = http.MaxBytesReader(nil, r.Body, MaxBody)
		v := rt.new()
		err := decode(r, rt.what, v)
		if err != nil {
			if code, status := CodeOf(err); !errors.Is(err, errBadRequest) || status != http.StatusBadRequest {
				t.Fatalf("decode(%s, %q) = %v (%s, %d), want a bad request", rt.what, body, err, code, status)
			}
			if len(err.Error()) > maxDecodeErr {
				t.Fatalf("decode(%s, %q) error is %d bytes, want at most %d", rt.what, body, len(err.Error()), maxDecodeErr)
			}
			return
		}
		if trimmed := bytes.TrimLeft(body, " \t\r\n"); !json.Valid(body) || len(trimmed) == 0 || trimmed[0] != '{' {
			t.Fatalf("decode(%s, %q) = nil, want an error: the body is not exactly one JSON object", rt.what, body)
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(body, &fields); err != nil {
			t.Fatalf("decode(%s, %q) = nil, but it is not an object: %v", rt.what, body, err)
		}
		known := jsonFields(reflect.TypeOf(v).Elem())
		for k := range fields {
			if !slicesContainsFold(known, k) {
				t.Fatalf("decode(%s, %q) = nil, want an error: unknown field %q", rt.what, body, k)
			}
		}
		want := rt.new()
		if err := json.Unmarshal(body, want); err != nil || !reflect.DeepEqual(v, want) {
			t.Fatalf("decode(%s, %q) = %+v, json.Unmarshal = %+v, %v", rt.what, body, v, want, err)
		}
		if req, ok := v.(*rpc.CreateRequest); ok {
			o, err := createOptions(*req)
			switch {
			case err != nil && (!errors.Is(err, errBadRequest) || len(err.Error()) > maxDecodeErr):
				t.Fatalf("createOptions(%+v) = %v, want a bad request of at most %d bytes", *req, err, maxDecodeErr)
			case err == nil && (o.VCPUs < 0 || o.MemoryMiB < 0 || o.DiskSize < 0):
				t.Fatalf("createOptions(%+v) = %+v, want no negative sizes", *req, o)
			}
		}
	})
}

func slicesContainsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
