// The Fleet page: state badges, progress and loss sparklines of every active experiment,
// moved by the /ws/fleet/ socket (state changes, metric batches, run progress).
(function () {
  "use strict";

  const root = document.getElementById("fleet");
  if (!root || !window.crucibleSocket) return;
  const tbody = document.getElementById("fleet-rows");
  const statusEl = document.getElementById("fleet-status");
  const FLEET_STATES = ["queued", "running", "evaluating", "promoting"];
  const KEEP = 200; // points a sparkline keeps; older ones scroll out
  const STATE_LABELS = {
    pending: "Pending", queued: "Queued", running: "Running", evaluating: "Evaluating",
    completed: "Completed (held for review)", promoting: "Promoting (canary)", deployed: "Deployed",
    failed: "Failed", cancelled: "Cancelled", rolled_back: "Rolled back",
  };
  const lines = new Map(); // experiment id -> {steps: [], values: [], svg}
  const dirty = new Set();
  let frame = false;
  let refreshTimer = null;

  function rowOf(id) {
    return document.getElementById("fleet-row-" + id);
  }

  // Read each row's sparkline from its data attributes (the server drew the history).
  function readRows() {
    lines.clear();
    for (const row of tbody.querySelectorAll("tr[data-experiment-id]")) {
      const svg = row.querySelector("svg.sparkline");
      if (!svg) continue;
      const steps = svg.dataset.steps ? svg.dataset.steps.split(",").map(Number) : [];
      const values = svg.dataset.values ? svg.dataset.values.split(",").map((v) => (v === "" ? null : Number(v))) : [];
      lines.set(row.dataset.experimentId, { steps: steps, values: values, svg: svg });
      draw(row.dataset.experimentId);
    }
  }

  function draw(id) {
    const line = lines.get(id);
    if (!line) return;
    const poly = line.svg.querySelector("polyline");
    const pts = [];
    let lo = Infinity, hi = -Infinity;
    for (const v of line.values) if (v !== null && isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const n = line.steps.length;
    if (n && lo !== Infinity) {
      const x0 = line.steps[0], x1 = line.steps[n - 1];
      const spanX = x1 - x0 || 1, spanY = hi - lo || 1;
      for (let i = 0; i < n; i++) {
        const v = line.values[i];
        if (v === null || !isFinite(v)) continue; // a gap is simply skipped in a sparkline
        const x = ((line.steps[i] - x0) / spanX) * 178 + 1;
        const y = 39 - ((v - lo) / spanY) * 38;
        pts.push(x.toFixed(1) + "," + y.toFixed(1));
      }
    }
    poly.setAttribute("points", pts.join(" "));
    line.svg.dataset.points = String(n);
  }

  function scheduleDraw(id) {
    dirty.add(id);
    if (frame) return;
    frame = true;
    window.requestAnimationFrame(() => {
      frame = false;
      for (const d of dirty) draw(d);
      dirty.clear();
    });
  }

  async function refreshRows() {
    refreshTimer = null;
    try {
      const response = await fetch(root.dataset.rowsUrl, { credentials: "same-origin" });
      if (!response.ok) return;
      tbody.innerHTML = await response.text();
      readRows();
    } catch (err) { /* keep the rows we have; the next event tries again */ }
  }

  function scheduleRefresh() {
    if (refreshTimer === null) refreshTimer = window.setTimeout(refreshRows, 400);
  }

  function onState(msg) {
    const row = rowOf(msg.experiment_id);
    if (!row || !FLEET_STATES.includes(msg.target)) {
      // An experiment joined or left the active set: the server knows the new list.
      scheduleRefresh();
    }
    if (!row) return;
    const badge = row.querySelector(".fleet-state .badge");
    if (badge) {
      badge.className = "badge state-" + msg.target;
      badge.dataset.state = msg.target;
      badge.textContent = STATE_LABELS[msg.target] || msg.target;
    }
  }

  function onBatch(msg) {
    const row = rowOf(msg.experiment_id);
    const line = lines.get(String(msg.experiment_id));
    if (!row || !line) return;
    const metric = row.dataset.metric;
    let last;
    for (const p of msg.points || []) {
      if (p.name !== metric) continue;
      if (line.steps.length && p.step <= line.steps[line.steps.length - 1]) continue;
      line.steps.push(p.step);
      line.values.push(p.value);
      last = p.value;
    }
    if (last === undefined) return;
    if (line.steps.length > KEEP) {
      line.steps.splice(0, line.steps.length - KEEP);
      line.values.splice(0, line.values.length - KEEP);
    }
    const cell = row.querySelector(".fleet-last code");
    if (cell) cell.textContent = last === null ? "—" : Number(last).toFixed(4);
    scheduleDraw(String(msg.experiment_id));
  }

  function onProgress(msg) {
    const row = rowOf(msg.experiment_id);
    if (!row) return;
    const fraction = Math.max(0, Math.min(1, Number(msg.progress) || 0));
    const bar = row.querySelector(".fleet-progress progress");
    if (bar) bar.value = fraction;
    const eta = row.querySelector(".fleet-eta");
    if (eta) {
      eta.textContent = Math.round(fraction * 100) + "%" +
        (msg.eta_seconds === null || msg.eta_seconds === undefined ? "" : " · ETA " + Math.round(msg.eta_seconds) + " s");
    }
  }

  readRows();
  window.crucibleFleet = window.crucibleSocket(root.dataset.wsPath, {
    onStatus: window.crucibleSocketStatus(statusEl),
    // Events before the subscription (or during a drop) are not replayed: take the rows fresh.
    onOpen: () => scheduleRefresh(),
    onMessage: (msg) => {
      if (msg.type === "state.changed") onState(msg);
      else if (msg.type === "metrics.batch") onBatch(msg);
      else if (msg.type === "run.progress") onProgress(msg);
    },
  });
})();
