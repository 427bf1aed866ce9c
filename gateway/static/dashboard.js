// SolRouter dashboard: the only script, vendored, no build step. It polls the JSON
// endpoint named by a `data-poll` element every two seconds and writes each field into
// the `data-field` elements inside it, so the overview follows requests as they settle.
"use strict";
(function () {
  const POLL_MS = 2000;
  function poll(section) {
    const url = section.getAttribute("data-poll");
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) { window.location.assign("/login"); return null; }
        return response.ok ? response.json() : null;
      })
      .then(function (figures) {
        if (!figures) { return; }
        section.querySelectorAll("[data-field]").forEach(function (element) {
          const value = figures[element.getAttribute("data-field")];
          if (typeof value === "string" && element.textContent !== value) { element.textContent = value; }
        });
      })
      .catch(function () { /* the next poll tries again */ })
      .finally(function () { window.setTimeout(function () { poll(section); }, POLL_MS); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(function (section) {
      window.setTimeout(function () { poll(section); }, POLL_MS);
    });
  });
})();
