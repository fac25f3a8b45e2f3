// The deployment page of one model: every few seconds it reads deployments:live and redraws the
// traffic split, the canary rollout and the charts in place (no reload, Plotly.react).
//
// Elements say what they show: data-field="rollout.stage" (text), data-show="split.canary"
// (hidden unless truthy; "!path" for the opposite), data-href, data-value (form inputs) and
// data-progress="value.path max.path". Fields inside an open dialog stay as the person saw them.
(function () {
  "use strict";

  const root = document.getElementById("deployment");
  const initial = document.getElementById("deployment-live");
  if (!root || !initial) return;
  const scope = document.querySelector("main") || document.body;
  const liveUrl = root.dataset.liveUrl;
  const intervalMs = Number(root.dataset.intervalMs) || 2000;
  // One colour per version number, the same on every chart and every poll.
  const COLORS = ["#4f46e5", "#0891b2", "#d97706", "#15803d", "#dc2626", "#7c3aed", "#475569", "#db2777"];

  function get(payload, path) {
    let value = payload;
    for (const key of path.split(".")) {
      if (value === null || value === undefined) return null;
      value = value[key];
    }
    return value === undefined ? null : value;
  }

  function truthy(value) {
    return !(value === null || value === false || value === 0 || value === "" ||
      (Array.isArray(value) && value.length === 0));
  }

  function format(value, how, empty) {
    if (value === null || value === "") return empty;
    if (how === "pct") return String(value) + "%";
    return String(value);
  }

  function frozen(el) {
    return el.closest("dialog[open]") !== null;
  }

  function bind(payload) {
    scope.querySelectorAll("[data-field]").forEach((el) => {
      if (frozen(el)) return;
      el.textContent = format(get(payload, el.dataset.field), el.dataset.format, el.dataset.empty || "—");
    });
    scope.querySelectorAll("[data-show]").forEach((el) => {
      const path = el.dataset.show;
      const negate = path.startsWith("!");
      const shown = truthy(get(payload, negate ? path.slice(1) : path));
      el.hidden = negate ? shown : !shown;
    });
    scope.querySelectorAll("[data-href]").forEach((el) => {
      const href = get(payload, el.dataset.href);
      if (href && !frozen(el)) el.setAttribute("href", href);
    });
    scope.querySelectorAll("[data-value]").forEach((el) => {
      if (frozen(el)) return;
      const value = get(payload, el.dataset.value);
      el.value = value === null ? "" : String(value);
    });
    scope.querySelectorAll("[data-progress]").forEach((el) => {
      const [valuePath, maxPath] = el.dataset.progress.split(" ");
      const max = Math.max(1, Number(get(payload, maxPath)) || 0);
      el.max = max;
      el.value = Math.min(max, Number(get(payload, valuePath)) || 0);
    });
  }

  function drawSplit(split) {
    for (const side of ["production", "canary"]) {
      const el = document.getElementById("split-" + side);
      if (!el) continue;
      const pct = split[side] ? split[side].pct : 0;
      el.dataset.pct = String(pct);
      el.style.width = pct + "%";
    }
  }

  function drawStages(rollout) {
    const list = document.getElementById("rollout-stages");
    const card = document.getElementById("rollout");
    if (card) card.dataset.status = rollout ? rollout.status : "none";
    if (!list) return;
    const items = (rollout ? rollout.stages : []).map((s) => {
      const li = document.createElement("li");
      li.className = "stage" + (s.current ? " current" : "") + (s.result ? " result-" + s.result : "");
      li.dataset.stage = s.name;
      if (s.current) li.setAttribute("aria-current", "step");
      const name = document.createElement("span");
      name.className = "stage-name";
      name.textContent = s.name;
      const plan = document.createElement("span");
      plan.className = "muted";
      plan.textContent = " " + s.traffic_pct + "% · " + s.duration_seconds + " s ";
      li.append(name, plan);
      if (s.result) {
        const result = document.createElement("span");
        result.className = "stage-result";
        result.textContent = s.result_label;
        li.append(result);
      }
      return li;
    });
    list.replaceChildren(...items);
  }

  function colour(version) {
    return COLORS[version % COLORS.length];
  }

  function layout(el, extra) {
    return {
      title: { text: el.dataset.title, font: { size: 13 }, x: 0, xanchor: "left" },
      margin: { l: 50, r: 10, t: 34, b: 30 },
      height: 260,
      showlegend: true,
      legend: { orientation: "h", y: -0.18 },
      // Keeps a zoom or a hidden legend entry across redraws.
      uirevision: "deployment",
      // The page's own colours (dark mode too).
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: getComputedStyle(document.body).color },
      ...extra,
    };
  }

  const CONFIG = { responsive: true, displaylogo: false };

  function drawTraffic(traffic) {
    const range = [traffic.t[0], traffic.t[traffic.t.length - 1]];
    document.querySelectorAll(".deploy-chart[data-series]").forEach((el) => {
      const key = el.dataset.series;
      const bars = key === "requests";
      const traces = traffic.versions.map((v) => ({
        x: traffic.t,
        y: v[key],
        name: v.label,
        type: bars ? "bar" : "scatter",
        mode: bars ? undefined : "lines+markers",
        marker: { color: colour(v.version), size: 4 },
        line: bars ? undefined : { color: colour(v.version), width: 2 },
        connectgaps: false,
      }));
      const yaxis = key === "error_rate" ? { tickformat: ".0%", rangemode: "tozero" } : { rangemode: "tozero" };
      Plotly.react(el, traces, layout(el, {
        barmode: "stack",
        bargap: 0.1,
        xaxis: { type: "date", range: range },
        yaxis: yaxis,
      }), CONFIG);
    });
  }

  // Stamps are wall-clock "YYYY-MM-DD HH:MM:SS" without a zone (as Plotly reads them): shift
  // them as UTC so that the browser's own zone never moves them.
  function shiftStamp(stamp, seconds) {
    const m = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})/.exec(stamp);
    if (!m) return stamp;
    const t = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) + seconds * 1000;
    return new Date(t).toISOString().slice(0, 19).replace("T", " ");
  }

  function drawDrift(drift) {
    const el = document.getElementById("chart-drift");
    if (!el) return;
    const traces = drift.map((s) => ({
      x: s.t, y: s.score, name: s.label, type: "scatter", mode: "lines+markers",
      marker: { color: colour(s.version), size: 5 }, line: { color: colour(s.version), width: 2 },
    }));
    const annotations = drift.length ? [] : [{
      text: "No drift check yet", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5,
      font: { color: "#667085" },
    }];
    // One check (or several at the same instant) leaves Plotly no span to pick ticks from: it
    // zooms into milliseconds ("05:50:17.9995"). Show an hour around it, in minutes.
    const times = new Set(drift.flatMap((s) => s.t));
    let xaxis = { type: "date", visible: drift.length > 0 };
    if (times.size === 1) {
      const only = Array.from(times)[0];
      xaxis = { ...xaxis, range: [shiftStamp(only, -1800), shiftStamp(only, 1800)], tickformat: "%H:%M" };
    }
    Plotly.react(el, traces, layout(el, {
      xaxis: xaxis,
      yaxis: { rangemode: "tozero", visible: drift.length > 0 },
      annotations: annotations,
    }), CONFIG);
  }

  // What the tables below the charts (candidates, rollouts, versions) depend on: when it
  // moves, they are taken fresh (live_panels.js), as on a state change from the socket.
  let tablesKey = null;
  function followTables(payload) {
    const r = payload.rollout;
    const key = JSON.stringify([payload.production, payload.split && payload.split.canary ? payload.split.canary.version : null,
      r ? [r.id, r.status, r.stage, r.experiment_state] : null]);
    if (tablesKey !== null && key !== tablesKey && window.crucibleLivePanels) window.crucibleLivePanels.refresh();
    tablesKey = key;
  }

  function render(payload) {
    followTables(payload);
    bind(payload);
    drawSplit(payload.split);
    drawStages(payload.rollout);
    if (window.Plotly) {
      drawTraffic(payload.traffic);
      drawDrift(payload.drift);
    }
  }

  const status = document.getElementById("live-status");
  let busy = false;

  async function poll() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(liveUrl, {
        credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new Error("live update failed: HTTP " + response.status);
      render(await response.json());
      root.dataset.polls = String(Number(root.dataset.polls || 0) + 1);
      if (status) status.dataset.status = "live";
    } catch (err) {
      // A logged-out session gets the login page, not JSON: say so and keep trying.
      if (status) {
        status.dataset.status = "error";
        status.title = String(err && err.message ? err.message : err);
      }
    } finally {
      busy = false;
    }
  }

  render(JSON.parse(initial.textContent));
  window.setInterval(poll, intervalMs);
})();
