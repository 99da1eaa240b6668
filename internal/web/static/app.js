// banger web UI: copy buttons and live operation pages. Everything works
// without this file; the operation page then refreshes itself.
(function () {
  "use strict";

  document.querySelectorAll("button[data-copy]").forEach(function (b) {
    var input = document.getElementById(b.getAttribute("data-copy"));
    if (!input || !navigator.clipboard) return;
    b.hidden = false;
    b.addEventListener("click", function () {
      navigator.clipboard.writeText(input.value).then(function () {
        b.textContent = "Copied";
        setTimeout(function () { b.textContent = "Copy"; }, 1500);
      });
    });
  });

  var op = document.getElementById("op");
  if (!op || op.getAttribute("data-done") === "true") return;
  var url = op.getAttribute("data-url");

  function seconds(ms) {
    var s = ms / 1000;
    if (s < 60) return s.toFixed(1) + "s";
    s = Math.round(s);
    return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function render(o) {
    var state = document.getElementById("op-state");
    state.textContent = o.state;
    state.className = "badge badge-op-" + o.state;
    document.getElementById("op-elapsed").textContent = seconds(o.elapsed_ms);
    var list = document.getElementById("op-stages");
    list.replaceChildren();
    (o.stages.length ? o.stages : [{ name: "waiting for bangerd", state: "running" }]).forEach(function (s) {
      var li = el("li", "stage-" + s.state);
      li.append(el("span", "stage-name", s.name), " ",
        el("span", "stage-time", s.state === "done" ? seconds(s.duration_ms || 0) : s.state));
      list.append(li);
    });
    var err = document.getElementById("op-error");
    err.textContent = o.error || "";
    err.hidden = !o.error;
    var logs = document.getElementById("op-logs");
    logs.textContent = o.logs.length ? o.logs.join("\n") + "\n" : "";
    logs.hidden = !o.logs.length;
    if (o.done) {
      var a = document.getElementById("op-link");
      a.href = o.result_url;
      a.textContent = o.result_text;
      document.getElementById("op-result").hidden = false;
      document.title = (o.state === "done" ? "✓ " : "✗ ") + document.title;
    }
  }

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error(r.status);
        return r.json();
      })
      .then(function (o) {
        render(o);
        if (!o.done) setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 1000);
})();
