/* Page wiring: draw the server-rendered data, then keep it current over WebSockets.
 *
 * The socket authenticates with the session cookie; the server refuses it for
 * other tenants' runs. On (re)connect the run socket sends a full snapshot, so
 * a dropped connection loses no points; code 4401 means "signed out" (a revoked
 * key, a deactivated tenant, a logout elsewhere): the page goes to the login
 * form at once rather than keep showing data.
 */
(function () {
  "use strict";

  function data(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  function socket(path, onMessage, stateEl) {
    var delay = 1000, stopped = false;
    function setState(text, cls) {
      if (!stateEl) return;
      stateEl.textContent = text;
      stateEl.className = "live-state " + (cls || "");
    }
    function open() {
      var proto = location.protocol === "https:" ? "wss:" : "ws:";
      var ws = new WebSocket(proto + "//" + location.host + path);
      ws.onopen = function () { delay = 1000; setState("live", "live"); };
      ws.onmessage = function (e) { onMessage(JSON.parse(e.data)); };
      ws.onclose = function (e) {
        if (e.code === 4401) {
          stopped = true; setState("signed out", "offline");
          document.body.classList.add("signed-out");
          location.assign("/dashboard/login/?next=" + encodeURIComponent(location.pathname));
          return;
        }
        setState("reconnecting…", "offline");
        if (!stopped) setTimeout(open, delay);
        delay = Math.min(delay * 2, 15000);
      };
    }
    open();
  }

  function runPage() {
    var detail = data("run-data");
    var box = document.getElementById("loss-chart");
    var chart = TuftMetrics.mount(box, document.getElementById("metric-toolbar"), data("run-metrics"));
    var seen = {};  // steps already counted: a point may arrive twice (snapshot and event)
    detail.points.forEach(function (p) { seen[p.step] = true; });
    // Live events say "something changed"; the metrics table is fetched again (at most one fetch in flight).
    var fetching = false, stale = false;
    function refresh() {
      if (fetching) { stale = true; return; }
      fetching = true; stale = false;
      fetch(box.dataset.metricsUrl, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (run) { if (run) chart.update({ runs: [run] }); })
        .catch(function () {})
        .then(function () { fetching = false; if (stale) refresh(); });
    }

    // Completed operations by kind, plus failures: counts that only grow, so live events can add to them.
    var kinds = ["create_model", "forward_backward", "forward", "optim_step", "save_weights", "save_weights_for_sampler", "load_weights"];
    var short = ["create", "fwd+bwd", "forward", "optim", "save", "save (sampler)", "load", "failed"];
    var done = detail.done_by_kind, failed = detail.failed;
    var opsChart = TuftCharts.barChart(document.getElementById("ops-chart"), { labels: short, height: 180, every: 1 });
    function drawOps() {
      opsChart.update([{ name: "operations", values: kinds.map(function (k) { return done[k] || 0; }).concat([failed]) }]);
    }
    drawOps();

    var last = document.getElementById("last-event");
    var badge = document.getElementById("run-badge"), stateEl = document.getElementById("run-state");
    function showState(state) {
      badge.textContent = state; badge.className = "badge " + state;
      if (state === "stopped" || state === "released") { stateEl.textContent = "run ended"; stateEl.className = "live-state ended"; }
    }
    if (detail.state === "stopped" || detail.state === "released") showState(detail.state);
    socket("/ws/dashboard/runs/" + encodeURIComponent(box.dataset.runId) + "/", function (msg) {
      if (msg.type === "snapshot") { msg.points.forEach(function (p) { seen[p.step] = true; }); refresh(); }
      else if (msg.type === "loss.point") {
        var fresh = !seen[msg.point.step];
        seen[msg.point.step] = true; refresh();
        if (fresh) { done.forward_backward = (done.forward_backward || 0) + 1; drawOps(); }
        last.textContent = "step " + msg.point.step + ": loss " + TuftCharts.fmt(msg.point.loss);
      } else if (msg.type === "run.op") {
        if (msg.status === "failed") failed += 1; else done[msg.kind] = (done[msg.kind] || 0) + 1;
        drawOps();
        if (msg.kind === "optim_step") refresh();  // brings the learning rate and optimizer metrics
        last.textContent = msg.kind + " " + msg.status;
      } else if (msg.type === "run.released") {
        showState("released");
      } else if (msg.type === "run.summary") {
        document.getElementById("run-checkpoints-live").innerHTML = msg.checkpoints_html;
        showState(msg.state);
      }
    }, detail.state === "stopped" || detail.state === "released" ? null : stateEl);
  }

  function overviewPage() {
    var d = data("overview-data");
    var u = d.usage;
    TuftCharts.barChart(document.getElementById("usage-chart"), { stacked: true, every: 2 }).update([
      { name: "training", values: u.training },
      { name: "prefill", values: u.prefill },
      { name: "sampled", values: u.sampled }
    ], u.labels);
    TuftCharts.hbarChart(document.getElementById("storage-chart"), d.storage, { format: TuftCharts.bytes, empty: "no checkpoints yet" });
    function drawSparks(sparks) {
      document.querySelectorAll("[data-spark]").forEach(function (cell) {
        TuftCharts.sparkline(cell, sparks[cell.dataset.spark] || []);
      });
    }
    drawSparks(d.sparks);
    // Server-rendered tables, replaced whole when the server says they changed.
    function onTables(msg) {
      var runsBox = document.getElementById("runs-live"), ticked = {};
      runsBox.querySelectorAll("input[name=runs]:checked").forEach(function (c) { ticked[c.value] = true; });
      runsBox.innerHTML = msg.runs_html;
      runsBox.querySelectorAll("input[name=runs]").forEach(function (c) { c.checked = !!ticked[c.value]; });
      document.getElementById("checkpoints-live").innerHTML = msg.checkpoints_html;
      document.getElementById("sessions-live").innerHTML = msg.sessions_html;
      drawSparks(msg.sparks);
    }

    var minuteLabels = [];
    for (var i = 59; i >= 0; i--) minuteLabels.push(i === 0 ? "now" : "-" + i + "m");
    var sampling = TuftCharts.barChart(document.getElementById("sampling-chart"), { stacked: true, every: 10, labels: minuteLabels, empty: "no sampling in the last hour" });
    var WINDOW_S = 120;
    var queue = TuftCharts.lineChart(document.getElementById("queue-chart"), {
      height: 180, xLabel: "seconds ago", dots: false, xMin: -WINDOW_S, xMax: 0, integerX: true,
      xFormat: function (t) { return String(Math.round(-t)); }
    });
    var history = [];
    var lanes = document.getElementById("lanes");

    function onStatus(s) {
      var now = Date.now() / 1000;
      history.push({ t: now, train: s.queue.train || 0, sample: s.queue.sample || 0 });
      history = history.filter(function (h) { return now - h.t <= WINDOW_S; });
      queue.update([
        { name: "training queue", points: history.map(function (h) { return { x: h.t - now, y: h.train }; }) },
        { name: "sampling queue", points: history.map(function (h) { return { x: h.t - now, y: h.sample }; }) }
      ]);
      sampling.update([
        { name: "completed", values: s.sampling.requests },
        { name: "failed", values: s.sampling.failed, color: "#eb3b5a" }
      ]);
      lanes.innerHTML = "";
      s.lanes.forEach(function (lane) {
        var li = document.createElement("li");
        var b = document.createElement("b"); b.textContent = lane.name; li.appendChild(b);
        var badge = document.createElement("span"); badge.className = "badge " + lane.state; badge.textContent = lane.state; li.appendChild(badge);
        lane.ops.forEach(function (op) {
          var t = document.createElement("div"); t.className = "hint";
          t.textContent = op.kind + " · " + op.tenant + " · " + (op.target || ""); li.appendChild(t);
        });
        lanes.appendChild(li);
      });
    }
    onStatus(d.status);
    socket("/ws/dashboard/status/", function (msg) {
      if (msg.type === "status") onStatus(msg);
      else if (msg.type === "overview") onTables(msg);
    }, document.getElementById("status-state"));
  }

  document.addEventListener("DOMContentLoaded", function () {
    var page = document.body.dataset.page;
    if (page === "run") runPage();
    else if (page === "overview") overviewPage();
    else if (page === "tenant") {
      var u = data("tenant-usage"), sparks = data("tenant-sparks");
      TuftCharts.barChart(document.getElementById("tenant-usage-chart"), { stacked: true, every: 5 }).update([
        { name: "training", values: u.training }, { name: "prefill", values: u.prefill }, { name: "sampled", values: u.sampled }
      ], u.labels);
      TuftCharts.barChart(document.getElementById("tenant-storage-chart"), { every: 5, format: TuftCharts.bytes }).update([
        { name: "checkpoint bytes", values: u.storage }
      ], u.labels);
      document.querySelectorAll("[data-spark]").forEach(function (cell) { TuftCharts.sparkline(cell, sparks[cell.dataset.spark] || []); });
    }
    else if (page === "status") {
      socket("/ws/dashboard/status/?page=status", function (msg) {
        if (msg.type === "dispatch") document.getElementById("status-detail").innerHTML = msg.html;
      }, document.getElementById("status-state"));
    }
    else if (page === "compare" && document.getElementById("compare-chart")) {
      TuftMetrics.mount(document.getElementById("compare-chart"), document.getElementById("compare-toolbar"), data("compare-metrics"));
    }
  });
})();
