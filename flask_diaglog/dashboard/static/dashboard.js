// Polls the dashboard API once a second; renders with textContent only (no HTML injection).
(function () {
  "use strict";
  var api = document.body.getAttribute("data-api");
  var status = document.getElementById("status");

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text === undefined || text === null ? "" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function ms(v) { return v === undefined || v === null ? "" : (v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(1) + " ms"); }

  function render(state) {
    var body = document.querySelector("#inflight tbody");
    body.textContent = "";
    state.inflight.forEach(function (t) {
      var row = document.createElement("tr");
      if (t.hung) row.className = "hung";
      row.setAttribute("data-request-id", t.request_id || "");
      cell(row, t.kind); cell(row, t.method); cell(row, t.path, "path");
      cell(row, t.stage || "-", "stage"); cell(row, ms(t.elapsed_ms));
      cell(row, t.request_id); cell(row, t.job_id || "-"); cell(row, t.hung ? "yes (" + t.hung + ")" : "");
      body.appendChild(row);
    });
    document.getElementById("inflight-count").textContent = state.inflight.length;
    document.getElementById("inflight-empty").style.display = state.inflight.length ? "none" : "";

    var recent = document.querySelector("#recent tbody");
    recent.textContent = "";
    state.recent.forEach(function (r) {
      var row = document.createElement("tr");
      row.setAttribute("data-request-id", r.request_id || "");
      cell(row, new Date(r.ts * 1000).toLocaleTimeString());
      var st = r.status === undefined ? r.event : r.status;
      cell(row, st, r.status ? "s" + String(r.status)[0] : "");
      cell(row, r.method); cell(row, r.path, "path"); cell(row, ms(r.duration_ms));
      var stages = r.stages ? Object.keys(r.stages).map(function (k) { return k + " " + ms(r.stages[k]); }).join(", ") : "";
      cell(row, stages, "stages"); cell(row, r.request_id); cell(row, r.job_id || "-");
      recent.appendChild(row);
    });
    status.textContent = "updated " + new Date().toLocaleTimeString();
  }

  function poll() {
    fetch(api, { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(render)
      .catch(function (e) { status.textContent = "error: " + e.message; })
      .finally(function () { setTimeout(poll, 1000); });
  }
  poll();
})();
