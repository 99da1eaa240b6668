package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// opSnapshot is what the operation page showed at one moment.
type opSnapshot struct {
	State  string
	Stages []string
}

// watchOp polls the operation page the browser is on until it reports
// done or error, and returns the distinct states it went through.
func (s *session) watchOp(t *testing.T, timeout time.Duration) []opSnapshot {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var seen []opSnapshot
	for {
		snap := opSnapshot{State: s.text("#op-state"), Stages: s.texts("#op-stages li")}
		if len(seen) == 0 || snap.State != seen[len(seen)-1].State || !slices.Equal(snap.Stages, seen[len(seen)-1].Stages) {
			seen = append(seen, snap)
			t.Logf("op page: %s %q", snap.State, snap.Stages)
		}
		if snap.State == "done" || snap.State == "error" {
			return seen
		}
		if time.Now().After(deadline) {
			t.Fatalf("the build did not finish within %s: %+v", timeout, seen)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestWebImageBuildChromium builds a minimal image through the web UI in
// a real headless Chromium: it logs in with the link 'banger ui' prints,
// fills the build form, watches the stages live, finds the image in the
// list, and is refused clearly when it builds the same name again. A
// second browser without JavaScript builds another image, following the
// page's own refresh. Screenshots land in build/.
func TestWebImageBuildChromium(t *testing.T) {
	e := newEnv(t)
	e.webClient(webBase)
	wd := e.startWebDriver()
	shots := screenshotDir()

	b := wd.newSession(t.TempDir(), false)
	b.navigate(e.loginLink())
	if u := b.url(); u != webBase+"/" {
		t.Fatalf("after the login link the browser is at %s, want %s/", u, webBase)
	}
	if ok := b.flashes("ok"); !slices.Contains(ok, "logged in") || b.text("form.logout button") != "Log out" {
		t.Errorf("after the login link: flashes %q, log-out button %q", ok, b.text("form.logout button"))
	}

	// Sizes new to the image cache, so that each build really runs
	// mkfs (a few seconds) and the browser can watch it.
	size := func() string { return fmt.Sprintf("%dM", 1024+rand.IntN(1000)) }
	b.navigate(webBase + "/images")
	b.typeInto("#build-form input[name=name]", "webimg")
	b.click("#build-form select[name=kind] option[value=minimal]")
	b.typeInto("#build-form input[name=size]", size())
	b.click("#build-form button")
	b.waitURL(webBase+"/ops/", 30*time.Second)
	heading := b.find("h1")
	if h := b.text("h1"); h != "Building image webimg" {
		t.Errorf("operation page heading = %q", h)
	}
	seen := b.watchOp(t, 20*time.Minute)
	last := seen[len(seen)-1]
	b.screenshot(filepath.Join(shots, "web-image-build-op.png"))
	if last.State != "done" {
		t.Fatalf("the build ended %s: %s", last.State, b.text("#op-error"))
	}
	if len(last.Stages) == 0 || !strings.HasPrefix(last.Stages[0], "building minimal image ") || strings.HasSuffix(last.Stages[0], "running") {
		t.Errorf("finished build stages = %q, want building minimal image with its time", last.Stages)
	}
	// The page changed while the build ran: it showed the stage running
	// before it showed it done.
	sawRunning := slices.ContainsFunc(seen, func(s opSnapshot) bool {
		return s.State == "running" && slices.ContainsFunc(s.Stages, func(st string) bool { return strings.HasSuffix(st, "running") })
	})
	if !sawRunning {
		t.Errorf("the browser never saw a stage running: %+v", seen)
	}
	if logs := b.text("#op-logs"); !strings.Contains(logs, "made rootfs image") {
		t.Errorf("the operation page shows no build log: %q", logs)
	}
	// app.js did this, in place: the page never reloaded.
	if _, err := b.elementText(heading); err != nil || !strings.HasPrefix(b.title(), "✓ ") {
		t.Errorf("with JavaScript the page reloaded (%v) or its title %q lacks the ✓ app.js adds", err, b.title())
	}

	b.click("#op-link")
	if u := b.waitURL(webBase+"/images", 30*time.Second); u != webBase+"/images" {
		t.Errorf("the operation's link went to %s, want %s/images", u, webBase)
	}
	names := b.texts("table tbody tr td:first-child")
	if !slices.Contains(names, "webimg") {
		t.Fatalf("the image list shows %q, want webimg", names)
	}
	b.screenshot(filepath.Join(shots, "web-image-build.png"))
	if !slices.Contains(e.imageNames(), "webimg") {
		t.Errorf("bangerd does not list webimg")
	}

	// The same name again: back on the form, with bangerd's refusal and
	// the values kept.
	b.typeInto("#build-form input[name=name]", "webimg")
	b.click("#build-form select[name=kind] option[value=minimal]")
	b.click("#build-form button")
	u := b.waitURL(webBase+"/images?", 30*time.Second)
	errs := b.flashes("error")
	if len(errs) != 1 ||
		errs[0] != "building image webimg: an image named webimg already exists: delete it first with 'banger image delete webimg'" {
		t.Errorf("second build of webimg: at %s with errors %q, want the images page with bangerd's refusal", u, errs)
	}
	if v := b.source(); !strings.Contains(v, `name="name" value="webimg"`) {
		t.Errorf("the refused form lost its name")
	}
	b.screenshot(filepath.Join(shots, "web-image-build-duplicate.png"))

	// Without JavaScript the operation page refreshes itself.
	nojs := wd.newSession(t.TempDir(), true)
	nojs.navigate(e.loginLink())
	nojs.navigate(webBase + "/images")
	nojs.typeInto("#build-form input[name=name]", "webimg-nojs")
	nojs.click("#build-form select[name=kind] option[value=minimal]")
	nojs.typeInto("#build-form input[name=size]", size())
	nojs.click("#build-form button")
	nojs.waitURL(webBase+"/ops/", 30*time.Second)
	heading = nojs.find("h1")
	seen = nojs.watchOp(t, 20*time.Minute)
	if st := seen[len(seen)-1].State; st != "done" {
		t.Fatalf("the build without JavaScript ended %s", st)
	}
	if len(seen) < 2 || seen[0].State != "running" {
		t.Errorf("without JavaScript the browser never saw the build change: %+v", seen)
	}
	// The page's own refresh did it: the first page is gone, and no script ran.
	if _, err := nojs.elementText(heading); err == nil || !strings.Contains(err.Error(), "stale element") {
		t.Errorf("without JavaScript the operation page never reloaded itself (%v)", err)
	}
	if strings.HasPrefix(nojs.title(), "✓ ") {
		t.Errorf("app.js ran in the browser without JavaScript")
	}
	nojs.screenshot(filepath.Join(shots, "web-image-build-nojs.png"))
	if !slices.Contains(e.imageNames(), "webimg-nojs") {
		t.Errorf("bangerd does not list webimg-nojs")
	}
	if fi, err := os.Stat(filepath.Join(shots, "web-image-build.png")); err != nil || fi.Size() < 1000 {
		t.Errorf("screenshot missing: %v", err)
	}
}
