// The charge point page: status, values, identity and live charts, from /ws/chargepoints/<slug>/.
// Records are buffered and drawn once a second; the charts keep a bounded window of points.
"use strict";

(function () {
  const E = window.EvDash;
  const config = E.readConfig();
  const clock = E.serverClock(config.server_now);
  const cp = config.charge_point;
  const TICK_MS = 1000;
  // One point per record over the chart window, capped for very fast pollers.
  const MAX_POINTS = Math.min(config.max_points, Math.ceil((config.window_s * 1000) / cp.poll_interval_ms));
  const PHASE_COLOURS = ["#8b5a2b", "#1f2937", "#94a3b8"]; // L1 brown, L2 black, L3 grey (IEC 60446)

  let latest = cp.record;
  let lastPlottedMs = -Infinity;
  // Records waiting for the next tick, at most one chart window of them.
  let pending = [];

  function receive(record) {
    if (!record || record.charge_point !== cp.slug) return;
    pending.push(record);
    if (pending.length > MAX_POINTS) pending = pending.slice(-MAX_POINTS);
  }

  // Snapshot frames (several for a big snapshot) and telemetry frames (one per consumer batch) both
  // carry `records`, and are merged the same way: every record of this charge point is plotted once.
  function onMessage(message) {
    if (message.type === "snapshot" || message.type === "telemetry") {
      for (const record of message.records || []) receive(record);
    }
  }

  const powerChart = document.getElementById("power-chart");
  const currentChart = document.getElementById("current-chart");
  let chartsReady = false;

  function line(name, color) {
    return { x: [], y: [], type: "scatter", mode: "lines", name, line: { color, width: 2 } };
  }

  if (powerChart && currentChart && window.Plotly) {
    const power = { ...line("Power", "#16a34a"), hovertemplate: "%{y:.2f} kW<extra></extra>" };
    const phases = ["L1", "L2", "L3"].map((phase, i) => ({
      ...line(phase, PHASE_COLOURS[i]),
      hovertemplate: `${phase} %{y:.1f} A<extra></extra>`,
    }));
    Promise.all([
      Plotly.newPlot(powerChart, [power], E.plotLayout("kW"), E.PLOT_CONFIG),
      Plotly.newPlot(
        currentChart,
        phases,
        E.plotLayout("A", { showlegend: true, legend: { orientation: "h", x: 0, y: 1.12 } }),
        E.PLOT_CONFIG,
      ),
    ]).then(() => {
      chartsReady = true;
    });
  }

  /** Append the records not yet plotted (a reconnect's snapshot repeats some), oldest first. */
  function plot(records) {
    const sorted = [...records].sort((a, b) => E.recordTime(a) - E.recordTime(b));
    const fresh = [];
    for (const record of sorted) {
      const time = E.recordTime(record);
      if (time > lastPlottedMs) {
        fresh.push(record);
        lastPlottedMs = time;
      }
    }
    if (fresh.length === 0) return;
    const x = fresh.map((r) => new Date(E.recordTime(r)));
    const value = (r, key) => (r.values && r.values[key] !== undefined ? r.values[key] : null);
    const kw = fresh.map((r) => {
      const w = value(r, "power_w");
      return w === null ? null : w / 1000;
    });
    Plotly.extendTraces(powerChart, { x: [x], y: [kw] }, [0], MAX_POINTS);
    const currents = ["current_l1_a", "current_l2_a", "current_l3_a"].map((key) => fresh.map((r) => value(r, key)));
    Plotly.extendTraces(currentChart, { x: [x, x, x], y: currents }, [0, 1, 2], MAX_POINTS);
  }

  const badge = document.querySelector(".cp-state .badge");
  const errorEl = document.querySelector(".cp-error");
  const ageEl = document.querySelector(".cp-age-text");
  const valueEls = [...document.querySelectorAll("[data-value]")];
  const extraBody = document.querySelector("[data-extra]");
  const extraEmpty = document.querySelector(".identity-empty");
  let extraShown = null;

  /** The same wording as format_extra() in views.py. */
  function formatExtra(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  /** The same rule as with_meaning() in views.py: "4" → "4 (State C2: charging)". */
  function withMeaning(key, text) {
    const meaning = (config.enums[key] || {})[text];
    return meaning ? `${text} (${meaning})` : text;
  }

  function renderExtra(extra) {
    const json = JSON.stringify(extra);
    if (json === extraShown) return;
    extraShown = json;
    const rows = Object.keys(extra)
      .sort()
      .map((key) => {
        const row = document.createElement("tr");
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = key;
        const td = document.createElement("td");
        td.textContent = withMeaning(key, formatExtra(extra[key]));
        row.append(th, td);
        return row;
      });
    extraBody.replaceChildren(...rows);
    extraEmpty.hidden = rows.length > 0;
  }

  function render(now) {
    const status = latest ? latest.status : "nodata";
    const ageMs = latest ? now - E.recordTime(latest) : null;
    E.setStatusClass(badge, status);
    badge.classList.toggle("is-stale", ageMs !== null && ageMs > cp.stale_after_ms);
    E.setText(badge.querySelector(".badge-status"), config.status_labels[status] || status);
    E.setText(badge.querySelector(".badge-iec"), (latest && config.iec61851_labels[latest.iec61851_state]) || "");
    E.setText(ageEl, E.formatAge(ageMs));
    E.setDateTime(ageEl, latest ? latest.ts : "");
    if (!latest) return;
    const error = latest.error || "";
    E.setText(errorEl, error);
    errorEl.hidden = !error;
    const values = latest.values || {};
    for (const el of valueEls) {
      E.setText(el, E.formatValue(values[el.dataset.value], config.formats[el.dataset.value]));
    }
    // An offline record carries no identity: keep showing the last one read.
    if (latest.extra && Object.keys(latest.extra).length > 0) renderExtra(latest.extra);
  }

  function tick() {
    if (pending.length > 0) {
      for (const record of pending) {
        if (E.isNewer(record, latest)) latest = record;
      }
      // Hold records back until the charts exist, rather than lose the snapshot.
      if (chartsReady) {
        plot(pending);
        pending = [];
      }
    }
    render(clock.now());
  }

  E.connectLive(config.ws_path, onMessage);
  tick();
  window.setInterval(tick, TICK_MS);
})();
