package transfer

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseEndpoint(t *testing.T) {
	tests := []struct {
		arg  string
		want Endpoint
	}{
		{"testbox:/root/x", Endpoint{VM: "testbox", Path: "/root/x"}},
		{"testbox:x", Endpoint{VM: "testbox", Path: "x"}},
		{"testbox:", Endpoint{VM: "testbox", Path: "."}},
		{"web-1:/srv/a:b", Endpoint{VM: "web-1", Path: "/srv/a:b"}}, // colon inside the guest path
		{"a:b", Endpoint{VM: "a", Path: "b"}},                       // as scp reads it
		{"./a:b", Endpoint{Path: "./a:b"}},                          // the way to name a local a:b
		{"/tmp/a:b", Endpoint{Path: "/tmp/a:b"}},
		{"dir/a:b", Endpoint{Path: "dir/a:b"}}, // slash before the colon
		{"notes.txt", Endpoint{Path: "notes.txt"}},
		{":x", Endpoint{Path: ":x"}},
		{"C:\\Users\\me\\f.txt", Endpoint{Path: "C:\\Users\\me\\f.txt"}}, // Windows-looking
		{"c:\\Users\\me", Endpoint{Path: "c:\\Users\\me"}},
		{"C:/Users/me", Endpoint{Path: "C:/Users/me"}}, // uppercase is never a VM name
		{"c:/tmp", Endpoint{VM: "c", Path: "/tmp"}},    // a VM named c
		{"Testbox:/x", Endpoint{Path: "Testbox:/x"}},
		{"testbox.vm:/x", Endpoint{Path: "testbox.vm:/x"}},
		{"-box:/x", Endpoint{Path: "-box:/x"}},
		{"box-:/x", Endpoint{Path: "box-:/x"}},
		{strings.Repeat("a", 63) + ":/x", Endpoint{VM: strings.Repeat("a", 63), Path: "/x"}},
		{strings.Repeat("a", 64) + ":/x", Endpoint{Path: strings.Repeat("a", 64) + ":/x"}},
	}
	for _, tt := range tests {
		if got := ParseEndpoint(tt.arg); got != tt.want {
			t.Errorf("ParseEndpoint(%q) = %+v, want %+v", tt.arg, got, tt.want)
		}
	}
}

func TestParsePlan(t *testing.T) {
	tests := []struct {
		args    []string
		want    Plan
		wantErr string
	}{
		{args: []string{"./f", "box:/root/"}, want: Plan{Dir: ToVM, VM: "box", Sources: []string{"./f"}, Dest: "/root/"}},
		{args: []string{"a", "b/c", "box:"}, want: Plan{Dir: ToVM, VM: "box", Sources: []string{"a", "b/c"}, Dest: "."}},
		{args: []string{"box:/etc/hosts", "."}, want: Plan{Dir: FromVM, VM: "box", Sources: []string{"/etc/hosts"}, Dest: "."}},
		{args: []string{"box:/a", "box:b", "./a:b"}, want: Plan{Dir: FromVM, VM: "box", Sources: []string{"/a", "b"}, Dest: "./a:b"}},
		{args: []string{"./a:b", "box:/tmp"}, want: Plan{Dir: ToVM, VM: "box", Sources: []string{"./a:b"}, Dest: "/tmp"}},
		{args: []string{"box:."}, wantErr: "needs a source and a destination"},
		{args: []string{"a", "b"}, wantErr: "neither side is in a VM"},
		{args: []string{"box:/a", "other:/b"}, wantErr: "between the host and one VM"},
		{args: []string{"x", "box:/a", "."}, wantErr: "x is a host path"},
		{args: []string{"box:/a", "other:/b", "."}, wantErr: "from one VM"},
		{args: []string{"a/f", "b/f", "box:/tmp"}, wantErr: "would both be copied to f"},
		{args: []string{"box:/a/f", "box:/b/f/", "."}, wantErr: "would both be copied to f"},
		{args: []string{"", "box:/a"}, wantErr: "empty path"},
	}
	for _, tt := range tests {
		got, err := ParsePlan(tt.args)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrUsage) {
				t.Errorf("ParsePlan(%q) = %+v, %v, want a usage error with %q", tt.args, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParsePlan(%q) = %+v, %v, want %+v", tt.args, got, err, tt.want)
		}
	}
}
