// Live updates for the console: listen to the depot's server-sent events; on news, add the
// new timeline entries to the feed and refetch this page, swapping each [data-live] part.
// The pages work without this script; it only saves a reload.
(function () {
  "use strict";
  var url = document.body.getAttribute("data-live-url");
  if (!url || !window.EventSource) { return; }
  var light = document.getElementById("live-state");
  var feed = document.getElementById("live-feed");
  var refreshing = false, again = false;

  function say(on) {
    if (!light) { return; }
    light.className = "live " + (on ? "on" : "off");
    light.textContent = on ? "live" : "reconnecting";
  }

  function addToFeed(entries) {
    if (!feed) { return; }
    entries.forEach(function (e) {
      var li = document.createElement("li");
      li.className = "new";
      var a = document.createElement("a");
      a.href = "/console/parcels/" + encodeURIComponent(e.parcel);
      a.textContent = e.parcel;
      li.appendChild(a);
      li.appendChild(document.createTextNode(" " + e.step.replace(/_/g, " ") + " · " + e.device));
      li.setAttribute("data-timeline-id", e.id);
      feed.insertBefore(li, feed.firstChild);
    });
    while (feed.children.length > 30) { feed.removeChild(feed.lastChild); }
  }

  function refresh() {
    if (refreshing) { again = true; return; }
    var parts = document.querySelectorAll("[data-live]");
    if (!parts.length) { return; }
    refreshing = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Live": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) { return; }
        var fresh = new DOMParser().parseFromString(text, "text/html");
        parts.forEach(function (part) {
          var name = part.getAttribute("data-live");
          var next = fresh.querySelector('[data-live="' + name + '"]');
          if (next && part.contains(document.activeElement) === false) {
            part.replaceWith(document.importNode(next, true));
          }
        });
      })
      .catch(function () { /* the next news tries again */ })
      .then(function () {
        refreshing = false;
        if (again) { again = false; refresh(); }
      });
  }

  var source = new EventSource(url);
  source.addEventListener("open", function () { say(true); });
  source.addEventListener("error", function () { say(false); });
  source.addEventListener("news", function (message) {
    var news = JSON.parse(message.data);
    addToFeed(news.timeline || []);
    refresh();
  });
})();
