/* TuftCharts: small hand-written SVG charts (line, bars, sparkline); no dependencies.
 *
 * Each chart draws into a container element and can be redrawn with new data
 * (update) without touching the rest of the page. Line charts keep the number
 * of drawn points in container.dataset.points, so tests and users can see the
 * curve grow.
 */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#3867d6", "#20bf6b", "#f7b731", "#eb3b5a", "#8854d0", "#0fb9b1"];

  function el(tag, attrs, parent, text) {
    var node = document.createElementNS(NS, tag);
    for (var k in attrs) { if (attrs[k] !== undefined) node.setAttribute(k, attrs[k]); }
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function fmt(v) {
    var a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
    if (a === 0) return "0";
    if (a < 0.01) return v.toExponential(1);
    if (a < 10) return (+v.toFixed(3)).toString();
    return (+v.toFixed(1)).toString();
  }

  function bytes(v) {
    var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
  }

  /* About n "nice" ticks covering [lo, hi]. */
  function ticks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var out = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
    return out;
  }

  function frame(container, height) {
    container.innerHTML = "";
    // Draw at the container's real width so text keeps its CSS size.
    var W = Math.max(320, Math.round(container.clientWidth || 640)), H = height || 220;
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img" }, container);
    return { svg: svg, W: W, H: H, m: { l: 48, r: 14, t: 14, b: 30 } };
  }

  function legend(f, series) {
    var g = el("g", { class: "legend" }, f.svg), x = f.m.l;
    series.forEach(function (s, i) {
      var color = s.color || PALETTE[i % PALETTE.length];
      el("rect", { x: x, y: 2, width: 10, height: 10, fill: color, rx: 2 }, g);
      var t = el("text", { x: x + 14, y: 11 }, g, s.name);
      x += 24 + s.name.length * 6.5;
      return t;
    });
  }

  /* opts: {height, xLabel, yLabel, format}. update(series): series = [{name, color, points: [{x, y}]}] */
  function lineChart(container, opts) {
    opts = opts || {};
    function update(series) {
      var f = frame(container, opts.height), m = f.m;
      var all = [];
      series.forEach(function (s) { all = all.concat(s.points); });
      container.dataset.points = String(all.length);
      if (!all.length) {
        el("text", { x: f.W / 2, y: f.H / 2, "text-anchor": "middle", class: "empty-note" }, f.svg, opts.empty || "no data yet");
        return;
      }
      var xs = all.map(function (p) { return p.x; }), ys = all.map(function (p) { return p.y; });
      var x0 = opts.xMin !== undefined ? opts.xMin : Math.min.apply(null, xs);
      var x1 = opts.xMax !== undefined ? opts.xMax : Math.max.apply(null, xs);
      var y0 = Math.min(0, Math.min.apply(null, ys)), y1 = Math.max.apply(null, ys);
      if (x1 === x0) { x1 = x0 + 1; }
      if (y1 === y0) { y1 = y0 + 1; }
      y1 += (y1 - y0) * 0.05;
      var px = function (x) { return m.l + (x - x0) / (x1 - x0) * (f.W - m.l - m.r); };
      var py = function (y) { return f.H - m.b - (y - y0) / (y1 - y0) * (f.H - m.t - m.b); };
      var format = opts.format || fmt;
      ticks(y0, y1, 4).forEach(function (t) {
        el("line", { x1: m.l, x2: f.W - m.r, y1: py(t), y2: py(t), class: "grid-line" }, f.svg);
        el("text", { x: m.l - 6, y: py(t) + 4, "text-anchor": "end" }, f.svg, format(t));
      });
      ticks(x0, x1, 6).filter(function (t) { return !opts.integerX || t === Math.round(t); }).forEach(function (t) {
        el("text", { x: px(t), y: f.H - m.b + 16, "text-anchor": "middle" }, f.svg, opts.xFormat ? opts.xFormat(t) : fmt(t));
      });
      el("line", { x1: m.l, x2: f.W - m.r, y1: f.H - m.b, y2: f.H - m.b, class: "axis" }, f.svg);
      el("line", { x1: m.l, x2: m.l, y1: m.t, y2: f.H - m.b, class: "axis" }, f.svg);
      if (opts.xLabel) el("text", { x: f.W - m.r, y: f.H - 2, "text-anchor": "end" }, f.svg, opts.xLabel);
      series.forEach(function (s, i) {
        var color = s.color || PALETTE[i % PALETTE.length];
        if (!s.points.length) return;
        var d = s.points.map(function (p, j) { return (j ? "L" : "M") + px(p.x).toFixed(1) + " " + py(p.y).toFixed(1); }).join(" ");
        el("path", { d: d, fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" }, f.svg);
        if (s.points.length <= 400 && opts.dots !== false) {
          s.points.forEach(function (p) {
            var c = el("circle", { cx: px(p.x), cy: py(p.y), r: 3, fill: color, class: "pt" }, f.svg);
            el("title", {}, c, (opts.xLabel || "x") + " " + p.x + ": " + format(p.y));
          });
        }
      });
      if (series.length > 1) legend(f, series);
    }
    return { update: update };
  }

  /* opts: {height, labels, stacked, format, every}. update(series): series = [{name, color, values}] */
  function barChart(container, opts) {
    opts = opts || {};
    function update(series, labels) {
      labels = labels || opts.labels || [];
      var f = frame(container, opts.height), m = f.m;
      var n = labels.length, totals = [];
      for (var i = 0; i < n; i++) {
        var vals = series.map(function (s) { return s.values[i] || 0; });
        totals.push(opts.stacked ? vals.reduce(function (a, b) { return a + b; }, 0) : Math.max.apply(null, vals));
      }
      var top = Math.max.apply(null, totals.concat([0]));
      if (top === 0) {
        el("text", { x: f.W / 2, y: f.H / 2, "text-anchor": "middle", class: "empty-note" }, f.svg, opts.empty || "nothing yet");
      }
      var yTop = top > 0 ? top * 1.08 : 1;
      var py = function (y) { return f.H - m.b - y / yTop * (f.H - m.t - m.b); };
      var format = opts.format || fmt;
      ticks(0, yTop, 4).forEach(function (t) {
        el("line", { x1: m.l, x2: f.W - m.r, y1: py(t), y2: py(t), class: "grid-line" }, f.svg);
        el("text", { x: m.l - 6, y: py(t) + 4, "text-anchor": "end" }, f.svg, format(t));
      });
      var slot = (f.W - m.l - m.r) / Math.max(n, 1), every = opts.every || Math.ceil(n / 10);
      var groups = opts.stacked ? 1 : series.length, bw = Math.max(1, slot * 0.8 / groups);
      for (var k = 0; k < n; k++) {
        var base = 0;
        series.forEach(function (s, si) {
          var v = s.values[k] || 0, color = s.color || PALETTE[si % PALETTE.length];
          var x = m.l + k * slot + slot * 0.1 + (opts.stacked ? 0 : si * bw);
          var yA = py(base + v), yB = py(base);
          if (v > 0) {
            var r = el("rect", { x: x, y: yA, width: bw, height: Math.max(0.5, yB - yA), fill: color, class: "bar" }, f.svg);
            el("title", {}, r, labels[k] + " · " + s.name + ": " + format(v));
          }
          if (opts.stacked) base += v;
        });
        if ((n - 1 - k) % every === 0) {  // counted from the right: the latest bar is always labelled
          el("text", { x: m.l + k * slot + slot / 2, y: f.H - m.b + 16, "text-anchor": "middle" }, f.svg, labels[k]);
        }
      }
      el("line", { x1: m.l, x2: f.W - m.r, y1: f.H - m.b, y2: f.H - m.b, class: "axis" }, f.svg);
      if (series.length > 1) legend(f, series);
    }
    return { update: update };
  }

  /* Horizontal bars: rows = [{label, value}] */
  function hbarChart(container, rows, opts) {
    opts = opts || {};
    var f = frame(container, Math.max(60, 26 * rows.length + 20));
    if (!rows.length) {
      el("text", { x: f.W / 2, y: 30, "text-anchor": "middle", class: "empty-note" }, f.svg, opts.empty || "nothing yet");
      return;
    }
    var top = Math.max.apply(null, rows.map(function (r) { return r.value; })) || 1;
    var left = Math.min(250, Math.round(f.W * 0.42)), maxChars = Math.floor(left / 6.5);
    rows.forEach(function (r, i) {
      var y = 10 + i * 26, w = (f.W - left - 90) * r.value / top;
      var label = r.label.length > maxChars ? "…" + r.label.slice(-(maxChars - 1)) : r.label;
      el("text", { x: left - 8, y: y + 13, "text-anchor": "end" }, f.svg, label);
      var bar = el("rect", { x: left, y: y, width: Math.max(1, w), height: 18, rx: 3, fill: PALETTE[0], class: "bar" }, f.svg);
      el("title", {}, bar, r.label);
      el("text", { x: left + w + 6, y: y + 13 }, f.svg, (opts.format || fmt)(r.value));
    });
  }

  function sparkline(container, values) {
    container.innerHTML = "";
    var W = 120, H = 28;
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H }, container);
    if (!values.length) { el("text", { x: 2, y: 18, class: "spark-empty" }, svg, "no steps yet"); return; }
    if (values.length === 1) {  // one step: a point on a flat line, and its value
      el("line", { x1: 2, x2: W - 2, y1: H / 2, y2: H / 2, class: "spark-base" }, svg);
      el("circle", { cx: W - 4, cy: H / 2, r: 3, fill: PALETTE[0] }, svg);
      el("title", {}, svg, "1 step: " + fmt(values[0]));
      return;
    }
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    if (hi === lo) hi = lo + 1;
    var d = values.map(function (v, i) {
      return (i ? "L" : "M") + (2 + i / (values.length - 1) * (W - 4)).toFixed(1) + " " + (H - 3 - (v - lo) / (hi - lo) * (H - 6)).toFixed(1);
    }).join(" ");
    el("path", { d: d, fill: "none", stroke: PALETTE[0], "stroke-width": 1.5 }, svg);
  }

  window.TuftCharts = { lineChart: lineChart, barChart: barChart, hbarChart: hbarChart, sparkline: sparkline, fmt: fmt, bytes: bytes };
})();
