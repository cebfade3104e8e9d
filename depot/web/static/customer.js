// The customer's page follows its parcel: on news from the depot, fetch the page again and
// swap its [data-live] parts. Without this script the page is the same, one reload behind.
(function () {
  "use strict";
  var url = document.body.getAttribute("data-follow");
  if (!url || !window.EventSource) { return; }
  var source = new EventSource(url);
  source.addEventListener("news", function () {
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) { return; }
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (part) {
          var next = fresh.querySelector('[data-live="' + part.getAttribute("data-live") + '"]');
          if (next) { part.replaceWith(document.importNode(next, true)); }
        });
      })
      .catch(function () { /* the next news tries again */ });
  });
})();
