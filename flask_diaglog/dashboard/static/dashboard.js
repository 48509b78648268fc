// Live updates without a reload: the page fetches its own URL again and swaps in the elements
// marked data-live (matched by id). The server renders and escapes all values; the fetched
// document is parsed inert (DOMParser runs no script).
//
// When the app streams diaglog's events over Socket.IO, the body names the socket's path and
// namespace (data-live-socket, data-live-namespace): the page subscribes to the events it shows
// (data-live-follow: "all", or one request or job id) and refreshes on them, a burst of events
// costing one fetch; a slow poll (data-live-socket-interval) stays as a safety net. The socket is
// admitted like the page itself (the dashboard's cookie travels with the same-origin handshake,
// or loopback without a token): the page holds no live token. Until the socket is connected, and
// whenever it is down or refused, the page polls every data-live-interval ms.
// body[data-live-mode] says which is in use: "socket" or "poll".
//
// A refusal (401, 403: the cookie expired or the token changed; 429: too many refused tokens from
// this address) stops the refreshes until the page is loaded again: a page left open must not
// keep presenting a credential that is refused, which counts against its address.
//
// The page never fetches a URL with a token in it: a ?token= is taken out of what it fetches
// (the server redirects a tokened page to its URL without it; this also covers an address bar
// that still has one), so no access log records the token with every refresh.
(function () {
  "use strict";
  var DEBOUNCE_MS = 250;
  var body = document.body;
  var status = document.getElementById("status");
  var parser = new DOMParser();
  var pollPace = number(body.getAttribute("data-live-interval"), 2000);
  var socketPace = number(body.getAttribute("data-live-socket-interval"), 30000);
  var mode = "poll";
  var etag = null;
  var timer = null;     // the next poll
  var pending = null;   // a refresh asked for by events, waiting for the burst to end
  var busy = false;     // a fetch is in flight
  var again = false;    // and something asked for another one meanwhile
  var stopped = false;  // refused: no more refreshes

  // The page's own URL, without its fragment and without any token parameter.
  function own() {
    var url = new URL(window.location.href);
    if (url.searchParams.has("token")) {
      url.searchParams.delete("token");
      window.history.replaceState(window.history.state, "", url.href);
    }
    url.hash = "";
    return url.href;
  }

  function number(text, fallback) {
    var n = parseInt(text || "", 10);
    return isNaN(n) ? fallback : n;
  }

  function say(what, problem) {
    status.textContent = problem ? what : "live" + (mode === "socket" ? " (socket)" : "") + ", " +
      what + " " + new Date().toLocaleTimeString();
    status.className = problem ? "problem" : "muted";
  }

  function schedule() {
    clearTimeout(timer);
    if (stopped) return;
    var ms = mode === "socket" ? socketPace : pollPace;
    timer = ms > 0 ? setTimeout(refresh, ms) : null;
  }

  function swap(html) {
    var fresh = parser.parseFromString(html, "text/html");
    document.querySelectorAll("[data-live][id]").forEach(function (el) {
      var next = fresh.getElementById(el.id);
      if (next) el.replaceWith(document.importNode(next, true));
    });
    if (fresh.body) {
      pollPace = number(fresh.body.getAttribute("data-live-interval"), pollPace);
      socketPace = number(fresh.body.getAttribute("data-live-socket-interval"), socketPace);
    }
    say("updated");
  }

  function refresh() {
    clearTimeout(timer);
    if (stopped) return;
    if (busy) { again = true; return; }
    if (document.hidden) { schedule(); return; }  // caught up when the tab is shown again
    busy = true;
    var headers = {};
    if (etag) headers["If-None-Match"] = etag;
    fetch(own(), { credentials: "same-origin", cache: "no-store", headers: headers })
      .then(function (r) {
        if (r.status === 304) return null;  // nothing new: the server did not render the page
        if (r.status === 401 || r.status === 403 || r.status === 429) {
          stopped = true;
          throw new Error("HTTP " + r.status + ", refused: reload the page (with ?token= if it " +
            "asks for one)");
        }
        // A page of an id no line names yet is a 404 page: it is swapped in like any other.
        var page = (r.headers.get("Content-Type") || "").indexOf("text/html") === 0;
        if (!r.ok && !(r.status === 404 && page)) throw new Error("HTTP " + r.status);
        etag = r.headers.get("ETag");
        return r.text();
      })
      .then(function (html) {
        if (html !== null) swap(html);
        else say("checked");
      })
      .catch(function (e) { say("not updating: " + e.message, true); })
      .finally(function () {
        busy = false;
        if (again) { again = false; refresh(); } else schedule();
      });
  }

  function onEvent() {
    if (pending === null) {
      pending = setTimeout(function () { pending = null; refresh(); }, DEBOUNCE_MS);
    }
  }

  function setMode(next) {
    if (mode === next) return;
    mode = next;
    body.setAttribute("data-live-mode", next);
    schedule();
  }

  function connect() {
    var path = body.getAttribute("data-live-socket");
    if (!path || typeof window.io !== "function") return;
    var follow = body.getAttribute("data-live-follow") || "all";
    var rooms = follow === "all" ? { all: true } : { job_id: follow, request_id: follow };
    var socket = window.io(body.getAttribute("data-live-namespace") || "/diaglog", {
      path: path,
      reconnectionDelayMax: 10000,
    });
    socket.on("connect", function () {
      socket.emit("subscribe", rooms, function (ack) {
        if (!ack || !ack.ok) return;  // stays on the poll
        setMode("socket");
        refresh();  // what happened while the socket was down
      });
    });
    socket.on("event", onEvent);
    // Down (it reconnects by itself), refused, or closed by the server: poll meanwhile.
    socket.on("disconnect", function () { setMode("poll"); });
    socket.on("connect_error", function () { setMode("poll"); });
  }

  own();  // and out of the address bar
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refresh();
  });
  schedule();
  connect();
})();
