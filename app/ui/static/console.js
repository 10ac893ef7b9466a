// pgsched console: live updates without a page reload, and a confirmation on dangerous forms.
// No framework and no build step (ADR 0030): the server renders every page; this script only
// re-fetches the page the operator is on when the event feed says something changed, and swaps
// in the regions marked data-live (tables, counters), leaving forms being typed into alone.
(function () {
  "use strict";

  // At most one re-fetch in flight, and one every MIN_GAP ms: a busy feed must not turn every
  // open tab into a stream of full page renders.
  var MIN_GAP = 2000;
  var timer = null;
  var inFlight = false;
  var again = false;
  var last = 0;
  var indicator = document.getElementById("live-state");
  // A page about one stream (a run's) only refreshes for that stream's events.
  var scoped = document.querySelector("[data-live][data-stream]");
  var stream = scoped ? scoped.getAttribute("data-stream") : null;

  function say(text, cls) {
    if (indicator) {
      indicator.textContent = text;
      indicator.className = cls;
    }
  }

  function toLogin() {
    window.location.assign("/ui/login");
  }

  function done() {
    inFlight = false;
    last = Date.now();
    if (again) {
      again = false;
      schedule();
    }
  }

  function refresh() {
    timer = null;
    inFlight = true;
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) {
        if (response.redirected && response.url.indexOf("/ui/login") >= 0) {
          toLogin();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (old) {
          var next = old.id ? fresh.getElementById(old.id) : null;
          if (next) old.replaceWith(document.importNode(next, true));
        });
        document.dispatchEvent(new CustomEvent("console:refreshed"));
      })
      .catch(function () { /* the next change tries again */ })
      .then(done);
  }

  function schedule() {
    if (inFlight) {
      again = true;  // one more after this one, with what it missed
      return;
    }
    if (timer === null) timer = window.setTimeout(refresh, Math.max(250, last + MIN_GAP - Date.now()));
  }

  function changed(event) {
    if (stream) {
      var mine = false;
      try {
        mine = JSON.parse(event.data).some(function (c) { return c.stream + ":" + c.stream_id === stream; });
      } catch (e) { mine = true; }
      if (!mine) return;
    }
    schedule();
  }

  if (window.EventSource && document.querySelector("[data-live]")) {
    var source = new EventSource("/ui/live");
    source.addEventListener("open", function () { say("live", "live on"); });
    source.addEventListener("changes", changed);
    source.addEventListener("signed-out", function () {
      source.close();
      toLogin();
    });
    source.addEventListener("error", function () {
      // CLOSED: the server refused the stream (a 303 to sign-in after a restart or expiry), and
      // EventSource will not retry; otherwise it reconnects by itself.
      if (source.readyState === EventSource.CLOSED) toLogin();
      else say("reconnecting", "live off");
    });
  } else if (indicator) {
    indicator.hidden = true;  // nothing on this page follows the feed
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    // A second click would post the form again (a second run from "Trigger now"): once sent,
    // its buttons wait for the next page. Forms handled by script (the API reference) stay.
    if (form.method.toLowerCase() === "post") {
      form.querySelectorAll("button[type=submit], button:not([type])").forEach(function (b) {
        window.setTimeout(function () { b.disabled = true; }, 0);
      });
    }
  });
})();
