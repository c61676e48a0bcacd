// Shared by the live pages: the WebSocket with reconnect and backoff, the connection indicator,
// the server clock, and the value formatting that mirrors gateway/views.py.
"use strict";

(function () {
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  // Application close codes of gateway/live/consumers.py. Retrying cannot help after the first two:
  // the page says why and stops; too many sockets may clear when other tabs close, so it retries.
  const CLOSE_UNAUTHENTICATED = 4401;
  const CLOSE_NOT_FOUND = 4404;
  const CLOSE_TOO_MANY_SOCKETS = 4429;
  const FINAL_STATES = { [CLOSE_UNAUTHENTICATED]: "signed-out", [CLOSE_NOT_FOUND]: "not-found" };

  /** The page's settings, passed by the view with json_script. */
  function readConfig(id = "page-config") {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : {};
  }

  /**
   * A clock on the server's time: record timestamps come from the server side, and an operator
   * laptop whose clock is a minute off must not show every charge point as stale.
   */
  function serverClock(serverNowIso) {
    const serverNow = Date.parse(serverNowIso);
    // The server read its clock just before sending the response: compare with when the
    // response started to arrive, not with when this script ran (after Plotly loaded).
    const nav = performance.getEntriesByType ? performance.getEntriesByType("navigation")[0] : null;
    const received = nav && nav.responseStart > 0 ? performance.timeOrigin + nav.responseStart : Date.now();
    const offsetMs = Number.isFinite(serverNow) ? serverNow - received : 0;
    return { now: () => Date.now() + offsetMs, offsetMs };
  }

  function setIndicator(state) {
    const labels = {
      connecting: "connecting",
      live: "live",
      reconnecting: "reconnecting",
      "signed-out": "signed out: reload to log in",
      "not-found": "not found",
      "too-many": "too many open pages: retrying",
    };
    for (const el of document.querySelectorAll("[data-live-indicator]")) {
      el.dataset.state = state;
      el.textContent = labels[state] || state;
    }
  }

  /**
   * Open the WebSocket at `path` on this host and keep it open: on every drop, reconnect after an
   * exponential, jittered backoff. `onMessage(message)` receives each parsed JSON message.
   * Returns `{ isLive() }`.
   */
  function connectLive(path, onMessage) {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${window.location.host}${path}`;
    let socket = null;
    let attempt = 0;
    let timer = null;
    let live = false;
    let stopped = false;

    function open() {
      timer = null;
      setIndicator(attempt === 0 ? "connecting" : "reconnecting");
      socket = new WebSocket(url);
      socket.addEventListener("message", (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (err) {
          console.warn("evdash: ignoring a message that is not JSON", err);
          return;
        }
        // Reset the backoff on the first message, not on open: a server that accepts and then
        // closes at once (e.g. an expired session) must not be hammered every second.
        if (!live) {
          live = true;
          attempt = 0;
          setIndicator("live");
        }
        onMessage(message);
      });
      socket.addEventListener("close", (event) => {
        live = false;
        socket = null;
        for (const el of document.querySelectorAll("[data-live-indicator]")) el.dataset.closeCode = event.code;
        if (FINAL_STATES[event.code]) {
          // Logged out (here or in another tab) or gone: no retry loop against a refusal.
          stopped = true;
          setIndicator(FINAL_STATES[event.code]);
          return;
        }
        schedule(event.code === CLOSE_TOO_MANY_SOCKETS ? "too-many" : "reconnecting");
      });
      // An error is always followed by close, which does the reconnecting.
    }

    function schedule(state) {
      if (timer !== null || stopped) return;
      setIndicator(state);
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
      attempt += 1;
      const delay = base * (0.8 + Math.random() * 0.4);
      timer = window.setTimeout(open, delay);
    }

    function retryNow() {
      if (timer !== null) {
        window.clearTimeout(timer);
        open();
      }
    }

    // Back on the network or back on the tab: no need to wait out a long backoff.
    window.addEventListener("online", retryNow);
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") retryNow();
    });
    window.addEventListener("pagehide", () => {
      if (socket) socket.close();
    });
    open();
    return { isLive: () => live };
  }

  /** Timestamp of a record in ms since the epoch. */
  function recordTime(record) {
    return Date.parse(record.ts);
  }

  /** Whether `record` is newer than `other` (seq restarts with the poller, so ts first). */
  function isNewer(record, other) {
    if (!other) return true;
    const a = recordTime(record);
    const b = recordTime(other);
    return a > b || (a === b && record.seq > other.seq);
  }

  /** Format a value as the view's ValueFormat does: scaled, fixed decimals, "—" when missing. */
  function formatValue(value, format) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "—";
    return (value * format.scale).toFixed(format.decimals);
  }

  /** "12 s ago", "3 min ago": the same wording as format_age() in views.py. */
  function formatAge(ageMs) {
    if (ageMs === null || ageMs === undefined || !Number.isFinite(ageMs)) return "never";
    const seconds = Math.floor(Math.max(ageMs, 0) / 1000);
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
      if (seconds >= size) return `${Math.floor(seconds / size)} ${unit} ago`;
    }
    return `${seconds} s ago`;
  }

  /** Set an element's text only when it changes: hundreds of tiles update every second. */
  function setText(el, text) {
    if (el && el.textContent !== text) el.textContent = text;
  }

  /** Set a <time> element's machine-readable timestamp (the record's own `ts`) when it changes. */
  function setDateTime(el, iso) {
    if (el && el.getAttribute("datetime") !== iso) el.setAttribute("datetime", iso);
  }

  /** Replace every `status-*` class of `el` by `status-<status>`. */
  function setStatusClass(el, status) {
    for (const cls of [...el.classList]) {
      if (cls.startsWith("status-") && cls !== `status-${status}`) el.classList.remove(cls);
    }
    el.classList.add(`status-${status}`);
    el.dataset.status = status;
  }

  /** Plotly settings shared by every chart of the dashboard. */
  const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  function plotLayout(yTitle, extra = {}) {
    return {
      margin: { l: 48, r: 12, t: 8, b: 32 },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: "system-ui, sans-serif", size: 12, color: "#334155" },
      xaxis: { type: "date", gridcolor: "#e2e8f0" },
      yaxis: { title: { text: yTitle }, rangemode: "tozero", gridcolor: "#e2e8f0", zeroline: false },
      showlegend: false,
      // Keep the operator's zoom while points stream in.
      uirevision: "live",
      ...extra,
    };
  }

  window.EvDash = {
    readConfig,
    serverClock,
    connectLive,
    recordTime,
    isNewer,
    formatValue,
    formatAge,
    setText,
    setDateTime,
    setStatusClass,
    PLOT_CONFIG,
    plotLayout,
  };
})();
