// A websocket to the live view that reconnects with exponential backoff (and jitter), and
// gives up only when the server refused it (4401 not logged in, 4403 no permission, 4404 gone).
// Used by the Fleet, GPU and Compare pages: window.crucibleSocket(path, handlers).
// handlers.onOpen(maybeMissed) runs on every open, with true after a reconnect AND when
// the server sends {"type": "resync"} (its channel layer lost events): the page then
// takes what it shows fresh over HTTP.
(function () {
  "use strict";

  const REFUSED = {
    4401: "Log in again to see live updates.",
    4403: "You may not view this.",
    4404: "It no longer exists.",
  };

  window.crucibleSocket = function (path, handlers) {
    const h = Object.assign({ onMessage() {}, onOpen() {}, onStatus() {} }, handlers || {});
    let attempt = 0;
    let socket = null;
    let stopped = false;

    function open() {
      if (stopped) return;
      const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      const ws = new WebSocket(scheme + window.location.host + path);
      socket = ws;
      ws.onopen = () => {
        h.onStatus("live", "live");
        // attempt > 0: this is a reconnect, the page may have missed events meanwhile.
        h.onOpen(attempt > 0);
        attempt = 0;
      };
      ws.onmessage = (event) => {
        let msg;
        try { msg = JSON.parse(event.data); } catch (e) { return; }
        if (msg && msg.type === "resync") h.onOpen(true);
        else if (msg && typeof msg.type === "string") h.onMessage(msg);
      };
      ws.onclose = (event) => {
        if (socket !== ws) return;
        socket = null;
        if (REFUSED[event.code]) {
          stopped = true;
          h.onStatus(REFUSED[event.code], "refused");
          return;
        }
        attempt += 1;
        const delay = Math.min(30000, 500 * 2 ** (attempt - 1)) * (0.75 + Math.random() / 2);
        h.onStatus("reconnecting in " + Math.round(delay / 1000) + " s…", "reconnecting");
        window.setTimeout(open, delay);
      };
    }

    open();
    return {
      get socket() { return socket; },
      drop() { if (socket) socket.close(); },
      stop() { stopped = true; if (socket) socket.close(); },
    };
  };

  // Show a status line (text plus data-status for the dot's colour).
  window.crucibleSocketStatus = function (el) {
    return function (text, kind) {
      if (!el) return;
      el.textContent = text;
      el.dataset.status = kind;
    };
  };
})();
