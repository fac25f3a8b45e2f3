// The Compare page: one chart per metric, each overlaying several experiments, from history, then live.
(function () {
  "use strict";

  const configEl = document.getElementById("compare-series");
  if (!configEl || !window.Plotly) return;
  const experiments = JSON.parse(configEl.textContent);
  document.querySelectorAll(".compare-chart[data-metric]").forEach(compareChart);
  drawCoordinates();

  // The parameters that differ, and the metric, as parallel axes: one line per experiment,
  // coloured by the metric.
  function drawCoordinates() {
    const el = document.getElementById("parcoords");
    const data = document.getElementById("compare-coordinates");
    if (!el || !data) return;
    const c = JSON.parse(data.textContent);
    // Plotly draws parallel axes with WebGL only (and the extensions it needs): without
    // them it leaves a notice in the box, replaced here by the same numbers as a table.
    function asTable() {
      Plotly.purge(el);
      const table = document.createElement("table");
      table.className = "table compact";
      table.id = "parcoords-table";
      const head = table.createTHead().insertRow();
      for (const label of ["Experiment", ...c.dimensions.map((d) => d.label)]) {
        const th = document.createElement("th");
        th.textContent = label;
        head.append(th);
      }
      const body = table.createTBody();
      c.names.forEach((name, i) => {
        const row = body.insertRow();
        row.insertCell().textContent = name;
        for (const d of c.dimensions) row.insertCell().textContent = d.values[i] === null ? "—" : String(Number(d.values[i].toPrecision(6)));
      });
      const note = document.createElement("p");
      note.className = "muted small";
      note.textContent = "Parallel axes need WebGL, which this browser lacks: the same numbers as a table.";
      el.classList.remove("compare-chart");
      el.replaceChildren(note, table);
    }
    const metricAxis = c.dimensions[c.dimensions.length - 1];
    Plotly.newPlot(el, [{
      type: "parcoords",
      line: { color: metricAxis.values.map((v) => (v === null ? 0 : v)), colorscale: "Viridis", showscale: true },
      dimensions: c.dimensions.map((d) => ({ label: d.label, values: d.values.map((v) => (v === null ? NaN : v)) })),
    }], {
      margin: { l: 60, r: 60, t: 50, b: 30 },
      height: 380,
      paper_bgcolor: "rgba(0,0,0,0)",
      font: { color: getComputedStyle(document.body).color },
    }, { responsive: true, displaylogo: false }).then(() => {
      if (/WebGL is not supported/.test(el.textContent)) asTable();
    });
  }

  function compareChart(chart) {
  const metric = chart.dataset.metric;
  const MAX_POINTS = 2000;
  const lastSteps = new Map(); // experiment id -> last step drawn

  function url(template, id) {
    return template.replace("{id}", encodeURIComponent(id));
  }

  async function history(id, params) {
    const query = new URLSearchParams({ names: metric, max_points: String(MAX_POINTS), ...params });
    const response = await fetch(url(chart.dataset.historyUrl, id) + "?" + query, { credentials: "same-origin" });
    if (!response.ok) throw new Error("history of #" + id + ": " + response.status);
    return (await response.json()).series[metric];
  }

  function append(index, id, steps, values) {
    const last = lastSteps.has(id) ? lastSteps.get(id) : -1;
    const xs = [], ys = [];
    for (let i = 0; i < steps.length; i++) {
      if (steps[i] <= last) continue;
      xs.push(steps[i]);
      ys.push(values[i]);
    }
    if (!xs.length) return;
    lastSteps.set(id, xs[xs.length - 1]);
    Plotly.extendTraces(chart, { x: [xs], y: [ys] }, [index]);
  }

  async function start() {
    const traces = experiments.map((e) => ({
      x: [], y: [], name: "#" + e.id + " " + e.name, mode: "lines", type: "scatter", connectgaps: false,
    }));
    await Plotly.newPlot(chart, traces, {
      margin: { l: 50, r: 15, t: 10, b: 40 },
      height: 420,
      xaxis: { title: { text: "step" } },
      yaxis: { title: { text: metric } },
      legend: { orientation: "h", y: -0.2 },
      uirevision: "keep",
      // The page's own colours (dark mode too); one hover box per step for all experiments.
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: getComputedStyle(document.body).color },
      hovermode: "x unified",
    }, { responsive: true, displaylogo: false });
    experiments.forEach(async (e, index) => {
      try {
        const s = await history(e.id, {});
        append(index, e.id, s.steps, s.values);
      } catch (err) {
        chart.dataset.error = err.message;
      }
      // Live appends. Once subscribed (and after every reconnect) the gap since the last
      // step drawn comes over HTTP first; batches arriving meanwhile wait their turn, so
      // none is dropped as "already drawn" before the gap is filled.
      let ready = false;
      let waiting = [];
      const appendBatch = (msg) => {
        const pts = (msg.points || []).filter((p) => p.name === metric);
        append(index, e.id, pts.map((p) => p.step), pts.map((p) => p.value));
      };
      // One catch-up at a time; a reconnect, a resync or a hole during one asks for another.
      let busy = false;
      let again = false;
      const catchUp = async () => {
        if (busy) { again = true; return; }
        busy = true;
        ready = false;
        do {
          again = false;
          const since = lastSteps.has(e.id) ? { since_step: String(lastSteps.get(e.id)) } : {};
          try {
            const s = await history(e.id, since);
            append(index, e.id, s.steps, s.values);
          } catch (err) {
            chart.dataset.error = err.message;
          }
        } while (again);
        busy = false;
        ready = true;
        const early = waiting;
        waiting = [];
        early.forEach(onBatch);
      };
      // A frame that follows a step this chart never drew: frames were missed.
      const onBatch = (msg) => {
        const r = (msg.ranges || {})[metric];
        const have = lastSteps.has(e.id) ? lastSteps.get(e.id) : null;
        if (r && r.after !== null && r.after !== undefined && (have === null || r.after > have)) {
          waiting.push(msg);
          catchUp();
          return;
        }
        appendBatch(msg);
      };
      window.crucibleSocket(url(chart.dataset.wsPath, e.id), {
        onOpen: catchUp,
        onMessage: (msg) => {
          if (msg.type !== "metrics.batch") return;
          if (ready) onBatch(msg);
          else waiting.push(msg);
        },
      });
    });
  }

  start();
  }
})();
