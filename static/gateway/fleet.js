// The fleet page: tiles, summary and fleet power chart, kept live from /ws/fleet/.
// Records are buffered and the page redraws once a second, whatever the size of the fleet.
"use strict";

(function () {
  const E = window.EvDash;
  const config = E.readConfig();
  const clock = E.serverClock(config.server_now);
  const labels = config.status_labels;
  const powerFormat = config.formats.power_w;
  const energyFormat = config.formats.session_energy_wh;
  const TICK_MS = 1000;
  // One point per tick over the chart window: 600 points for 10 minutes.
  const MAX_POINTS = Math.ceil((config.window_s * 1000) / TICK_MS);

  // The tiles the server rendered (enabled charge points, filtered by site): the page follows
  // exactly these, and ignores records of other charge points.
  const tiles = new Map();
  for (const cp of config.charge_points) {
    const el = document.querySelector(`.tile[data-charge-point="${CSS.escape(cp.slug)}"]`);
    if (!el) continue;
    tiles.set(cp.slug, {
      el,
      statusEl: el.querySelector(".tile-status"),
      powerEl: el.querySelector(".tile-power"),
      energyEl: el.querySelector(".tile-energy"),
      ageEl: el.querySelector(".tile-age"),
      staleAfterMs: cp.stale_after_ms,
      record: cp.record,
    });
  }

  // Latest unapplied record per charge point: bounded by the number of tiles.
  const pending = new Map();

  function receive(record) {
    if (!record || !tiles.has(record.charge_point)) return;
    if (E.isNewer(record, pending.get(record.charge_point))) pending.set(record.charge_point, record);
  }

  function onMessage(message) {
    if (message.type === "snapshot") {
      for (const record of message.records || []) receive(record);
    } else if (message.type === "telemetry") {
      // One frame per consumer batch ("records"); "record" is the older one-record frame.
      for (const record of message.records || [message.record]) receive(record);
    }
  }

  /** Paint one tile; return its summary bucket and the power it adds to the fleet total. */
  function renderTile(tile, now) {
    const record = tile.record;
    const status = record ? record.status : "nodata";
    const values = (record && record.values) || {};
    const ageMs = record ? now - E.recordTime(record) : null;
    const stale = ageMs !== null && ageMs > tile.staleAfterMs;
    E.setStatusClass(tile.el, status);
    tile.el.classList.toggle("is-stale", stale);
    E.setText(tile.statusEl, labels[status] || status);
    E.setText(tile.powerEl, `${E.formatValue(values.power_w, powerFormat)} ${powerFormat.unit}`);
    E.setText(tile.energyEl, `${E.formatValue(values.session_energy_wh, energyFormat)} ${energyFormat.unit}`);
    E.setText(tile.ageEl, E.formatAge(ageMs));
    E.setDateTime(tile.ageEl, record ? record.ts : "");
    // A stale record's status and power are no longer known: they leave the totals.
    return { bucket: stale ? "stale" : status, powerW: stale ? 0 : values.power_w || 0 };
  }

  const summaryEls = [...document.querySelectorAll("[data-summary-status]")];
  const summaryPowerEl = document.querySelector("[data-summary-power]");

  function renderSummary(counts, totalPowerW) {
    for (const el of summaryEls) {
      const count = counts.get(el.dataset.summaryStatus) || 0;
      E.setText(el.querySelector(".summary-count"), String(count));
      el.classList.toggle("is-zero", count === 0);
    }
    E.setText(summaryPowerEl, `${E.formatValue(totalPowerW, powerFormat)} ${powerFormat.unit}`);
  }

  const chartEl = document.getElementById("fleet-power-chart");
  let chartReady = false;
  if (chartEl && window.Plotly) {
    const trace = {
      x: [],
      y: [],
      type: "scatter",
      mode: "lines",
      name: "Fleet power",
      line: { color: "#16a34a", width: 2 },
      fill: "tozeroy",
      fillcolor: "rgba(22,163,74,0.12)",
      hovertemplate: "%{y:.1f} kW<extra></extra>",
    };
    Plotly.newPlot(chartEl, [trace], E.plotLayout("kW"), E.PLOT_CONFIG).then(() => {
      chartReady = true;
    });
  }

  function extendChart(now, kw) {
    if (!chartReady) return;
    Plotly.extendTraces(chartEl, { x: [[new Date(now)]], y: [[kw]] }, [0], MAX_POINTS);
  }

  let live = null;

  function tick() {
    for (const [slug, record] of pending) {
      const tile = tiles.get(slug);
      if (E.isNewer(record, tile.record)) tile.record = record;
    }
    pending.clear();
    const now = clock.now();
    const counts = new Map();
    let totalPowerW = 0;
    for (const tile of tiles.values()) {
      const { bucket, powerW } = renderTile(tile, now);
      counts.set(bucket, (counts.get(bucket) || 0) + 1);
      totalPowerW += powerW;
    }
    renderSummary(counts, totalPowerW);
    // While disconnected the total is not known: leave a gap rather than a made-up line.
    extendChart(now, live && live.isLive() ? totalPowerW / 1000 : null);
  }

  const siteFilter = document.querySelector("[data-site-filter]");
  if (siteFilter) {
    siteFilter.querySelector("select").addEventListener("change", () => siteFilter.submit());
  }

  live = E.connectLive(config.ws_path, onMessage);
  tick();
  window.setInterval(tick, TICK_MS);
})();
