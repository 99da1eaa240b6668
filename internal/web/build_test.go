package web

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/rpc"
)

// buildFake is the part of bangerd that lists and builds images, as its
// API answers: a name that exists is refused with 409 before the stream
// starts; a build streams a stage and log lines, and waits for release.
type buildFake struct {
	mu      sync.Mutex
	images  map[string]rpc.Image
	builds  []rpc.BuildImageRequest
	release chan struct{}
}

func startBuildFake(t *testing.T) (*buildFake, *rpc.Client) {
	t.Helper()
	f := &buildFake{images: map[string]rpc.Image{"minimal": {Name: "minimal", Rootfs: "/rt/rootfs-minimal.ext4", Managed: true}},
		release: make(chan struct{})}
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/images", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		var out []rpc.Image
		for _, img := range f.images {
			out = append(out, img)
		}
		f.mu.Unlock()
		json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("POST /v1/images/build", f.build)
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() {
		f.finish()
		srv.Close()
	})
	return f, rpc.NewClient(sock)
}

func (f *buildFake) finish() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.release:
	default:
		close(f.release)
	}
}

func (f *buildFake) build(w http.ResponseWriter, r *http.Request) {
	var req rpc.BuildImageRequest
	json.NewDecoder(r.Body).Decode(&req)
	f.mu.Lock()
	f.builds = append(f.builds, req)
	_, exists := f.images[req.Name]
	f.mu.Unlock()
	refuse := func(status int, code, msg string) {
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(rpc.Error{Message: msg, Code: code})
	}
	switch {
	case exists:
		refuse(http.StatusConflict, rpc.CodeExists, "an image named "+req.Name+" already exists: delete it first with 'banger image delete "+req.Name+"'")
		return
	case req.Size == "lots":
		refuse(http.StatusBadRequest, rpc.CodeInvalid, `invalid --size "lots": not a size`)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	send := func(ev rpc.Event) {
		enc.Encode(ev)
		w.(http.Flusher).Flush()
	}
	stage := "building " + req.Kind + " image"
	send(rpc.Event{Type: "stage", Stage: stage})
	send(rpc.Event{Type: "log", Message: "running debootstrap suite=bookworm"})
	<-f.release
	send(rpc.Event{Type: "log", Message: "made rootfs image took=2.1s"})
	send(rpc.Event{Type: "stage_done", Stage: stage, DurationMS: 2500})
	img := rpc.Image{Name: req.Name, Rootfs: "/data/images/" + req.Name + "/rootfs.ext4", Managed: true, Size: 1 << 30}
	f.mu.Lock()
	f.images[req.Name] = img
	f.mu.Unlock()
	send(rpc.Event{Type: "done", Image: &img})
}

func TestBuildImage(t *testing.T) {
	f, client := startBuildFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(client, Options{Log: quiet, Context: ctx, Owner: testOwner})
	if err != nil {
		t.Fatal(err)
	}
	h := s.Handler()

	w := do(t, h, request{method: "GET", target: "/images"})
	mustContain(t, w.Body.String(), `<form method="post" action="/images/build"`, `<option value="docker">docker</option>`,
		`<option value="minimal">minimal</option>`, `name="size"`)

	w = do(t, h, request{method: "POST", target: "/images/build", form: url.Values{"name": {"web"}, "kind": {"minimal"}, "size": {"2G"}}})
	loc := w.Header().Get("Location")
	if w.Code != http.StatusSeeOther || !strings.HasPrefix(loc, "/ops/") {
		t.Fatalf("POST /images/build = %d %q %s, want 303 to /ops/ID", w.Code, loc, w.Body)
	}
	if got := f.builds; len(got) != 1 || got[0] != (rpc.BuildImageRequest{Name: "web", Kind: "minimal", Size: "2G"}) {
		t.Errorf("build requests = %+v", got)
	}
	// While it runs: the page shows the stage and the log, and refreshes
	// itself without JavaScript; the images page lists it in progress.
	// The operation reads the stream in the background: wait for its
	// first log line to arrive.
	body := do(t, h, request{method: "GET", target: loc}).Body.String()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(body, "running debootstrap") && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		body = do(t, h, request{method: "GET", target: loc}).Body.String()
	}
	mustContain(t, body, "<h1>Building image web</h1>", `<a href="/images" aria-current="page">Images</a>`, `<noscript><meta http-equiv="refresh" content="1"></noscript>`,
		`class="stage-running"><span class="stage-name">building minimal image</span>`, "running debootstrap suite=bookworm", `data-done="false"`)
	mustContain(t, do(t, h, request{method: "GET", target: "/images"}).Body.String(), "In progress", `href="`+loc+`"`, "Building image web")
	if strings.Contains(do(t, h, request{method: "GET", target: "/"}).Body.String(), "Building image") {
		t.Errorf("the VM list shows an image build in progress")
	}

	// A second build of the same name while the first runs is refused at once.
	w = do(t, h, request{method: "POST", target: "/images/build", form: url.Values{"name": {"web"}, "kind": {"docker"}}})
	fl := flashOf(t, w)
	if w.Code != http.StatusSeeOther || fl == nil || fl.Kind != "error" || !strings.Contains(fl.Message, "building image web: a build of web is already running") || !strings.Contains(fl.Message, loc) {
		t.Errorf("second build while running = %d flash %+v, want a refusal pointing to %s", w.Code, fl, loc)
	}
	w = do(t, h, request{method: "POST", target: "/images/build", form: url.Values{"name": {"web"}}, json: true})
	if w.Code != http.StatusConflict {
		t.Errorf("second build while running, JSON = %d %s, want 409", w.Code, w.Body)
	}
	if len(f.builds) != 1 {
		t.Errorf("bangerd got %d build requests, want 1", len(f.builds))
	}

	f.finish()
	v := pollOp(t, h, loc)
	if v.State != "done" || v.Error != "" || v.Image == nil || v.Image.Name != "web" || v.ResultURL != "/images" || v.Kind != "build" {
		t.Errorf("finished build = %+v, want done with image web and a link to /images", v)
	}
	if want := []opStage{{Name: "building minimal image", State: "done", DurationMS: 2500}}; len(v.Stages) != 1 || v.Stages[0] != want[0] {
		t.Errorf("build stages = %+v, want %+v", v.Stages, want)
	}
	body = do(t, h, request{method: "GET", target: loc}).Body.String()
	mustContain(t, body, `data-done="true"`, `<a id="op-link" href="/images">Go to the images</a>`, "made rootfs image took=2.1s")
	if strings.Contains(body, "http-equiv") {
		t.Errorf("the finished build page still refreshes itself")
	}
	mustContain(t, do(t, h, request{method: "GET", target: "/images"}).Body.String(), "/data/images/web/rootfs.ext4")

	// Now bangerd refuses the name: the form comes back with the values
	// and bangerd's reason; JSON gets 409.
	w = do(t, h, request{method: "POST", target: "/images/build", form: url.Values{"name": {"web"}, "kind": {"minimal"}, "size": {"2G"}}})
	fl = flashOf(t, w)
	back, _ := url.Parse(w.Header().Get("Location"))
	if w.Code != http.StatusSeeOther || back.Path != "/images" || back.Query().Get("build_name") != "web" || back.Query().Get("build_size") != "2G" ||
		fl == nil || fl.Kind != "error" || fl.Message != "building image web: an image named web already exists: delete it first with 'banger image delete web'" {
		t.Errorf("build of an existing name = %d %s flash %+v, want 303 back to the form with bangerd's refusal", w.Code, back, fl)
	}
	body = do(t, h, request{method: "GET", target: back.String(), cookies: w.Result().Cookies()}).Body.String()
	mustContain(t, body, `role="alert">building image web: an image named web already exists`, `name="name" value="web"`,
		`<option value="minimal" selected>minimal</option>`, `name="size" value="2G"`)
	w = do(t, h, request{method: "POST", target: "/images/build", form: url.Values{"name": {"web"}}, json: true})
	if w.Code != http.StatusConflict || !strings.Contains(decode[map[string]string](t, w)["error"], "already exists") {
		t.Errorf("build of an existing name, JSON = %d %s, want 409", w.Code, w.Body)
	}
	if ops := s.ops.running("build"); len(ops) != 0 {
		t.Errorf("refused builds left operations behind: %+v", ops)
	}

	for _, tc := range []struct {
		form url.Values
		code int
		want string
	}{
		{url.Values{"name": {" "}}, 400, "building image: it needs a name"},
		{url.Values{"name": {"x"}, "kind": {"void"}}, 400, `the kind must be docker or minimal, got "void"`},
		{url.Values{"name": {"x"}, "kind": {"minimal"}, "size": {"lots"}}, 400, `building image x: invalid --size "lots"`},
	} {
		w := do(t, h, request{method: "POST", target: "/images/build", form: tc.form, json: true})
		if w.Code != tc.code || !strings.Contains(decode[map[string]string](t, w)["error"], tc.want) {
			t.Errorf("build %v = %d %s, want %d %q", tc.form, w.Code, w.Body, tc.code, tc.want)
		}
	}
}
