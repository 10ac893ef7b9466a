// pgsched console: live updates without a page reload, and a confirmation on dangerous forms.
// No framework and no build step (ADR 0030): the server renders every page; this script only
// re-fetches the page the operator is on when the event feed says something changed, and swaps
// in the regions marked data-live (tables, counters), leaving forms being typed into alone.
(function () {
  "use strict";

  var pending = null;
  var indicator = document.getElementById("live-state");

  function say(text, cls) {
    if (indicator) {
      indicator.textContent = text;
      indicator.className = cls;
    }
  }

  function refresh() {
    pending = null;
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) {
        if (response.redirected && response.url.indexOf("/ui/login") >= 0) {
          window.location.assign("/ui/login");
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
      .catch(function () { /* the next change tries again */ });
  }

  function schedule() {
    if (pending === null) pending = window.setTimeout(refresh, 250);
  }

  if (window.EventSource && document.querySelector("[data-live]")) {
    var source = new EventSource("/ui/live");
    source.addEventListener("open", function () { say("live", "live on"); });
    source.addEventListener("changes", schedule);
    source.addEventListener("signed-out", function () {
      source.close();
      window.location.assign("/ui/login");
    });
    source.addEventListener("error", function () { say("reconnecting", "live off"); });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();
