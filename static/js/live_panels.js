// Panels that show state, kept in step with the page's one websocket.
//
// An element with an id and data-live-panel (the lifecycle graph, the runs table, the
// experiment rows of the list, the deployment page's rollouts and versions) is taken
// fresh from the server whenever the state it shows may have changed: the page itself is
// fetched again and each such element replaced by its new rendering. The server renders
// every panel from the same rows, so after a refresh no panel contradicts another.
//
// Where the news comes from:
// - the experiment page: its live view (live.js) owns the socket and re-emits every frame
//   as a "crucible:live" document event, and "crucible:state" when the badge changes;
// - other pages: <body data-live-socket="/ws/fleet/"> opens one socket here.
// run.progress frames move the progress cells of the run or experiment in place (no fetch).
// <time data-ago> elements say "just now", "3 min ago" and keep saying it correctly.
(function () {
  "use strict";

  let timer = null;
  let inFlight = false;
  let again = false;
  let refreshes = 0;

  function panels() {
    return Array.from(document.querySelectorAll("[data-live-panel][id]"));
  }

  // A panel a person is working in (an open dialog, a field being typed in) is left as it is;
  // ticked boxes are carried over instead (see refresh).
  function busy(el) {
    if (el.querySelector("dialog[open]")) return true;
    const active = document.activeElement;
    return !!(active && active !== document.body && el.contains(active) && active.matches("input:not([type=checkbox]):not([type=radio]), textarea, select"));
  }

  async function refresh() {
    timer = null;
    if (!panels().length) return;
    if (inFlight) { again = true; return; }
    inFlight = true;
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html", "X-Requested-With": "fetch" },
      });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const el of panels()) {
        const next = fresh.getElementById(el.id);
        if (!next || busy(el)) continue;
        const replacement = document.importNode(next, true);
        // Ticked boxes (experiments chosen to compare) stay ticked across a refresh.
        for (const box of el.querySelectorAll("input[type=checkbox][name]")) {
          const twin = replacement.querySelector('input[type=checkbox][name="' + CSS.escape(box.name) + '"][value="' + CSS.escape(box.value) + '"]');
          if (twin) twin.checked = box.checked;
        }
        el.replaceWith(replacement);
      }
      refreshes += 1;
      document.body.dataset.panelsRefreshed = String(refreshes);
      tickAgo();
      document.dispatchEvent(new CustomEvent("crucible:panels"));
    } catch (err) {
      /* the panels stay as they were; the next event tries again */
    } finally {
      inFlight = false;
      if (again) { again = false; schedule(); }
    }
  }

  // Several events in a burst (state, trigger, progress) cost one fetch.
  function schedule() {
    if (timer === null) timer = window.setTimeout(refresh, 150);
  }

  function percent(fraction) {
    return Math.round(Math.max(0, Math.min(1, Number(fraction) || 0)) * 100) + "%";
  }

  function onProgress(msg) {
    const selectors = [];
    if (msg.run_id !== undefined) selectors.push('[data-run-id="' + Number(msg.run_id) + '"] [data-run-progress]');
    if (msg.experiment_id !== undefined) {
      selectors.push('[data-live-panel] [data-experiment-id="' + Number(msg.experiment_id) + '"] [data-run-progress]');
    }
    for (const cell of document.querySelectorAll(selectors.join(", "))) {
      const bar = cell.querySelector("progress");
      if (bar) bar.value = Math.max(0, Math.min(1, Number(msg.progress) || 0));
      const text = cell.querySelector(".pct");
      if (text) text.textContent = percent(msg.progress);
      cell.dataset.progress = String(msg.progress);
    }
  }

  function onMessage(msg) {
    if (!msg || typeof msg.type !== "string") return;
    // pipeline.changed: an experiment this one depends on (or that depends on it) moved;
    // evaluation.changed: its held-out evaluation started, finished or failed.
    const refreshing = ["state.changed", "trigger.changed", "pipeline.changed", "evaluation.changed", "resync"];
    if (refreshing.includes(msg.type)) schedule();
    else if (msg.type === "run.progress") onProgress(msg);
  }

  // --- relative times ------------------------------------------------------------------
  const UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60]];

  function ago(date) {
    const seconds = (Date.now() - date.getTime()) / 1000;
    if (seconds < 60) return "just now";
    for (const [unit, size] of UNITS) {
      const n = Math.floor(seconds / size);
      if (n >= 1) return n + "\u00a0" + unit + (n === 1 ? "" : "s") + " ago";
    }
    return "just now";
  }

  function tickAgo() {
    for (const el of document.querySelectorAll("time[data-ago][datetime]")) {
      const date = new Date(el.getAttribute("datetime"));
      if (!Number.isNaN(date.getTime())) el.textContent = ago(date);
    }
  }

  window.setInterval(tickAgo, 15000);

  // --- where the events come from --------------------------------------------------------
  document.addEventListener("crucible:live", (event) => onMessage(event.detail));
  document.addEventListener("crucible:live-open", schedule);
  document.addEventListener("crucible:state", schedule);

  const path = document.body.dataset.liveSocket;
  if (path && window.crucibleSocket) {
    window.crucibleSocket(path, {
      onMessage: onMessage,
      // Events are not replayed: after every (re)connect the panels are taken fresh.
      onOpen: schedule,
      onStatus(text, kind) { document.body.dataset.liveStatus = kind; },
    });
  }

  window.crucibleLivePanels = { refresh: schedule, get refreshes() { return refreshes; } };
})();
