// The experiment page's history request, started while plotly.js still downloads and compiles.
//
// Loaded async right after #live-charts, so it runs as soon as it arrives; live.js
// (deferred, after plotly.js) takes the answer from window.crucibleHistoryPrefetch instead of
// asking again. The request is the one live.js would send first: every metric, its default
// point budget.
(function () {
  "use strict";
  const root = document.getElementById("live-charts");
  if (!root || !root.dataset.experimentId || !window.fetch) return;
  const url = (root.dataset.historyUrl || "/api/experiments/" + root.dataset.experimentId + "/metrics") +
    "?" + new URLSearchParams({ max_points: root.dataset.maxPoints || "2000" }).toString();
  window.crucibleHistoryPrefetch = fetch(url, {
    credentials: "same-origin",
    headers: { Accept: "application/json" },
  }).then((response) => {
    if (!response.ok) throw new Error("history: " + response.status + " " + response.statusText);
    return response.json();
  });
  // live.js reports a failure (and asks again); an unobserved rejection must not log twice.
  window.crucibleHistoryPrefetch.catch(() => {});
})();
