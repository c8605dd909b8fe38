/* The sampling playground: submit a prompt, poll for the result, show tokens with their logprobs. */
(function () {
  "use strict";
  var POLL_MS = 400, GIVE_UP_MS = 120000;

  function el(tag, cls, text, parent) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    if (parent) parent.appendChild(n);
    return n;
  }

  function show(out, result) {
    out.innerHTML = "";
    var prompt = el("p", "pg-prompt-tokens hint", "Prompt: " + result.prompt_tokens.length + " tokens", out);
    prompt.title = result.prompt_pieces.join("|");
    result.sequences.forEach(function (seq) {
      el("h2", "", "Completion", out);
      el("pre", "code pg-text", seq.text, out);
      var table = el("table", "list compact pg-tokens", undefined, out);
      var head = el("tr", "", undefined, el("thead", "", undefined, table));
      ["#", "token", "id", "logprob", "probability"].forEach(function (h) { el("th", "", h, head); });
      var body = el("tbody", "", undefined, table);
      seq.tokens.forEach(function (id, i) {
        var tr = el("tr", "", undefined, body), lp = seq.logprobs[i];
        el("td", "", String(i + 1), tr);
        el("td", "", undefined, tr).appendChild(el("code", "", JSON.stringify(seq.pieces[i])));
        el("td", "", String(id), tr);
        el("td", "pg-logprob", lp === undefined ? "–" : lp.toFixed(4), tr);
        var bar = el("td", "", undefined, tr), track = el("div", "meter-track", undefined, bar);
        el("div", "meter-fill", undefined, track).style.width = (lp === undefined ? 0 : Math.exp(lp) * 100).toFixed(1) + "%";
      });
      el("p", "hint", "stopped: " + seq.stop_reason.replace("StopReason.", "").toLowerCase(), out);
    });
  }

  function start() {
    var form = document.getElementById("playground-form");
    if (!form) return;
    var status = document.getElementById("pg-status"), out = document.getElementById("pg-output");
    var button = document.getElementById("pg-submit");
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      button.disabled = true; status.textContent = "queued…"; status.className = "hint";
      var started = Date.now();
      function fail(msg) { status.textContent = msg; status.className = "error"; button.disabled = false; }
      function poll(url) {
        fetch(url, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (res) {
          if (res.status === "completed") { status.textContent = "done"; button.disabled = false; show(out, res); }
          else if (res.status === "failed") fail("failed: " + res.error);
          else if (res.detail) fail(res.detail);
          else if (Date.now() - started > GIVE_UP_MS) fail("no answer in 2 minutes; the queue may be long");
          else { status.textContent = res.status + "…"; setTimeout(function () { poll(url); }, POLL_MS); }
        }).catch(function () { fail("lost the connection to the server"); });
      }
      fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (res) {
          if (!res.request_id) { fail(res.detail || "refused"); return; }
          poll(form.dataset.results.replace("REQUEST", encodeURIComponent(res.request_id)));
        }).catch(function () { fail("lost the connection to the server"); });
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
