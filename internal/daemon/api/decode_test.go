package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/rpc"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		body    string
		want    rpc.CreateRequest
		wantErr string
	}{
		{`{"name":"box","vcpus":2}`, rpc.CreateRequest{Name: "box", VCPUs: 2}, ""},
		{" {\"name\":\"box\"}\n", rpc.CreateRequest{Name: "box"}, ""},
		{`{"name":"box","nmae":"x"}`, rpc.CreateRequest{}, `unknown field "nmae"`},
		{`{"name":"box"} {"name":"y"}`, rpc.CreateRequest{}, "data after the JSON object"},
		{`{"name":"box"}]`, rpc.CreateRequest{}, "data after the JSON object"},
		// null used to decode as {} (found writing FuzzDecode's property).
		{`null`, rpc.CreateRequest{}, "not a JSON object"},
		{`[]`, rpc.CreateRequest{}, "not a JSON object"},
		{`"box"`, rpc.CreateRequest{}, "not a JSON object"},
		{``, rpc.CreateRequest{}, "EOF"},
		{`{"vcpus":"two"}`, rpc.CreateRequest{}, "cannot unmarshal"},
		{`{"` + strings.Repeat("x", 1000) + `":1}`, rpc.CreateRequest{}, "..."},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodPost, "/v1/vms", strings.NewReader(tt.body))
		var got rpc.CreateRequest
		err := decode(r, "create", &got)
		if tt.wantErr != "" {
			if err == nil || !errors.Is(err, errBadRequest) || !strings.Contains(err.Error(), tt.wantErr) || len(err.Error()) > 300 {
				t.Errorf("decode(%.40q) = %v, want a short bad request containing %q", tt.body, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("decode(%.40q) = %+v, %v, want %+v", tt.body, got, err, tt.want)
		}
	}
}
