// The site page: the controller's state line, the stacked chart of the site's current, the chargers'
// table and the overrides, from /ws/sites/<slug>/ (a snapshot of the last 10 minutes of statuses,
// then one status per control period) and GET /sites/<slug>/history/ for the longer ranges.
// Overrides post to /sites/<slug>/overrides/ and .../<id>/cancel/; the server checks everything.
"use strict";

(function () {
  const E = window.EvDash;
  const config = E.readConfig();
  const clock = E.serverClock(config.server_now);
  const TICK_MS = 1000;
  const WINDOW_MS = config.window_s * 1000;
  const STALE_MS = config.stale_after_s * 1000;
  // One colour per charger, in the table's order (Okabe–Ito, readable by colour-blind operators).
  const PALETTE = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#999999"];
  const LIMIT_COLOUR = "#dc2626";
  const DRAW_COLOUR = "#111827";
  const STATE_LABELS = { controlling: "controlling", fallback: "fallback: failsafe shares", refused: "refused", starting: "starting" };

  let latest = config.status; // the newest status (a SiteStatus dict) or null
  const chargers = config.chargers.map((c) => ({ slug: c.slug, name: c.name }));
  const live = new Map(); // t (ms) -> point, the live window
  const view = { range: "live", points: null, generation: 0, dirty: true };
  let chartReady = false;

  // --- Points: what the chart draws of a status (chart_point() in gateway/sitecontrol/report.py) ---

  function maxOf(values) {
    const numbers = (values || []).filter((v) => Number.isFinite(v));
    return numbers.length ? Math.max(...numbers) : 0;
  }

  function pointOf(status) {
    const point = { at: status.at, state: status.state, limit_a: status.limit_a, draw_a: maxOf(status.draw_a), chargers: {} };
    for (const share of status.chargers || []) {
      point.chargers[share.charge_point] = [maxOf(share.actual_a), share.allocated_a];
    }
    return point;
  }

  function knowCharger(slug) {
    if (!chargers.some((c) => c.slug === slug)) chargers.push({ slug, name: slug });
  }

  function addLive(status) {
    const t = Date.parse(status.at);
    if (!Number.isFinite(t)) return;
    const point = pointOf(status);
    for (const slug of Object.keys(point.chargers)) knowCharger(slug);
    live.set(t, point);
    if (!latest || t >= Date.parse(latest.at)) latest = status;
    if (view.range === "live") view.dirty = true;
  }

  function trimLive(now) {
    for (const t of live.keys()) {
      if (t < now - WINDOW_MS) {
        live.delete(t);
        view.dirty = true;
      }
    }
  }

  function onMessage(message) {
    if (message.type === "snapshot") {
      for (const status of message.statuses || []) addLive(status);
    } else if (message.type === "site_status" && message.status && message.status.site === config.site) {
      addLive(message.status);
    }
    renderStatus(clock.now());
  }

  // --- Chart --------------------------------------------------------------------------------------

  const chartEl = document.getElementById("site-chart");

  function traces(points) {
    const x = points.map((p) => new Date(p.at));
    const out = [];
    chargers.forEach((c, i) => {
      const colour = PALETTE[i % PALETTE.length];
      const values = points.map((p) => p.chargers[c.slug] || [null, null]);
      out.push({
        x,
        y: values.map((v) => v[0]),
        name: `${c.name} actual`,
        type: "scatter",
        mode: "lines",
        stackgroup: "actual",
        line: { color: colour, width: 1 },
        hovertemplate: `${c.name} %{y:.1f} A<extra></extra>`,
      });
    });
    chargers.forEach((c, i) => {
      const colour = PALETTE[i % PALETTE.length];
      out.push({
        x,
        y: points.map((p) => (p.chargers[c.slug] || [null, null])[1]),
        name: `${c.name} allocated`,
        type: "scatter",
        mode: "lines",
        stackgroup: "allocated",
        fill: "none",
        line: { color: colour, width: 2, dash: "dash" },
        hovertemplate: `${c.name} allocated %{y:.1f} A<extra></extra>`,
      });
    });
    out.push({
      x,
      y: points.map((p) => p.limit_a),
      name: "Limit",
      type: "scatter",
      mode: "lines",
      line: { color: LIMIT_COLOUR, width: 2, shape: "hv" },
      hovertemplate: "limit %{y:.0f} A<extra></extra>",
    });
    out.push({
      x,
      y: points.map((p) => p.draw_a),
      name: "Total draw",
      type: "scatter",
      mode: "lines",
      line: { color: DRAW_COLOUR, width: 2 },
      hovertemplate: "draw %{y:.1f} A<extra></extra>",
    });
    return out;
  }

  function shownPoints() {
    if (view.range !== "live") return view.points || [];
    return [...live.keys()].sort((a, b) => a - b).map((t) => live.get(t));
  }

  function drawChart() {
    if (!chartReady || !view.dirty) return;
    view.dirty = false;
    const points = shownPoints();
    const layout = E.plotLayout("A", {
      showlegend: true,
      legend: { orientation: "h", x: 0, y: -0.15 },
      margin: { l: 48, r: 12, t: 8, b: 48 },
      uirevision: `${view.range}-${view.generation}`,
    });
    Plotly.react(chartEl, traces(points), layout, E.PLOT_CONFIG);
    chartEl.dataset.points = String(points.length);
    chartEl.dataset.newest = points.length ? points[points.length - 1].at : "";
  }

  if (chartEl && window.Plotly) {
    Plotly.newPlot(chartEl, traces([]), E.plotLayout("A"), E.PLOT_CONFIG).then(() => {
      chartReady = true;
      view.dirty = true;
      drawChart();
    });
  }

  // --- History ranges -----------------------------------------------------------------------------

  const historyEl = document.querySelector("[data-site-history]");
  const metaEl = document.querySelector("[data-site-history-meta]");
  const rangeButtons = [...document.querySelectorAll("[data-site-history] button[data-range]")];

  async function loadRange(range) {
    view.generation += 1;
    const generation = view.generation;
    view.range = range;
    view.points = null;
    view.dirty = true;
    for (const button of rangeButtons) button.setAttribute("aria-pressed", String(button.dataset.range === range));
    historyEl.dataset.shownRange = range;
    if (range === "live") {
      E.setText(metaEl, "live: the last 10 minutes");
      metaEl.dataset.state = "live";
      drawChart();
      return;
    }
    metaEl.dataset.state = "loading";
    E.setText(metaEl, "loading…");
    let answer;
    try {
      const response = await fetch(`${config.history_url}?${new URLSearchParams({ range })}`, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      answer = await response.json();
      if (!response.ok) answer = { error: answer.error || `HTTP ${response.status}` };
    } catch (err) {
      answer = { error: "the server could not be reached" };
    }
    if (generation !== view.generation) return;
    if (answer.error) {
      metaEl.dataset.state = "error";
      E.setText(metaEl, `history unavailable: ${answer.error}`);
      return;
    }
    for (const point of answer.points) for (const slug of Object.keys(point.chargers)) knowCharger(slug);
    view.points = answer.points;
    view.dirty = true;
    metaEl.dataset.state = "loaded";
    metaEl.dataset.points = String(answer.points.length);
    E.setText(metaEl, `${answer.points.length} periods · live paused: Live follows the controller`);
    drawChart();
  }

  for (const button of rangeButtons) button.addEventListener("click", () => loadRange(button.dataset.range));

  // --- State line, headroom, table ---------------------------------------------------------------

  const stateEl = document.querySelector("[data-site-state]");
  const badgeEl = document.querySelector("[data-site-state-badge]");
  const stateTextEl = document.querySelector("[data-site-state-text]");
  const meterEl = document.querySelector("[data-site-meter]");
  const ageEl = document.querySelector("[data-site-age]");
  const headroomEl = document.querySelector("[data-site-headroom]");
  const tableEl = document.querySelector("[data-site-chargers]");

  /** 12 -> "12 A", 6.54 -> "6.5 A", null -> "—": amperes() in gateway/site_views.py. */
  function amperes(value) {
    return value === null || value === undefined || !Number.isFinite(value) ? "—" : `${Number(value.toFixed(1))} A`;
  }

  /** "14:03 UTC": time_text() in gateway/site_views.py. */
  function timeText(iso) {
    return iso && iso.length >= 16 ? `${iso.slice(11, 16)} UTC` : iso || "";
  }

  /** meter_text() in gateway/site_views.py. */
  function meterText(status) {
    if (!status) return "meter: —";
    if (status.draw_source === "estimate") return "no meter: the chargers' currents + the base load";
    const age = status.meter_age_s;
    if (status.draw_source === "fallback") {
      return age === null || age === undefined ? "meter: no reading" : `meter stale: last read ${E.formatAge(age * 1000)}`;
    }
    return age === null || age === undefined ? "meter: —" : `meter read ${age.toFixed(1)} s ago`;
  }

  /** share_cells() in gateway/site_views.py. */
  function shareCells(share) {
    if (!share) return { allocated: "—", actual: "—", state: "", reason: "", override: "" };
    const actual = (share.actual_a || []).map((v) => String(Number(v.toFixed(1)))).join(" / ");
    let override = "";
    if (share.override_a !== null && share.override_a !== undefined) {
      override = `${amperes(share.override_a)}${share.override_until ? ` until ${timeText(share.override_until)}` : ""}`;
    }
    return {
      allocated: amperes(share.allocated_a),
      actual: actual ? `${actual} A` : "—",
      state: share.state || "",
      reason: share.reason || "",
      override,
    };
  }

  function renderTable(status) {
    if (!tableEl || !status) return;
    for (const share of status.chargers || []) {
      let row = tableEl.querySelector(`tr[data-charger="${CSS.escape(share.charge_point)}"]`);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.charger = share.charge_point;
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = share.charge_point;
        row.append(th);
        for (const cell of ["priority", "allocated", "actual", "state", "reason", "override"]) {
          const td = document.createElement("td");
          td.dataset.cell = cell;
          if (["priority", "allocated", "actual"].includes(cell)) td.className = "num";
          row.append(td);
        }
        tableEl.append(row);
      }
      const cells = shareCells(share);
      row.dataset.state = cells.state;
      E.setText(row.querySelector('[data-cell="priority"]'), String(share.priority));
      for (const key of ["allocated", "actual", "reason", "override"]) E.setText(row.querySelector(`[data-cell="${key}"]`), cells[key]);
      E.setText(row.querySelector('[data-cell="state"]'), cells.state || "—");
    }
  }

  let tableShown = null;

  function renderStatus(now) {
    if (!stateEl) return;
    if (!latest) {
      stateEl.dataset.state = "none";
      E.setText(badgeEl, "none");
      E.setText(stateTextEl, "no status from the controller yet");
      E.setText(meterEl, meterText(null));
      E.setText(ageEl, "never");
      return;
    }
    const ageMs = now - Date.parse(latest.at);
    const stale = ageMs > STALE_MS;
    let text = STATE_LABELS[latest.state] || latest.state;
    if (latest.reason) text = `${text}: ${latest.reason}`;
    if (stale) text = `no status for ${E.formatAge(ageMs).replace(/ ago$/, "")} (last: ${text})`;
    const state = stale ? "stale" : latest.state;
    stateEl.dataset.state = state;
    E.setText(badgeEl, state);
    E.setText(stateTextEl, text);
    E.setText(meterEl, meterText(latest));
    E.setText(ageEl, E.formatAge(ageMs));
    E.setDateTime(ageEl, latest.at);
    E.setText(headroomEl, stale || !Number.isFinite(latest.headroom_a) ? "—" : `${latest.headroom_a.toFixed(1)} A`);
    if (tableShown !== latest) {
      tableShown = latest;
      renderTable(latest);
    }
  }

  // --- Overrides ------------------------------------------------------------------------------------

  const listEl = document.querySelector("[data-override-list]");
  const noneEl = document.querySelector("[data-override-none]");
  const formEl = document.querySelector("[data-override-form]");
  const statusEl = document.querySelector("[data-override-status]");
  const chargerSelect = document.querySelector("[data-override-charger]");
  const currentInput = document.querySelector("[data-override-current]");
  let overrides = config.overrides || [];

  function csrfToken() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function renderOverrides(now) {
    if (!listEl) return;
    const shown = overrides.filter((o) => o.in_force && Date.parse(o.expires_at) > now);
    const key = shown.map((o) => o.id).join(",");
    if (listEl.dataset.shown === key) return;
    listEl.dataset.shown = key;
    const items = shown.map((o) => {
      const item = document.createElement("li");
      item.dataset.overrideId = o.id;
      item.dataset.chargePoint = o.charge_point;
      const what = document.createElement("span");
      what.className = "override-what";
      const strong = document.createElement("strong");
      strong.textContent = `${Number(o.current_a)} A`;
      const time = document.createElement("time");
      time.dateTime = o.expires_at;
      time.textContent = timeText(o.expires_at);
      what.append(strong, ` for ${o.charge_point} until `, time, ` by ${o.username}${o.reason ? ` — ${o.reason}` : ""}`);
      item.append(what);
      if (config.cancel_url) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "command-button";
        button.dataset.overrideCancel = o.id;
        button.textContent = "Cancel";
        item.append(" ", button);
      }
      return item;
    });
    listEl.replaceChildren(...items);
    if (noneEl) noneEl.hidden = items.length > 0;
  }

  function showOverrideStatus(state, text) {
    if (!statusEl) return;
    statusEl.hidden = false;
    statusEl.dataset.state = state;
    E.setText(statusEl, text);
  }

  async function post(url, body) {
    try {
      const response = await fetch(url, {
        method: "POST",
        body,
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
        credentials: "same-origin",
      });
      let answer = {};
      try {
        answer = await response.json();
      } catch (err) {
        answer = {}; // Django's own refusals (CSRF) are HTML
      }
      if (!response.ok && !answer.error) answer.error = response.status === 403 ? "refused (reload the page)" : `HTTP ${response.status}`;
      return answer;
    } catch (err) {
      return { error: "the server could not be reached" };
    }
  }

  function updateRange() {
    if (!chargerSelect || !currentInput) return;
    const option = chargerSelect.selectedOptions[0];
    if (!option) return;
    currentInput.max = option.dataset.max;
    currentInput.placeholder = `0 or ${option.dataset.min}–${option.dataset.max}`;
  }

  if (formEl) {
    updateRange();
    chargerSelect.addEventListener("change", updateRange);
    formEl.addEventListener("submit", async (event) => {
      event.preventDefault();
      const submit = formEl.querySelector("[data-override-submit]");
      submit.disabled = true;
      for (const el of formEl.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
      showOverrideStatus("sending", "Override: sending");
      const answer = await post(config.override_url, new URLSearchParams(new FormData(formEl)));
      submit.disabled = false;
      if (answer.override) {
        overrides = answer.overrides;
        const o = answer.override;
        showOverrideStatus("stored", `Override stored: ${Number(o.current_a)} A for ${o.charge_point} until ${timeText(o.expires_at)}`);
        formEl.elements.reason.value = "";
        renderOverrides(clock.now());
      } else {
        const field = answer.field && formEl.elements[answer.field];
        if (field) field.setAttribute("aria-invalid", "true");
        showOverrideStatus("failed", `Override refused — ${answer.error}`);
      }
    });
  }

  if (listEl) {
    listEl.addEventListener("click", async (event) => {
      const button = event.target.closest("[data-override-cancel]");
      if (!button || !config.cancel_url) return;
      button.disabled = true;
      const url = config.cancel_url.replace(/[0-9a-f-]{36}/, button.dataset.overrideCancel);
      const answer = await post(url, new URLSearchParams());
      if (answer.override) {
        overrides = answer.overrides;
        showOverrideStatus("cancelled", `Override of ${answer.override.charge_point} cancelled`);
        renderOverrides(clock.now());
      } else {
        button.disabled = false;
        showOverrideStatus("failed", `Cancel refused — ${answer.error}`);
      }
    });
  }

  function tick() {
    const now = clock.now();
    if (view.range === "live") trimLive(now);
    renderStatus(now);
    renderOverrides(now);
    drawChart();
  }

  if (latest) addLive(latest);
  E.connectLive(config.ws_path, onMessage);
  tick();
  window.setInterval(tick, TICK_MS);
})();
