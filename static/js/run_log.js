// The experiment page's run log: the tail of the newest run's stdout/stderr, then the lines as
// the worker writes them ("run.log" frames on the page's one live socket, relayed by live.js as
// "crucible:live" events). After a reconnect the tail is fetched again, so nothing is missed.
(function () {
  "use strict";
  const pre = document.getElementById("run-log");
  if (!pre) return;
  const note = document.getElementById("run-log-note");
  const attemptLabel = document.getElementById("run-log-attempt");
  const download = document.getElementById("run-log-download");
  const downloadWrap = document.getElementById("run-log-download-wrap");
  const MAX_LINES = 2000; // the page keeps this many; the download has everything
  let runId = Number(pre.dataset.runId);
  let lastLine = 0; // number of the last line shown (frames say where they start)
  let loading = null;
  // Lines that frames brought while a tail was being fetched: the tail replaces the panel, so
  // these are put back (those the tail already holds only get their stream back, since the file
  // keeps no stream; the rest follow it).
  let arrivedDuringLoad = null;

  function urlFor(id) {
    return pre.dataset.urlTemplate.replace(/\/runs\/0\/log\/$/, "/runs/" + id + "/log/");
  }

  function atBottom() {
    return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
  }

  function append(lines) {
    const follow = atBottom();
    const frag = document.createDocumentFragment();
    for (const item of lines) {
      const span = document.createElement("span");
      span.className = item.stream === "stderr" ? "log-stderr" : "log-stdout";
      span.textContent = item.line + "\n";
      frag.appendChild(span);
    }
    pre.appendChild(frag);
    while (pre.childNodes.length > MAX_LINES) pre.removeChild(pre.firstChild);
    if (follow) pre.scrollTop = pre.scrollHeight;
  }

  function loadTail() {
    if (!runId) return Promise.resolve(); // no run yet: the first frame starts the log
    if (loading) return loading;
    const loadingRun = runId;
    // What the panel shows now, with each line's stream: a tail fetched again (a reconnect) must
    // not turn stderr lines the page already showed into stdout ones.
    const shownBefore = Array.from(pre.children).map((span) => ({
      stream: span.className === "log-stderr" ? "stderr" : "stdout",
      line: span.textContent.replace(/\n$/, ""),
    }));
    arrivedDuringLoad = [];
    loading = fetch(urlFor(runId) + "?tail=" + pre.dataset.tailLines, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error(String(r.status)))))
      .then((text) => {
        if (runId !== loadingRun) return; // a new attempt started meanwhile: its frames own the panel
        const lines = text ? text.replace(/\n$/, "").split("\n") : [];
        const arrived = arrivedDuringLoad || [];
        // The tail ends with the first k of the lines that arrived meanwhile (written before the
        // file was read); the others were written after it.
        let k = Math.min(arrived.length, lines.length);
        while (k > 0 && !endsWith(lines, arrived, k)) k -= 1;
        pre.textContent = "";
        const shown = lines.map((line) => ({ stream: "stdout", line }));
        // The file's lines before those are what the panel showed when the fetch began: the
        // longest run of them the tail ends with keeps its streams.
        const older = lines.slice(0, lines.length - k);
        let m = Math.min(shownBefore.length, older.length);
        while (m > 0 && !endsWith(older, shownBefore.slice(shownBefore.length - m), m)) m -= 1;
        for (let i = 0; i < m; i += 1) shown[older.length - m + i] = shownBefore[shownBefore.length - m + i];
        for (let i = 0; i < k; i += 1) shown[lines.length - k + i] = arrived[i];
        append(shown.concat(arrived.slice(k)));
        // Frames after this carry line numbers past what the file held: the page counts from the
        // frames, so a tail taken mid-run simply continues.
        lastLine = arrived.length ? arrivedLast : -1;
        pre.dataset.loaded = String(Date.now());
      })
      .catch(() => {})
      .finally(() => { loading = null; arrivedDuringLoad = null; });
    return loading;
  }

  let arrivedLast = -1;

  function endsWith(lines, arrived, k) {
    for (let i = 0; i < k; i += 1) {
      if (lines[lines.length - k + i] !== arrived[i].line) return false;
    }
    return true;
  }

  function onFrame(msg) {
    if (msg.run_id !== runId) {
      // A new attempt started: follow it.
      runId = msg.run_id;
      pre.textContent = "";
      pre.dataset.runId = String(runId);
      if (download) download.href = urlFor(runId);
      if (downloadWrap) downloadWrap.hidden = false;
      if (attemptLabel) attemptLabel.textContent = " (a new attempt)";
      lastLine = 0;
    }
    let lines = msg.lines || [];
    if (lastLine > 0 && msg.first_line <= lastLine) lines = lines.slice(lastLine - msg.first_line + 1);
    append(lines);
    lastLine = msg.first_line + (msg.lines || []).length - 1;
    if (arrivedDuringLoad) {
      arrivedDuringLoad.push(...lines);
      arrivedLast = lastLine;
    }
    if (msg.skipped && note) {
      note.hidden = false;
      note.textContent = msg.skipped + " lines were printed faster than the page follows: see the download.";
    }
  }

  document.addEventListener("crucible:live", (event) => {
    const msg = event.detail;
    if (msg && msg.type === "run.log") onFrame(msg);
  });
  document.addEventListener("crucible:live-open", () => loadTail());
  loadTail();
  window.crucibleRunLog = { get runId() { return runId; }, get text() { return pre.textContent; }, reload: loadTail };
})();
