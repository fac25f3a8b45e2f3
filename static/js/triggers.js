// Trigger panels (experiment page and Triggers page): re-fetch the rows whenever a
// trigger changes, as told by the websocket of the page (experiment group or triggers group).
(function () {
  "use strict";
  const panel = document.getElementById("trigger-panel");
  if (!panel) return;
  const status = document.getElementById("triggers-live");
  let pending = null;

  function refresh() {
    // Several trigger events can arrive in one burst (fired, then acted): fetch once.
    if (pending) return;
    pending = window.setTimeout(() => {
      pending = null;
      fetch(panel.dataset.url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then((r) => {
          if (r.ok) return r.text();
          // Refused for good: say so rather than "Loading…" forever.
          if (r.status === 403) panel.textContent = "You may not view policy triggers.";
          return Promise.reject(r.status);
        })
        .then((html) => {
          panel.innerHTML = html;
          panel.dataset.refreshed = String(Date.now());
        })
        .catch(() => {});
    }, 150);
  }

  // The experiment page loads its rows after the page itself (they live in another app).
  if (panel.dataset.load === "now") refresh();

  const handlers = {
    onMessage(msg) {
      if (msg.type === "trigger.changed") refresh();
    },
    onOpen(reconnected) {
      if (reconnected) refresh();
    },
  };
  if (status && window.crucibleSocketStatus) handlers.onStatus = window.crucibleSocketStatus(status);
  // On the experiment page the live view already holds a socket to the same group and
  // re-emits its frames: one socket per page, not one per panel. It is a deferred script,
  // so whether it runs is known only once the document is parsed.
  function connect() {
    const charts = document.getElementById("live-charts");
    if (window.crucibleLive && charts && charts.dataset.wsPath === panel.dataset.wsPath) {
      document.addEventListener("crucible:live", (event) => {
        if (event.detail.type === "resync") handlers.onOpen(true);
        else handlers.onMessage(event.detail);
      });
      document.addEventListener("crucible:live-open", () => handlers.onOpen(true));
      return;
    }
    if (window.crucibleSocket) window.crucibleSocket(panel.dataset.wsPath, handlers);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", connect);
  else connect();
})();
