// The fleet page: a model of every charge point's latest record, shown as tiles or as a table.
// Records only update the model (one entry per charge point, looked up in a Map). Drawing happens
// at most once per animation frame and touches only the tiles or rows on screen, so the page's
// cost follows the size of the screen, not the size of the fleet. Once a second the page
// re-classifies the fleet (staleness, summary, order) and extends the fleet power chart, which
// opens with its whole window from the history.
"use strict";

(function () {
  const E = window.EvDash;
  const config = E.readConfig();
  const clock = E.serverClock(config.server_now);
  const labels = config.status_labels;
  const powerFormat = config.formats.power_w;
  const energyFormat = config.formats.session_energy_wh;
  const TICK_MS = 1000;
  // Fixed sizes let the page place any tile or row without measuring it (see evdash.css).
  const ROW_HEIGHT_PX = 36;
  const TILE_HEIGHT_PX = 142;
  const TILE_GAP_PX = 12;
  const TILE_MIN_WIDTH_PX = 210;
  // Rows drawn beyond each edge of the screen, so a short scroll shows no blank strip.
  const OVERSCAN_ROWS = 3;
  const STORAGE_KEY = "evdash.fleet.v1";
  const VIEWS = ["tiles", "table"];
  // The natural direction of each sort: what needs a look first (see ATTENTION_ORDER in
  // gateway/readings.py), names A to Z, the highest power first, the oldest record first.
  const SORT_DESCENDING = { status: false, name: false, power: true, age: true };
  const attentionRank = new Map(config.attention_order.map((status, index) => [status, index]));

  // --- Model: one entry per charge point the server listed (bounded by the fleet) ----------

  const entries = config.charge_points.map((cp) => ({
    slug: cp.slug,
    name: cp.name,
    nameKey: cp.name.toLowerCase(),
    searchKey: `${cp.name} ${cp.slug}`.toLowerCase(),
    siteName: cp.site_name,
    url: config.charge_point_url.replace("__slug__", encodeURIComponent(cp.slug)),
    staleAfterMs: cp.stale_after_ms,
    record: null,
    ts: -Infinity,
    powerW: null,
    bucket: "nodata",
    onScreen: false,
  }));
  const bySlug = new Map(entries.map((entry) => [entry.slug, entry]));

  /** Take `record` as the entry's latest unless it is older; return whether it was taken. */
  function accept(entry, record) {
    const ts = E.recordTime(record);
    if (entry.record && (ts < entry.ts || (ts === entry.ts && record.seq <= entry.record.seq))) return false;
    entry.record = record;
    entry.ts = ts;
    const powerW = record.values ? record.values.power_w : null;
    entry.powerW = Number.isFinite(powerW) ? powerW : null;
    return true;
  }

  for (const cp of config.charge_points) {
    if (cp.record) accept(bySlug.get(cp.slug), cp.record);
  }

  /** One record from the socket: records of charge points this page does not list are ignored
   *  (the socket may carry the whole fleet while the page shows one site). */
  function receive(record) {
    const entry = record && bySlug.get(record.charge_point);
    if (entry && accept(entry, record) && entry.onScreen) requestDraw();
  }

  // Snapshot chunks and telemetry frames carry `records`; older servers send one `record`.
  function onMessage(message) {
    if (message.type !== "snapshot" && message.type !== "telemetry") return;
    if (Array.isArray(message.records)) {
      for (const record of message.records) receive(record);
    }
    if (message.record) receive(message.record);
  }

  const counts = new Map();
  let fleetPowerW = 0;

  /** The rules of gateway/readings.py at `now`: each entry's summary bucket, the counts per bucket
   *  and the fleet power, which leaves out stale records (their power is no longer known). */
  function classify(now) {
    counts.clear();
    fleetPowerW = 0;
    for (const entry of entries) {
      const stale = entry.record !== null && now - entry.ts > entry.staleAfterMs;
      entry.bucket = stale ? "stale" : entry.record ? entry.record.status : "nodata";
      counts.set(entry.bucket, (counts.get(entry.bucket) || 0) + 1);
      if (!stale && entry.powerW) fleetPowerW += entry.powerW;
    }
  }

  // --- What the operator chose: view, sort and filters, remembered in this browser ----------

  const state = { view: "tiles", sort: "status", desc: false, status: "", query: "" };

  function loadState() {
    let saved = null;
    try {
      saved = JSON.parse(window.localStorage.getItem(STORAGE_KEY) || "null");
    } catch (err) {
      saved = null; // storage disabled or a value we did not write: start from the defaults
    }
    if (!saved || typeof saved !== "object") return;
    if (VIEWS.includes(saved.view)) state.view = saved.view;
    if (saved.sort in SORT_DESCENDING) state.sort = saved.sort;
    if (typeof saved.desc === "boolean") state.desc = saved.desc;
    if (typeof saved.status === "string" && (saved.status === "" || saved.status in labels)) state.status = saved.status;
    if (typeof saved.query === "string") state.query = saved.query;
  }

  function saveState() {
    try {
      window.localStorage.setItem(STORAGE_KEY, JSON.stringify(state));
    } catch (err) {
      // Storage full or disabled: the choice holds for this page only.
    }
  }

  // --- Order: the entries that pass the filters, sorted ---------------------------------------

  const SORT_KEYS = {
    status: (entry) => (attentionRank.has(entry.bucket) ? attentionRank.get(entry.bucket) : attentionRank.size),
    name: (entry) => entry.nameKey,
    power: (entry) => (entry.powerW === null ? -Infinity : entry.powerW),
    // The age grows as the timestamp falls; no record at all is the oldest.
    age: (entry) => -entry.ts,
  };

  function compareEntries(a, b) {
    const key = SORT_KEYS[state.sort];
    const x = key(a);
    const y = key(b);
    if (x !== y) return (x < y ? -1 : 1) * (state.desc ? -1 : 1);
    // Ties always A to Z, so equal rows keep their places from one second to the next.
    if (a.nameKey !== b.nameKey) return a.nameKey < b.nameKey ? -1 : 1;
    return a.slug < b.slug ? -1 : a.slug > b.slug ? 1 : 0;
  }

  const order = [];
  let orderDirty = true;

  function rebuildOrder() {
    const query = state.query.trim().toLowerCase();
    order.length = 0;
    for (const entry of entries) {
      if (state.status && entry.bucket !== state.status) continue;
      if (query && !entry.searchKey.includes(query)) continue;
      order.push(entry);
    }
    order.sort(compareEntries);
    orderDirty = false;
  }

  // --- Drawing: a pool of elements for what is on screen ------------------------------------

  /** Paint one tile or row (both have the same parts) with `entry` as of `now`. */
  function paint(el, entry, now) {
    if (el.dataset.chargePoint !== entry.slug) {
      el.dataset.chargePoint = entry.slug;
      el.href = entry.url;
      E.setText(el.parts.name, entry.name);
      E.setText(el.parts.site, entry.siteName);
    }
    const record = entry.record;
    const status = record ? record.status : "nodata";
    const values = (record && record.values) || {};
    const ageMs = record ? now - entry.ts : null;
    E.setStatusClass(el, status);
    el.classList.toggle("is-stale", ageMs !== null && ageMs > entry.staleAfterMs);
    E.setText(el.parts.status, labels[status] || status);
    E.setText(el.parts.power, `${E.formatValue(values.power_w, powerFormat)} ${powerFormat.unit}`);
    E.setText(el.parts.energy, `${E.formatValue(values.session_energy_wh, energyFormat)} ${energyFormat.unit}`);
    E.setText(el.parts.age, E.formatAge(ageMs));
    E.setDateTime(el.parts.age, record ? record.ts : "");
  }

  function element(tag, className, parent) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (parent) parent.appendChild(el);
    return el;
  }

  function createTile() {
    const el = element("a", "tile");
    el.style.height = `${TILE_HEIGHT_PX}px`;
    const head = element("span", "tile-head", el);
    const name = element("span", "tile-name", head);
    const site = element("span", "tile-site", head);
    const status = element("span", "tile-status", el);
    const figures = element("span", "tile-figures", el);
    const power = element("span", "tile-power", figures);
    const energy = element("span", "tile-energy", figures);
    const age = element("time", "tile-age", el);
    age.title = "Age of the last record";
    el.parts = { name, site, status, power, energy, age };
    return el;
  }

  function createRow() {
    const el = element("a", "fleet-row");
    el.setAttribute("role", "row");
    el.style.height = `${ROW_HEIGHT_PX}px`;
    const cell = (className, tag = "span") => {
      const c = element(tag, className, el);
      c.setAttribute("role", "cell");
      return c;
    };
    const name = cell("cell-name");
    const site = cell("cell-site");
    const status = element("span", "status-pill", cell("cell-status"));
    const power = cell("num cell-power");
    const energy = cell("num cell-energy");
    const age = cell("num cell-age", "time");
    el.parts = { name, site, status, power, energy, age };
    return el;
  }

  /**
   * A virtualized grid in `container`: `order` laid out `columns(width)` to a row, each row
   * `pitchPx` apart. The container gets the full height, so the page scrolls as if every item
   * were there, but only the rows in the window (plus OVERSCAN_ROWS) have elements.
   */
  function virtualGrid(container, { pitchPx, gapPx, columns, create }) {
    const pool = [];
    let heightPx = -1;

    function draw(now) {
      const width = container.clientWidth;
      const perRow = columns(width);
      const itemWidth = (width - gapPx * (perRow - 1)) / perRow;
      const rows = Math.ceil(order.length / perRow);
      if (rows * pitchPx !== heightPx) {
        heightPx = rows * pitchPx;
        container.style.height = `${heightPx}px`;
      }
      const rect = container.getBoundingClientRect();
      const top = Math.max(0, -rect.top);
      const bottom = Math.min(heightPx, window.innerHeight - rect.top);
      let firstRow = 0;
      let endRow = 0;
      if (bottom > top) {
        firstRow = Math.max(0, Math.floor(top / pitchPx) - OVERSCAN_ROWS);
        endRow = Math.min(rows, Math.ceil(bottom / pitchPx) + OVERSCAN_ROWS);
      }
      const first = firstRow * perRow;
      const count = Math.max(0, Math.min(order.length, endRow * perRow) - first);
      for (const el of pool) el.entry.onScreen = false;
      while (pool.length > count) pool.pop().remove();
      while (pool.length < count) pool.push(container.appendChild(create()));
      for (let i = 0; i < count; i += 1) {
        const index = first + i;
        const el = pool[i];
        const entry = order[index];
        el.entry = entry;
        entry.onScreen = true;
        const x = (index % perRow) * (itemWidth + gapPx);
        const y = Math.floor(index / perRow) * pitchPx;
        const transform = `translate(${x}px, ${y}px)`;
        if (el.style.transform !== transform) el.style.transform = transform;
        const widthText = `${itemWidth}px`;
        if (el.style.width !== widthText) el.style.width = widthText;
        paint(el, entry, now);
      }
    }

    function clear() {
      for (const el of pool) el.entry.onScreen = false;
      for (const el of pool) el.remove();
      pool.length = 0;
    }

    return { draw, clear };
  }

  const tilesEl = document.querySelector("[data-fleet-tiles]");
  const tableEl = document.querySelector("[data-fleet-table]");
  const views = {};
  if (tilesEl && tableEl) {
    tilesEl.replaceChildren(); // the server's first paint: the script draws from here on
    tilesEl.classList.add("is-virtual");
    views.tiles = virtualGrid(tilesEl, {
      pitchPx: TILE_HEIGHT_PX + TILE_GAP_PX,
      gapPx: TILE_GAP_PX,
      columns: (width) => Math.max(1, Math.floor((width + TILE_GAP_PX) / (TILE_MIN_WIDTH_PX + TILE_GAP_PX))),
      create: createTile,
    });
    views.table = virtualGrid(tableEl.querySelector("[data-fleet-rows]"), {
      pitchPx: ROW_HEIGHT_PX,
      gapPx: 0,
      columns: () => 1,
      create: createRow,
    });
  }

  let frameRequested = false;

  function requestDraw() {
    if (frameRequested || !views.tiles) return;
    frameRequested = true;
    window.requestAnimationFrame(draw);
  }

  function draw() {
    frameRequested = false;
    if (orderDirty) {
      rebuildOrder();
      renderShown();
    }
    views[state.view].draw(clock.now());
  }

  // --- Controls -----------------------------------------------------------------------------

  const controlsEl = document.querySelector("[data-fleet-controls]");
  const searchEl = document.querySelector("[data-fleet-search]");
  const sortEl = document.querySelector("[data-fleet-sort]");
  const shownEl = document.querySelector("[data-fleet-shown]");
  const clearEl = document.querySelector("[data-fleet-clear]");
  const noneEl = document.querySelector("[data-fleet-none]");
  const allEl = document.querySelector("[data-summary-all]");
  const summaryEls = [...document.querySelectorAll("[data-summary-status]")];
  const summaryPowerEl = document.querySelector("[data-summary-power]");

  function renderShown() {
    const filtered = Boolean(state.status || state.query.trim());
    const all = `${entries.length} charge point${entries.length === 1 ? "" : "s"}`;
    E.setText(shownEl, filtered ? `${order.length} of ${entries.length} shown` : all);
    if (noneEl) noneEl.hidden = order.length > 0;
  }

  function renderControls() {
    for (const button of document.querySelectorAll("[data-view]")) {
      button.setAttribute("aria-pressed", String(button.dataset.view === state.view));
    }
    if (tilesEl) tilesEl.hidden = state.view !== "tiles";
    if (tableEl) tableEl.hidden = state.view !== "table";
    for (const el of summaryEls) el.setAttribute("aria-pressed", String(el.dataset.summaryStatus === state.status));
    if (allEl) allEl.setAttribute("aria-pressed", String(state.status === ""));
    if (sortEl) sortEl.value = state.sort;
    if (searchEl && searchEl.value !== state.query) searchEl.value = state.query;
    for (const header of document.querySelectorAll("[data-sort-column]")) {
      const sorted = header.dataset.sortColumn === state.sort;
      header.setAttribute("aria-sort", sorted ? (state.desc ? "descending" : "ascending") : "none");
    }
    if (clearEl) clearEl.hidden = !(state.status || state.query);
  }

  /** Apply a change of the operator's choices: remember it, re-filter, redraw. */
  function choose(change) {
    Object.assign(state, change);
    saveState();
    orderDirty = true;
    renderControls();
    for (const view of VIEWS) if (view !== state.view && views[view]) views[view].clear();
    requestDraw();
  }

  if (views.tiles) {
    controlsEl.hidden = false;
    for (const button of document.querySelectorAll("[data-view]")) {
      button.addEventListener("click", () => choose({ view: button.dataset.view }));
    }
    searchEl.addEventListener("input", () => choose({ query: searchEl.value }));
    sortEl.addEventListener("change", () => choose({ sort: sortEl.value, desc: SORT_DESCENDING[sortEl.value] }));
    for (const button of document.querySelectorAll("[data-sort]")) {
      const sort = button.dataset.sort;
      button.addEventListener("click", () =>
        choose(state.sort === sort ? { desc: !state.desc } : { sort, desc: SORT_DESCENDING[sort] }),
      );
    }
    for (const el of summaryEls) {
      const status = el.dataset.summaryStatus;
      el.addEventListener("click", () => choose({ status: state.status === status ? "" : status }));
    }
    allEl.addEventListener("click", () => choose({ status: "" }));
    clearEl.addEventListener("click", () => choose({ status: "", query: "" }));
    window.addEventListener("scroll", requestDraw, { passive: true });
    window.addEventListener("resize", requestDraw);
  }

  function renderSummary() {
    for (const el of summaryEls) {
      const count = counts.get(el.dataset.summaryStatus) || 0;
      E.setText(el.querySelector(".summary-count"), String(count));
      el.classList.toggle("is-zero", count === 0);
    }
    E.setText(summaryPowerEl, `${E.formatValue(fleetPowerW, powerFormat)} ${powerFormat.unit}`);
  }

  // --- Fleet power chart --------------------------------------------------------------------
  // It opens with its whole window from GET /fleet/power-history/ (the fleet's power in the
  // server's buckets, completed ones only), then adds the live total once a second. Ticks that
  // come before the history answer stay; the history fills the time before the first of them.

  const chartEl = document.getElementById("fleet-power-chart");
  const chart = { ready: false, dirty: false, t: [], kw: [], revision: 0 }; // t in ms, kw as drawn

  function powerTrace() {
    return {
      x: chart.t.map((t) => new Date(t)),
      y: chart.kw.slice(),
      type: "scatter",
      mode: "lines",
      name: "Fleet power",
      line: { color: "#16a34a", width: 2 },
      fill: "tozeroy",
      fillcolor: "rgba(22,163,74,0.12)",
      hovertemplate: "%{y:.1f} kW<extra></extra>",
      connectgaps: false,
    };
  }

  if (chartEl && window.Plotly) {
    Plotly.newPlot(chartEl, [powerTrace()], E.plotLayout("kW"), E.PLOT_CONFIG).then(() => {
      chart.ready = true;
      chart.dirty = true;
    });
  }

  async function loadPowerHistory() {
    const url = chartEl && chartEl.dataset.historyUrl;
    if (!url) return;
    const params = new URLSearchParams({ window_s: String(config.window_s) });
    if (config.site) params.set("site", config.site);
    let answer = null;
    try {
      const response = await fetch(`${url}?${params}`, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.ok) answer = await response.json();
      else console.warn("evdash: fleet power history:", response.status);
    } catch (err) {
      console.warn("evdash: fleet power history unavailable", err);
    }
    if (!answer) return;
    // A bucket's mean is drawn at its middle; only what precedes the first live tick is taken.
    const firstLive = chart.t.length > 0 ? chart.t[0] : Infinity;
    const halfMs = (answer.bucket_s * 1000) / 2;
    const t = [];
    const kw = [];
    answer.t.forEach((ts, i) => {
      const ms = Date.parse(ts) + halfMs;
      if (ms < firstLive) {
        t.push(ms);
        kw.push(answer.power_w[i] === null ? null : answer.power_w[i] / 1000);
      }
    });
    chart.t = t.concat(chart.t);
    chart.kw = kw.concat(chart.kw);
    chart.dirty = true;
    drawChart();
    chartEl.dataset.historyPoints = String(t.length);
    chartEl.dataset.queryMs = String(answer.query_ms);
  }

  function extendChart(now, kw) {
    chart.t.push(now);
    chart.kw.push(kw);
    // The window slides by time: the history's buckets and the live ticks leave alike.
    let drop = 0;
    while (drop < chart.t.length && chart.t[drop] < now - config.window_s * 1000) drop += 1;
    chart.t.splice(0, drop);
    chart.kw.splice(0, drop);
    chart.dirty = true;
    drawChart();
  }

  function drawChart() {
    if (!chart.ready || !chart.dirty) return;
    chart.revision += 1;
    Plotly.react(chartEl, [powerTrace()], { ...E.plotLayout("kW"), datarevision: chart.revision }, E.PLOT_CONFIG);
    chart.dirty = false;
  }

  let live = null;

  /** Once a second: staleness moves with the clock even when no record comes. */
  function tick() {
    const now = clock.now();
    classify(now);
    renderSummary();
    // While disconnected the total is not known: leave a gap rather than a made-up line.
    extendChart(now, live && live.isLive() ? fleetPowerW / 1000 : null);
    orderDirty = true;
    requestDraw();
  }

  // --- Site load management: each load-managed site's headroom, refreshed now and then -------------

  // The sites' statuses come every control period (5 s by default) to the site pages' sockets; the
  // fleet summary asks for its lines at this pace instead of joining every site's group.
  const HEADROOM_REFRESH_MS = 10000;
  const headroomEls = [...document.querySelectorAll("[data-site-headroom]")];

  async function refreshHeadrooms() {
    try {
      const response = await fetch(config.site_headroom_url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) return;
      const lines = new Map((await response.json()).sites.map((line) => [line.site, line]));
      for (const el of headroomEls) {
        const line = lines.get(el.dataset.siteHeadroom);
        if (!line) continue;
        el.dataset.state = line.state;
        E.setText(el.querySelector("[data-site-headroom-text]"), line.summary);
      }
    } catch (err) {
      console.warn("evdash: could not refresh the sites' headroom", err);
    }
  }

  if (headroomEls.length > 0 && config.site_headroom_url) window.setInterval(refreshHeadrooms, HEADROOM_REFRESH_MS);

  const siteFilter = document.querySelector("[data-site-filter]");
  if (siteFilter) {
    siteFilter.querySelector("select").addEventListener("change", () => siteFilter.submit());
  }

  loadState();
  renderControls();
  live = E.connectLive(config.ws_path, onMessage);
  loadPowerHistory();
  tick();
  window.setInterval(tick, TICK_MS);
})();
