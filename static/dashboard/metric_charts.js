/* TuftMetrics: a run's metrics (or several runs') on one uPlot chart, with controls.
 *
 * data = {runs: [{id, name, columns: [...], rows: [[...], ...]}]} as served by
 * /dashboard/runs/<id>/metrics.json (one row per step). The toolbar picks the
 * metric, the x axis (step or wall time), smoothing (an exponential moving
 * average, as TensorBoard's slider) and a log scale; hovering shows every
 * series' value at the cursor in the legend. uPlot is vendored
 * (static/vendor/uplot), so this works offline.
 *
 * The container's data-points attribute is the number of points of the chosen
 * metric drawn for the first run, so tests and people can watch it grow.
 */
(function () {
  "use strict";
  var PALETTE = ["#3867d6", "#20bf6b", "#f7b731", "#eb3b5a", "#8854d0", "#0fb9b1", "#fd9644", "#4b6584"];
  var SKIP = { step: 1, time: 1 };

  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888"; }

  function column(run, name) {
    var i = run.columns.indexOf(name);
    return run.rows.map(function (r) { return i < 0 ? null : r[i]; });
  }

  function metricNames(runs) {
    var seen = {}, out = [];
    runs.forEach(function (run) {
      run.columns.forEach(function (c) { if (!SKIP[c] && !seen[c]) { seen[c] = 1; out.push(c); } });
    });
    return out;
  }

  /* Exponential moving average over the non-null values, debiased so the start is not pulled to 0. */
  function smooth(values, weight) {
    if (!(weight > 0)) return values;
    var last = 0, n = 0;
    return values.map(function (v) {
      if (v === null || v === undefined || !isFinite(v)) return null;
      last = last * weight + (1 - weight) * v; n++;
      return last / (1 - Math.pow(weight, n));
    });
  }

  function fmt(v) {
    if (v === null || v === undefined) return "–";
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
    return (+v.toPrecision(5)).toString();
  }

  function option(select, value, text) {
    var o = document.createElement("option"); o.value = value; o.textContent = text; select.appendChild(o);
  }

  function toolbar(box, state, names, redraw) {
    box.innerHTML = "";
    function labelled(text, input) {
      var l = document.createElement("label"); l.textContent = text + " "; l.appendChild(input); box.appendChild(l);
      return input;
    }
    var metric = labelled("Metric", document.createElement("select"));
    metric.id = box.id + "-metric";
    names.forEach(function (n) { option(metric, n, n); });
    metric.value = names.indexOf(state.metric) >= 0 ? state.metric : (names[0] || "");
    state.metric = metric.value;
    metric.onchange = function () { state.metric = metric.value; redraw(); };
    var x = labelled("x", document.createElement("select"));
    option(x, "step", "step"); option(x, "time", "wall time"); x.value = state.x;
    x.onchange = function () { state.x = x.value; redraw(); };
    var sm = document.createElement("input");
    sm.type = "range"; sm.min = "0"; sm.max = "0.99"; sm.step = "0.01"; sm.value = String(state.smoothing);
    var smOut = document.createElement("span"); smOut.textContent = state.smoothing.toFixed(2);
    labelled("Smoothing", sm).after(smOut);
    sm.oninput = function () { state.smoothing = +sm.value; smOut.textContent = state.smoothing.toFixed(2); redraw(); };
    var log = document.createElement("input"); log.type = "checkbox"; log.checked = state.log;
    labelled("Log scale", log);
    log.onchange = function () { state.log = log.checked; redraw(); };
    return metric;
  }

  /* mount(chartEl, toolbarEl, data) -> {update(data)} */
  function mount(chartEl, toolbarEl, data) {
    var state = { metric: "loss:sum", x: "step", smoothing: 0, log: false }, plot = null, runs = data.runs;
    var metricSelect = null, knownNames = "";

    function build() {
      var names = metricNames(runs);
      if (names.join("|") !== knownNames) { knownNames = names.join("|"); metricSelect = toolbar(toolbarEl, state, names, build); }
      var tables = runs.map(function (run) {
        var xs = column(run, state.x), ys = column(run, state.metric);
        if (state.log) ys = ys.map(function (v) { return v > 0 ? v : null; });
        return { xs: xs, raw: ys, smooth: smooth(ys, state.smoothing) };
      });
      var first = tables[0] ? tables[0].raw.filter(function (v) { return v !== null && v !== undefined; }).length : 0;
      chartEl.dataset.points = String(first);
      if (plot) { plot.destroy(); plot = null; }
      chartEl.innerHTML = "";
      if (!runs.length || !tables.some(function (t) { return t.xs.length; })) {
        var p = document.createElement("p"); p.className = "empty";
        p.textContent = chartEl.dataset.empty || "no steps yet"; chartEl.appendChild(p);
        return;
      }
      // One x axis for all runs: uPlot.join aligns their (x, y) tables, with nulls where a run has no point.
      var parts = [];
      tables.forEach(function (t) {
        parts.push([t.xs, t.raw]);
        if (state.smoothing > 0) parts.push([t.xs, t.smooth]);
      });
      var joined = uPlot.join(parts);
      var series = [{ label: state.x === "time" ? "time" : "step", value: function (u, v) {
        return v === null ? "–" : state.x === "time" ? new Date(v * 1000).toLocaleTimeString() : String(v);
      } }];
      runs.forEach(function (run, i) {
        var color = PALETTE[i % PALETTE.length], name = runs.length > 1 ? run.name : state.metric;
        if (state.smoothing > 0) {
          series.push({ label: name + " (raw)", stroke: color + "55", width: 1, spanGaps: true, value: function (u, v) { return fmt(v); } });
          series.push({ label: name, stroke: color, width: 2, spanGaps: true, value: function (u, v) { return fmt(v); } });
        } else {
          series.push({ label: name, stroke: color, width: 2, spanGaps: true, points: { show: true, size: 5 },
                        value: function (u, v) { return fmt(v); } });
        }
      });
      var axis = { stroke: css("--muted"), grid: { stroke: css("--soft") }, ticks: { stroke: css("--line") } };
      plot = new uPlot({
        width: Math.max(280, chartEl.clientWidth), height: +(chartEl.dataset.height || 300),
        scales: { x: { time: state.x === "time" }, y: { distr: state.log ? 3 : 1 } },
        series: series,
        // Steps are whole numbers: no 1.2, 1.4 … ticks.
        axes: [Object.assign(state.x === "step" ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000] } : {}, axis), Object.assign({ size: 60, values: function (u, vals) { return vals.map(fmt); } }, axis)],
        cursor: { drag: { x: true, y: false } },
        legend: { live: true },
      }, joined, chartEl);
    }

    window.addEventListener("resize", function () {
      if (plot) plot.setSize({ width: Math.max(280, chartEl.clientWidth), height: plot.height });
    });
    build();
    return {
      update: function (fresh) { runs = fresh.runs; build(); },
      select: function (metric) { state.metric = metric; if (metricSelect) metricSelect.value = metric; build(); },
    };
  }

  window.TuftMetrics = { mount: mount, smooth: smooth };
})();
