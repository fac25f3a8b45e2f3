// The GPU page goes live: device rows follow the gpus.stats events of /ws/gpus/.
//
// Markup it expects (the page renders the first values):
//   <section id="gpus" data-ws-path="/ws/gpus/" [data-rows-url="<fragment url>"]>
//     <tr data-device-id="7"> … <span data-field="utilization_pct" data-format="pct">
//       <span class="gpu-meter"><span data-meter="utilization_pct"></span></span> …
// Event: {"type": "gpus.stats", "devices": [{"id": 7, "utilization_pct": 93.0,
//   "memory_used_mb": 40210, "memory_total_mb": 81559, "temperature_c": 61, ...}, ...]}
(function () {
  "use strict";

  const root = document.getElementById("gpus") || document.querySelector("[data-gpus-ws-path]");
  if (!root || !window.crucibleSocket) return;
  const path = root.dataset.wsPath || root.dataset.gpusWsPath || "/ws/gpus/";
  const statusEl = root.querySelector(".live-status");
  let refreshTimer = null;

  function format(value, kind) {
    if (value === null || value === undefined) return "—";
    const n = Number(value);
    switch (kind) {
      case "pct": return Math.round(n) + "%";
      case "gib": return (n / 1024).toFixed(1) + " GiB";
      case "c": return Math.round(n) + " °C";
      case "w": return Math.round(n) + " W";
      default: return String(value);
    }
  }

  function meterWidth(device, field) {
    if (field === "memory_used_mb" && device.memory_total_mb) {
      return (100 * device.memory_used_mb) / device.memory_total_mb;
    }
    return Number(device[field]) || 0;
  }

  async function refreshRows() {
    refreshTimer = null;
    const body = root.querySelector("tbody");
    if (!root.dataset.rowsUrl || !body) return;
    try {
      const response = await fetch(root.dataset.rowsUrl, { credentials: "same-origin" });
      if (response.ok) body.innerHTML = await response.text();
    } catch (err) { /* keep the rows; the next stats try again */ }
  }

  function onStats(msg) {
    let unknown = false;
    for (const device of msg.devices || []) {
      const row = root.querySelector('[data-device-id="' + String(device.id) + '"]');
      if (!row) { unknown = true; continue; }
      for (const el of row.querySelectorAll("[data-field]")) {
        const field = el.dataset.field;
        if (field in device) el.textContent = format(device[field], el.dataset.format);
      }
      for (const el of row.querySelectorAll("[data-meter]")) {
        const field = el.dataset.meter;
        if (field in device) el.style.width = Math.max(0, Math.min(100, meterWidth(device, field))) + "%";
      }
      row.dataset.updated = String(Date.now());
    }
    // A device the page has not drawn yet (a new worker): take fresh rows from the server.
    if (unknown && refreshTimer === null) refreshTimer = window.setTimeout(refreshRows, 400);
  }

  window.crucibleGpus = window.crucibleSocket(path, {
    onStatus: window.crucibleSocketStatus(statusEl),
    // Stats sent before the subscription (or during a drop) are not replayed: take the rows fresh.
    onOpen: () => refreshRows(),
    onMessage: (msg) => {
      if (msg.type === "gpus.stats" || msg.type === "gpu.stats") onStats(msg);
    },
  });
})();
