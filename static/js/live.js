// The live experiment page: history over HTTP, then live points over the websocket.
//
// Finds #live-charts[data-experiment-id][data-ws-path], draws Plotly charts from
// GET /api/experiments/<id>/metrics (downsampled, spikes kept), then appends every
// metric batch the worker flushes with Plotly.extendTraces. Nothing is lost on the way:
// - each frame says, per metric, which step it follows (ranges[name].after); a frame
//   that follows a step this page never drew means frames were missed, and the page
//   fetches the hole from the history endpoint before drawing the frame;
// - a {"type": "resync"} frame (the server's channel layer reconnected to Redis) and a
//   run that stops running make the page fetch everything after the steps it holds;
// - after a dropped socket it reconnects with jittered exponential backoff and first
//   fetches what it missed the same way. Zooming re-fetches the visible step range at full resolution. State
// changes update #state-badge and the action buttons; run.progress moves the
// progress bar. (The trigger panel is server-rendered rows refreshed by triggers.js.)
(function () {
  "use strict";

  const root = document.getElementById("live-charts");
  if (!root || !root.dataset.experimentId || !root.dataset.wsPath) return;
  if (!window.Plotly) {
    root.textContent = "Charts are unavailable: plotly.js did not load.";
    return;
  }

  const experimentId = root.dataset.experimentId;
  const historyUrl = root.dataset.historyUrl || "/api/experiments/" + experimentId + "/metrics";
  const MAX_POINTS = parseInt(root.dataset.maxPoints || "2000", 10);
  // A trace that grew this long from live appends is redrawn from (downsampled) history.
  const REDRAW_AFTER = parseInt(root.dataset.redrawAfter || "50000", 10);
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 30000;
  // Close codes of a refused socket: reconnecting cannot help.
  const REFUSED = { 4401: "Log in again to see live updates.", 4403: "You may not view this experiment.", 4404: "This experiment no longer exists." };
  const STATE_LABELS = {
    pending: "Pending", queued: "Queued", running: "Running", evaluating: "Evaluating",
    completed: "Completed (held for review)", promoting: "Promoting (canary)", deployed: "Deployed",
    failed: "Failed", cancelled: "Cancelled", rolled_back: "Rolled back",
  };
  // Which chart a metric goes to: losses together, quality scores together, the rest by prefix.
  const GROUPS = [
    { key: "loss", title: "Loss", test: (n) => /(^|[_/.])loss$/i.test(n) || /^loss/i.test(n) },
    { key: "quality", title: "Accuracy and F1", test: (n) => /(acc|accuracy|f1|precision|recall|auc)$/i.test(n) },
  ];
  // The run's own system metrics (sys/cpu_percent, sys/rss_mb, sys/gpu_util, sys/gpu_mem_mb,
  // sampled by the worker at the training step) go to the System panel, never among the curves.
  const SYSTEM_PREFIX = "sys/";
  const SYSTEM_GROUPS = [
    { key: "sys-util", title: "CPU and GPU utilisation (%)", test: (n) => /^sys\/(cpu_percent|gpu_util)$/.test(n) },
    { key: "sys-mem", title: "Memory (MB)", test: (n) => /^sys\/.*_mb$/.test(n) },
  ];
  function isSystem(name) {
    return name.startsWith(SYSTEM_PREFIX);
  }

  // --- the toolbar's choices, kept in the URL (?smooth=0.6&logy=1&x=relative&hide=f1&panels=metric)
  const query = new URLSearchParams(window.location.search);
  const X_MODES = { step: "step", wall: "wall time", relative: "relative time" };
  const view = {
    smooth: Math.min(0.99, Math.max(0, parseFloat(query.get("smooth") || "0") || 0)),
    logy: query.get("logy") === "1",
    x: X_MODES[query.get("x")] ? query.get("x") : "step",
    // System metrics are not the picker's to hide (an old link may still name one).
    hidden: new Set((query.get("hide") || "").split(",").filter((n) => n && !isSystem(n))),
    panels: query.get("panels") === "metric" ? "metric" : "group",
  };
  // One colour per metric, the same for its raw and its smoothed line.
  const PALETTE = ["#4f46e5", "#d97706", "#0891b2", "#15803d", "#dc2626", "#7c3aed", "#475569", "#db2777"];
  let colours = 0;
  let stepTimes = null; // {steps: [], times: []} once fetched: labels the step axis in time

  // WebGL draws long traces far faster; without it (some headless browsers) SVG still works.
  const TRACE_TYPE = hasWebGL() ? "scattergl" : "scatter";

  // --- state ---------------------------------------------------------------------------
  const charts = new Map(); // group key -> {key, el, names: [], zoomed: bool}
  const traces = new Map(); // metric name -> {chart, index, lastStep, length}
  let lastStep = null; // the furthest step seen in any series: since_step after a reconnect
  let lastRunId = null;
  let socket = null;
  let attempt = 0;
  let ready = false; // history drawn: live points may be appended
  let buffered = []; // batches that arrived while history was loading
  let pending = new Map(); // name -> {x: [], y: []} waiting for the next animation frame
  let frameRequested = false;
  let reloadTimer = null;
  let stopped = false;
  let actionsRequest = 0;
  let gapsFilled = 0; // catch-ups done (a number for people and tests to watch)

  // --- layout ----------------------------------------------------------------------------
  const status = el("div", { class: "live-status muted small", role: "status" }, "connecting…");
  const progressBox = ensureProgress();
  const chartsBox = el("div", { class: "live-chart-grid" });
  const empty = el("p", { class: "muted live-empty" }, "No metrics yet: charts appear when the run logs its first points.");
  const systemBox = el("div", { class: "live-chart-grid", id: "system-charts" });
  const systemPanel = el("section", { class: "system-panel", id: "system-panel", "aria-labelledby": "system-title", hidden: "" }, [
    el("h3", { id: "system-title" }, "System"),
    el("p", { class: "muted small" }, "CPU (% of one core, summed over the run's processes), memory, and the leased GPU, sampled by the worker at the training step."),
    systemBox,
  ]);
  root.classList.add("card");
  const toolbar = buildToolbar();
  root.append(el("div", { class: "card-head" }, [el("h2", {}, "Training curves"), status]), toolbar, progressBox, chartsBox, empty, systemPanel);
  addStylesheet();

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (typeof children === "string") node.textContent = children;
    else if (children) node.append(...children);
    return node;
  }

  function hasWebGL() {
    try {
      return !!document.createElement("canvas").getContext("webgl");
    } catch (e) {
      return false;
    }
  }

  function addStylesheet() {
    // Names may carry collectstatic's content hash (js/live.0123456789ab.js).
    const script = document.currentScript || document.querySelector('script[src*="js/live."]');
    if (!script || document.querySelector('link[href*="css/live."]')) return;
    const href = script.src.replace(/js\/live(\.[0-9a-f]{12})?\.js(\?.*)?$/, "css/live.css");
    if (href === script.src) return;
    document.head.append(el("link", { rel: "stylesheet", href: href }));
  }

  function ensureProgress() {
    let box = document.getElementById("run-progress");
    if (!box) {
      box = el("div", { id: "run-progress", class: "run-progress", hidden: "" }, [
        el("progress", { max: "1", value: "0" }),
        el("span", { class: "run-progress-text small muted" }),
      ]);
    }
    return box;
  }

  function setStatus(text, kind) {
    status.textContent = text;
    status.dataset.status = kind;
    root.dataset.liveStatus = kind;
  }

  // --- charts ----------------------------------------------------------------------------
  function groupOf(name) {
    if (isSystem(name)) {
      if (view.panels === "metric") return { key: "sys-m-" + name, title: name, system: true };
      const g = SYSTEM_GROUPS.find((group) => group.test(name));
      return g ? { ...g, system: true } : { key: "sys-other", title: "System", system: true };
    }
    if (view.panels === "metric") return { key: "m-" + name, title: name };
    for (const g of GROUPS) if (g.test(name)) return g;
    const prefix = name.includes("/") ? name.split("/")[0] : "other";
    return { key: "g-" + prefix, title: prefix === "other" ? "Other metrics" : prefix };
  }

  function chartFor(name) {
    const group = groupOf(name);
    let chart = charts.get(group.key);
    if (!chart) {
      const div = el("div", { class: "live-chart", id: "chart-" + group.key.replace(/[^a-z0-9_-]/gi, "_") });
      if (group.system) {
        systemBox.append(div);
        systemPanel.hidden = false;
      } else {
        chartsBox.append(div);
      }
      chart = { key: group.key, el: div, names: [], zoomed: false };
      charts.set(group.key, chart);
      Plotly.newPlot(div, [], {
        title: { text: group.title, font: { size: 14 } },
        margin: { l: 50, r: 15, t: 36, b: 36 },
        // The page's own colours (dark mode too): transparent background, the text colour.
        paper_bgcolor: "rgba(0,0,0,0)",
        plot_bgcolor: "rgba(0,0,0,0)",
        font: { color: getComputedStyle(document.body).color },
        // One hover box per step listing every series: overlapping lines told apart.
        hovermode: "x unified",
        height: 300,
        xaxis: { title: { text: xTitle() } },
        yaxis: { type: view.logy ? "log" : "linear" },
        legend: { orientation: "h", y: -0.2 },
        uirevision: "keep", // user zoom survives data updates
      }, { responsive: true, displaylogo: false });
      div.on("plotly_relayout", (ev) => {
        onRelayout(chart, ev);
        // A zoom or autorange moves the visible steps: their time labels follow.
        if (Object.keys(ev).some((k) => k.startsWith("xaxis.range") || k === "xaxis.autorange")) scheduleView();
      });
      // A new chart changes the grid's columns: every chart follows its own box's size.
      if (window.ResizeObserver) new ResizeObserver(() => Plotly.Plots.resize(div)).observe(div);
    }
    return chart;
  }

  function ensureTrace(name) {
    let trace = traces.get(name);
    if (trace) return trace;
    const chart = chartFor(name);
    chart.names.push(name);
    // Indices never move: smoothed companions are only ever added after, never removed.
    const colour = PALETTE[colours++ % PALETTE.length];
    trace = { chart: chart, index: chart.el.data.length, lastStep: null, length: 0, colour: colour, smoothIndex: null };
    traces.set(name, trace);
    // connectgaps false: a NaN the run logged (null here) shows as a gap, never hidden.
    Plotly.addTraces(chart.el, {
      x: [], y: [], name: name, mode: "lines", type: TRACE_TYPE, connectgaps: false, legendgroup: name,
      line: { color: colour, width: 1.5 }, visible: !view.hidden.has(name),
    });
    // The picker chooses among training curves; the System panel always shows its own.
    if (!isSystem(name)) addMetricChoice(name);
    scheduleView();
    chart.el.dataset.metrics = chart.names.join(",");
    if (!isSystem(name)) empty.hidden = true;
    return trace;
  }

  function setSeries(name, steps, values) {
    const trace = ensureTrace(name);
    Plotly.restyle(trace.chart.el, { x: [steps], y: [values] }, [trace.index]);
    trace.length = steps.length;
    scheduleView();
    if (steps.length) trace.lastStep = Math.max(trace.lastStep ?? -1, steps[steps.length - 1]);
  }

  function noteStep(step) {
    if (lastStep === null || step > lastStep) lastStep = step;
  }

  // --- history over HTTP -------------------------------------------------------------------
  async function fetchHistory(params) {
    const query = new URLSearchParams({ max_points: String(MAX_POINTS), ...params });
    const response = await fetch(historyUrl + "?" + query.toString(), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error("history: " + response.status + " " + detail);
    }
    return response.json();
  }

  // Losses first, then quality scores, then the rest: the charts appear in that order.
  function rank(name) {
    if (isSystem(name)) return GROUPS.length + 1;
    const i = GROUPS.findIndex((g) => g.test(name));
    return i === -1 ? GROUPS.length : i;
  }

  // The newest points the server rendered into the page: drawn at once, before any request.
  function drawInitial() {
    const script = root.dataset.initialSeries && document.getElementById(root.dataset.initialSeries);
    if (!script) return;
    let body;
    try { body = JSON.parse(script.textContent); } catch (e) { return; }
    if (!body || !body.series) return;
    const entries = Object.entries(body.series).filter(([, s]) => s.steps.length);
    entries.sort((a, b) => rank(a[0]) - rank(b[0]) || (a[0] < b[0] ? -1 : 1));
    for (const [name, s] of entries) setSeries(name, s.steps, s.values);
    if (body.last_step !== null && body.last_step !== undefined) noteStep(body.last_step);
  }

  // The first load takes the answer live_prefetch.js asked for while plotly.js loaded.
  function firstHistory() {
    const prefetched = window.crucibleHistoryPrefetch;
    window.crucibleHistoryPrefetch = null;
    return prefetched ? prefetched.catch(() => fetchHistory({})) : fetchHistory({});
  }

  async function loadAll(first) {
    const body = await (first ? firstHistory() : fetchHistory({}));
    const entries = Object.entries(body.series).sort((a, b) => rank(a[0]) - rank(b[0]) || (a[0] < b[0] ? -1 : 1));
    for (const [name, s] of entries) setSeries(name, s.steps, s.values);
    if (body.last_step !== null) noteStep(body.last_step);
  }

  // After a reconnect, a resync or a detected hole: only what the page misses, appended
  // like live points. names: the metrics to fetch (all when absent). Each metric may stop
  // at another step (validation metrics are logged less often): the fetch starts after
  // the lowest step held, and points a trace already holds are skipped.
  async function fillGap(names) {
    if (lastStep === null && !names) return loadAll();
    const held = (names || Array.from(traces.keys())).map((n) => traces.get(n));
    const params = {};
    if (names) params.names = names.join(",");
    if (held.length && held.every((t) => t && t.lastStep !== null)) {
      params.since_step = String(Math.min(...held.map((t) => t.lastStep)));
    }
    const body = await fetchHistory(params);
    for (const [name, s] of Object.entries(body.series)) {
      if (s.downsampled) {
        // The gap itself was too long to send in full: redraw from history instead.
        return loadAll();
      }
      for (let i = 0; i < s.steps.length; i++) queuePoint(name, s.steps[i], s.values[i]);
    }
    flushPending();
    gapsFilled += 1;
    root.dataset.gapsFilled = String(gapsFilled);
  }

  // Fetch the missing steps, holding live frames back meanwhile (they are drawn after,
  // in order: a frame drawn before the hole is filled would hide the hole's points). One
  // catch-up at a time; one asked for during another runs right after it.
  let catchingUp = null;
  let again = null; // null: none asked for; {all: bool, names: Set}
  function catchUp(names) {
    if (catchingUp) {
      again = again || { all: false, names: new Set() };
      if (!names) again.all = true;
      else for (const n of names) again.names.add(n);
      return catchingUp;
    }
    ready = false;
    catchingUp = (async () => {
      try {
        await fillGap(names);
      } catch (err) {
        setStatus("could not load history: " + err.message, "error");
      }
      catchingUp = null;
      if (again) {
        const next = again.all ? undefined : Array.from(again.names);
        again = null;
        return catchUp(next);
      }
      ready = true;
      const early = buffered;
      buffered = [];
      for (const batch of early) onBatch(batch);
      flushPending();
    })();
    return catchingUp;
  }

  // The metrics of a frame whose steps do not follow what this page holds.
  function holesIn(batch) {
    const missing = [];
    for (const [name, r] of Object.entries(batch.ranges || {})) {
      const trace = traces.get(name);
      const have = trace ? trace.lastStep : null;
      if (r.after === null || r.after === undefined) {
        // The first frame of this metric from its publisher: a hole only if steps are
        // missing before it that the page never saw (a publisher that restarted).
        if (have !== null && r.first > have + 1) missing.push(name);
      } else if (have === null || r.after > have) {
        missing.push(name);
      }
    }
    return missing;
  }

  async function reloadAll() {
    reloadTimer = null;
    try {
      await loadAll();
      for (const chart of charts.values()) chart.zoomed = false;
    } catch (err) {
      setStatus("could not load history: " + err.message, "error");
    }
  }

  function scheduleReload() {
    if (reloadTimer === null) reloadTimer = window.setTimeout(reloadAll, 300);
  }

  // Zoom: fetch the visible step range at full resolution; back to autorange: full history.
  async function onRelayout(chart, ev) {
    if (ev["xaxis.autorange"]) {
      if (chart.zoomed) {
        chart.zoomed = false;
        const body = await fetchHistory({ names: chart.names.join(",") });
        for (const [name, s] of Object.entries(body.series)) setSeries(name, s.steps, s.values);
      }
      return;
    }
    const lo = ev["xaxis.range[0]"] ?? (ev["xaxis.range"] || [])[0];
    const hi = ev["xaxis.range[1]"] ?? (ev["xaxis.range"] || [])[1];
    if (lo === undefined || hi === undefined) return;
    chart.zoomed = true;
    const params = {
      names: chart.names.join(","),
      start_step: String(Math.max(0, Math.floor(lo))),
      end_step: String(Math.max(0, Math.ceil(hi))),
    };
    try {
      const body = await fetchHistory(params);
      for (const [name, s] of Object.entries(body.series)) {
        const trace = traces.get(name);
        if (!trace) continue;
        Plotly.restyle(chart.el, { x: [s.steps], y: [s.values] }, [trace.index]);
        trace.length = s.steps.length;
      }
      chart.el.dataset.zoomed = params.start_step + "-" + params.end_step;
      scheduleView();
    } catch (err) {
      setStatus("zoom: " + err.message, "error");
    }
  }

  // --- the toolbar: smoothing, log y, x axis, panels, metrics ------------------------------
  function buildToolbar() {
    const bar = el("div", { class: "chart-toolbar", id: "chart-toolbar", role: "group", "aria-label": "Chart options" });
    const smooth = el("input", { type: "range", id: "chart-smooth", min: "0", max: "0.99", step: "0.01", value: String(view.smooth), "aria-label": "Smoothing" });
    const smoothOut = el("output", { for: "chart-smooth", class: "small" }, view.smooth.toFixed(2));
    smooth.addEventListener("input", () => {
      view.smooth = Number(smooth.value);
      smoothOut.textContent = view.smooth.toFixed(2);
      saveView();
      scheduleView(0);
    });
    const logy = el("input", { type: "checkbox", id: "chart-logy" });
    logy.checked = view.logy;
    logy.addEventListener("change", () => {
      view.logy = logy.checked;
      saveView();
      for (const chart of charts.values()) Plotly.relayout(chart.el, { "yaxis.type": view.logy ? "log" : "linear" });
    });
    const xSelect = el("select", { id: "chart-x", "aria-label": "x axis" },
      Object.entries(X_MODES).map(([v, label]) => el("option", { value: v }, label)));
    xSelect.value = view.x;
    xSelect.addEventListener("change", () => {
      view.x = xSelect.value;
      saveView();
      scheduleView(0);
    });
    const panels = el("input", { type: "checkbox", id: "chart-panels" });
    panels.checked = view.panels === "metric";
    // The charts are laid out once: a new arrangement is a fresh draw of the page.
    panels.addEventListener("change", () => {
      view.panels = panels.checked ? "metric" : "group";
      saveView();
      window.location.reload();
    });
    bar.append(
      el("label", { class: "inline-label" }, [document.createTextNode("Smoothing "), smooth, smoothOut]),
      el("label", { class: "inline-label" }, [logy, document.createTextNode(" log y")]),
      el("label", { class: "inline-label" }, [document.createTextNode("x "), xSelect]),
      el("label", { class: "inline-label" }, [panels, document.createTextNode(" one panel per metric")]),
      el("span", { class: "chart-metrics", id: "chart-metrics", role: "group", "aria-label": "Metrics shown" }),
    );
    return bar;
  }

  function addMetricChoice(name) {
    const box = toolbar.querySelector("#chart-metrics");
    const input = el("input", { type: "checkbox", "data-metric": name });
    input.checked = !view.hidden.has(name);
    input.addEventListener("change", () => {
      if (input.checked) view.hidden.delete(name); else view.hidden.add(name);
      saveView();
      const trace = traces.get(name);
      const shown = input.checked;
      Plotly.restyle(trace.chart.el, { visible: shown }, [trace.index]);
      if (trace.smoothIndex !== null) Plotly.restyle(trace.chart.el, { visible: shown && view.smooth > 0 }, [trace.smoothIndex]);
    });
    box.append(el("label", { class: "inline-label metric-choice" }, [input, document.createTextNode(" " + name)]));
  }

  function saveView() {
    const q = new URLSearchParams(window.location.search);
    const set = (key, value, fallback) => (value === fallback ? q.delete(key) : q.set(key, value));
    set("smooth", view.smooth ? String(view.smooth) : "", "");
    set("logy", view.logy ? "1" : "", "");
    set("x", view.x, "step");
    set("hide", Array.from(view.hidden).sort().join(","), "");
    set("panels", view.panels, "group");
    const text = q.toString();
    window.history.replaceState(window.history.state, "", window.location.pathname + (text ? "?" + text : "") + window.location.hash);
  }

  function xTitle() {
    return view.x === "step" ? "step" : X_MODES[view.x] + " (by step)";
  }

  // Smoothing and the time labels are derived from what the charts hold: recomputed after
  // the data moved, at most a few times a second.
  let viewTimer = null;
  function scheduleView(delay) {
    if (viewTimer !== null) return;
    viewTimer = window.setTimeout(() => {
      viewTimer = null;
      applySmoothing();
      applyXAxis();
    }, delay === undefined ? 250 : delay);
  }

  // An exponential moving average with TensorBoard's debiasing (early points are not pulled to 0);
  // a gap (null) stays a gap.
  function ema(values, weight) {
    const out = new Array(values.length);
    let last = 0;
    let n = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || v === undefined || !Number.isFinite(v)) { out[i] = null; continue; }
      last = last * weight + (1 - weight) * v;
      n += 1;
      out[i] = last / (1 - Math.pow(weight, n));
    }
    return out;
  }

  function applySmoothing() {
    for (const [name, trace] of traces) {
      const el = trace.chart.el;
      const shown = !view.hidden.has(name);
      if (view.smooth <= 0) {
        if (trace.smoothIndex !== null) {
          Plotly.restyle(el, { visible: false }, [trace.smoothIndex]);
          Plotly.restyle(el, { opacity: 1, showlegend: true }, [trace.index]);
        }
        continue;
      }
      const raw = el.data[trace.index];
      const xs = Array.from(raw.x || []);
      const ys = ema(Array.from(raw.y || []), view.smooth);
      if (trace.smoothIndex === null) {
        trace.smoothIndex = el.data.length;
        Plotly.addTraces(el, {
          x: xs, y: ys, name: name + " (smoothed)", mode: "lines", type: TRACE_TYPE, connectgaps: false,
          legendgroup: name, line: { color: trace.colour, width: 2 }, visible: shown, hoverinfo: "x+y+name",
        });
      } else {
        Plotly.restyle(el, { x: [xs], y: [ys], visible: shown }, [trace.smoothIndex]);
      }
      // The raw series stays, faint, behind its smoothed line.
      Plotly.restyle(el, { opacity: 0.25, showlegend: false }, [trace.index]);
    }
    root.dataset.smooth = String(view.smooth);
  }

  function noteTime(step, wallTime) {
    if (!stepTimes || typeof wallTime !== "number") return;
    const n = stepTimes.steps.length;
    if (n && step <= stepTimes.steps[n - 1]) return;
    stepTimes.steps.push(step);
    stepTimes.times.push(wallTime);
  }

  let stepTimesLoading = null;
  function loadStepTimes() {
    if (stepTimes || stepTimesLoading) return stepTimesLoading;
    const url = historyUrl.replace(/\/metrics$/, "/step-times");
    stepTimesLoading = fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error("step times: " + r.status))))
      .then((body) => {
        stepTimes = { steps: body.steps, times: body.wall_times };
        stepTimesLoading = null;
        scheduleView(0);
      })
      .catch((err) => { stepTimesLoading = null; setStatus(err.message, "error"); });
    return stepTimesLoading;
  }

  // The Unix time a step was logged, between the two nearest known steps.
  function timeAt(step) {
    const s = stepTimes.steps;
    const t = stepTimes.times;
    if (!s.length) return null;
    if (step <= s[0]) return t[0];
    if (step >= s[s.length - 1]) return t[t.length - 1];
    let lo = 0;
    let hi = s.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (s[mid] <= step) lo = mid; else hi = mid;
    }
    return t[lo] + ((step - s[lo]) / (s[hi] - s[lo])) * (t[hi] - t[lo]);
  }

  function formatTime(seconds) {
    if (view.x === "wall") {
      const d = new Date(seconds * 1000);
      return d.toTimeString().slice(0, 8);
    }
    const rel = seconds - stepTimes.times[0];
    return rel < 60 ? Math.round(rel) + " s" : formatDuration(rel);
  }

  // wall / relative: the axis keeps steps (what every point is keyed by) and labels a few
  // of them with the time they were logged.
  function applyXAxis() {
    root.dataset.xAxis = view.x;
    for (const chart of charts.values()) {
      // A panel whose every metric is unticked in the picker is folded away.
      chart.el.hidden = chart.names.length > 0 && chart.names.every((n) => view.hidden.has(n));
      if (view.x === "step") {
        if (chart.el.dataset.xTicks) {
          delete chart.el.dataset.xTicks;
          Plotly.relayout(chart.el, { "xaxis.tickmode": "auto", "xaxis.title.text": xTitle() });
        }
        continue;
      }
      if (!stepTimes) { loadStepTimes(); return; }
      if (!stepTimes.steps.length) continue;
      const range = (chart.el.layout && chart.el.layout.xaxis && chart.el.layout.xaxis.range) || [stepTimes.steps[0], stepTimes.steps[stepTimes.steps.length - 1]];
      const lo = Math.max(0, Math.ceil(range[0]));
      const hi = Math.max(lo, Math.floor(range[1]));
      const count = hi > lo ? 6 : 1;
      const vals = [];
      for (let i = 0; i < count; i++) {
        const v = Math.round(lo + ((hi - lo) * i) / Math.max(1, count - 1));
        if (!vals.includes(v)) vals.push(v);
      }
      const text = vals.map((v) => formatTime(timeAt(v)));
      const key = view.x + ":" + vals.join(",") + ":" + text.join(",");
      if (chart.el.dataset.xTicks === key) continue;
      chart.el.dataset.xTicks = key;
      Plotly.relayout(chart.el, {
        "xaxis.tickmode": "array", "xaxis.tickvals": vals, "xaxis.ticktext": text, "xaxis.title.text": xTitle(),
      });
    }
  }

  // --- live points -------------------------------------------------------------------------
  function queuePoint(name, step, value) {
    const trace = ensureTrace(name);
    // Already drawn (history and socket overlap by design): skip.
    if (trace.lastStep !== null && step <= trace.lastStep) return;
    trace.lastStep = step;
    noteStep(step);
    let p = pending.get(name);
    if (!p) pending.set(name, (p = { x: [], y: [] }));
    p.x.push(step);
    p.y.push(value === undefined ? null : value);
  }

  // Many batches per frame become one extendTraces per chart: the browser keeps up with
  // tens of thousands of points a second.
  function flushPending() {
    frameRequested = false;
    if (!pending.size) return;
    const byChart = new Map();
    for (const [name, p] of pending) {
      const trace = traces.get(name);
      let c = byChart.get(trace.chart);
      if (!c) byChart.set(trace.chart, (c = { x: [], y: [], idx: [] }));
      c.x.push(p.x); c.y.push(p.y); c.idx.push(trace.index);
      trace.length += p.x.length;
      if (trace.length > REDRAW_AFTER && !trace.chart.zoomed) scheduleReload();
    }
    pending = new Map();
    for (const [chart, c] of byChart) Plotly.extendTraces(chart.el, { x: c.x, y: c.y }, c.idx);
    root.dataset.lastStep = lastStep === null ? "" : String(lastStep);
    scheduleView();
  }

  function onBatch(batch) {
    if (!ready) { buffered.push(batch); return; }
    const points = batch.points || [];
    // A new attempt that resumed from a checkpoint logs steps we already drew: redraw.
    if (lastRunId !== null && batch.run_id !== lastRunId && points.some((p) => {
      const t = traces.get(p.name);
      return t && t.lastStep !== null && p.step <= t.lastStep;
    })) {
      lastRunId = batch.run_id;
      scheduleReload();
      return;
    }
    lastRunId = batch.run_id;
    const holes = holesIn(batch);
    if (holes.length) {
      buffered.push(batch);
      catchUp(holes);
      return;
    }
    for (const p of points) {
      queuePoint(p.name, p.step, p.value);
      noteTime(p.step, p.wall_time);
    }
    if (!frameRequested) {
      frameRequested = true;
      window.requestAnimationFrame(flushPending);
    }
  }

  // --- state, actions, progress, triggers ----------------------------------------------------
  function setBadge(state) {
    const badge = document.getElementById("state-badge");
    if (!badge || !state || badge.dataset.state === state) return;
    badge.dataset.state = state;
    badge.className = badge.className.replace(/\bstate-\S+/g, "").trim() + " state-" + state;
    badge.textContent = STATE_LABELS[state] || state;
    // The other panels (graph, runs, "state since") follow the badge (live_panels.js).
    document.dispatchEvent(new CustomEvent("crucible:state", { detail: { state: state } }));
  }

  function onStateChanged(msg) {
    setBadge(msg.target);
    refreshActions();
    appendHistoryRow(msg);
    // Training finished: the last heartbeat may have come before the last step.
    if (msg.source === "running" && msg.target === "evaluating") {
      onProgress({ progress: 1, eta_seconds: null, step: lastStep });
    }
    flushPending();
    // A run that stopped sends no more frames: a lost last frame would show no hole, so
    // the tail is fetched once.
    if (msg.source === "running") catchUp();
  }

  async function refreshActions() {
    const slot = document.querySelector("#actions[data-fragment-url]") || document.querySelector("#actions-slot[data-url]");
    if (!slot) return;
    const url = slot.dataset.fragmentUrl || slot.dataset.url;
    // Only the latest request may paint: an older answer arriving late would undo a newer state.
    const mine = ++actionsRequest;
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!response.ok || mine !== actionsRequest) return;
      const html = await response.text();
      if (mine !== actionsRequest) return;
      slot.innerHTML = html;
      // The fragment carries the state it was rendered for: a change that happened before
      // the socket subscribed (between page render and connect) shows up here.
      const current = slot.querySelector("[data-state]");
      if (current) setBadge(current.dataset.state);
    } catch (err) { /* the buttons stay as they were; the next change tries again */ }
  }

  function appendHistoryRow(msg) {
    const body = document.querySelector("#history-table tbody");
    if (!body) return;
    const emptyRow = body.querySelector(".empty-row");
    if (emptyRow) emptyRow.remove();
    const badge = (s) => el("span", { class: "badge state-" + s, "data-state": s }, STATE_LABELS[s] || s);
    const now = new Date();
    body.append(el("tr", { "data-event": msg.event }, [
      el("td", {}, [el("time", { datetime: now.toISOString() }, now.toISOString().slice(0, 19).replace("T", " "))]),
      el("td", {}, [el("strong", {}, msg.event)]),
      el("td", {}, [badge(msg.source), document.createTextNode(" → "), badge(msg.target)]),
      el("td", { class: "actor" }, msg.actor || ""),
      el("td", {}, ""),
    ]));
  }

  function onProgress(msg) {
    progressBox.hidden = false;
    const bar = progressBox.querySelector("progress");
    const text = progressBox.querySelector(".run-progress-text") || progressBox;
    const fraction = Math.max(0, Math.min(1, Number(msg.progress) || 0));
    if (bar) bar.value = fraction;
    let line = Math.round(fraction * 100) + "%";
    if (msg.step !== undefined && msg.step !== null) line += " · step " + msg.step;
    if (msg.eta_seconds !== null && msg.eta_seconds !== undefined) line += " · ETA " + formatDuration(msg.eta_seconds);
    text.textContent = line;
    progressBox.dataset.progress = String(fraction);
  }

  function formatDuration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  // --- the socket ----------------------------------------------------------------------------
  function connect() {
    if (stopped) return;
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + window.location.host + root.dataset.wsPath);
    socket = ws;
    ready = false;
    buffered = [];
    ws.onopen = async () => {
      setStatus("live", "live");
      // Subscribed first, then the gap since the steps drawn: what arrives meanwhile is
      // buffered, and what was flushed before the subscription comes over HTTP.
      await initialHistory;
      if (socket !== ws) return;
      const reconnected = attempt > 0;
      attempt = 0;
      await catchUp();
      // State changes are not replayed either: take the current state and buttons fresh.
      await refreshActions();
      document.dispatchEvent(new CustomEvent("crucible:live-open"));
    };
    ws.onmessage = (event) => {
      let msg;
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      // One socket per page: the other panels (triggers, runs, graph, run log) listen to its frames.
      if (msg && typeof msg.type === "string") document.dispatchEvent(new CustomEvent("crucible:live", { detail: msg }));
      switch (msg.type) {
        case "metrics.batch": onBatch(msg); break;
        case "state.changed": onStateChanged(msg); break;
        case "run.progress": onProgress(msg); break;
        case "resync":
          // The server's channel layer lost its connection: events may be gone. Fetch the
          // points and take the state and buttons fresh.
          catchUp();
          refreshActions();
          break;
        default: break; // pong, error and future types need nothing here
      }
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      if (REFUSED[event.code]) {
        stopped = true;
        setStatus(REFUSED[event.code], "refused");
        return;
      }
      attempt += 1;
      // Exponential backoff with jitter, so a restarted server is not stormed by every page.
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (attempt - 1)) * (0.75 + Math.random() / 2);
      setStatus("reconnecting in " + Math.round(delay / 1000) + " s…", "reconnecting");
      window.setTimeout(connect, delay);
    };
  }

  // Handles for people and browser tests: watch what the page holds, drop the socket.
  window.crucibleLive = {
    get lastStep() { return lastStep; },
    get socket() { return socket; },
    traceLength: (name) => (traces.get(name) ? traces.get(name).chart.el.data[traces.get(name).index].x.length : 0),
    traceSteps: (name) => (traces.get(name) ? Array.from(traces.get(name).chart.el.data[traces.get(name).index].x) : []),
    get gapsFilled() { return gapsFilled; },
    dropSocket: () => { if (socket) socket.close(); },
    reload: reloadAll,
  };

  // History is drawn at once, whether or not the socket opens.
  drawInitial();
  const initialHistory = loadAll(true).catch((err) => setStatus("could not load history: " + err.message, "error"));
  connect();
})();
