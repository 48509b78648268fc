// Live updates without a reload: every few seconds the page fetches its own URL again and
// swaps in the elements marked data-live (matched by id). The server renders and escapes all
// values; the fetched document is parsed inert (DOMParser runs no script).
(function () {
  "use strict";
  var interval = parseInt(document.body.getAttribute("data-live-interval") || "2000", 10);
  var status = document.getElementById("status");
  var parser = new DOMParser();
  var etag = null;

  function swap(html) {
    var fresh = parser.parseFromString(html, "text/html");
    document.querySelectorAll("[data-live][id]").forEach(function (el) {
      var next = fresh.getElementById(el.id);
      if (next) el.replaceWith(document.importNode(next, true));
    });
    var pace = fresh.body && fresh.body.getAttribute("data-live-interval");
    if (pace) interval = parseInt(pace, 10);
    status.textContent = "live, updated " + new Date().toLocaleTimeString();
    status.className = "muted";
  }

  function poll() {
    if (document.hidden) { setTimeout(poll, interval); return; }
    var headers = {};
    if (etag) headers["If-None-Match"] = etag;
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store", headers: headers })
      .then(function (r) {
        if (r.status === 304) return null;  // nothing new: the server did not render the page
        if (!r.ok) throw new Error("HTTP " + r.status);
        etag = r.headers.get("ETag");
        return r.text();
      })
      .then(function (html) {
        if (html !== null) swap(html);
        else status.textContent = "live, checked " + new Date().toLocaleTimeString();
      })
      .catch(function (e) { status.textContent = "not updating: " + e.message; status.className = "problem"; })
      .finally(function () { setTimeout(poll, interval); });
  }
  if (interval > 0) setTimeout(poll, interval);
})();
