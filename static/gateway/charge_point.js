// The charge point page: status, values, identity and charts, from /ws/chargepoints/<slug>/ and
// GET /chargepoints/<slug>/history/. The charts open with the last hour from the database and go on
// live (see "Charts" below for the seam); a range picker shows a day, a week or a custom range.
// Values and charts are drawn once a second.
// Commands: the panel (only in the page of a user with the permission) posts to the server; the
// socket brings each command's updates (pending, then applied or failed), and the page asks
// GET /commands/<id>/ itself when none came by the command's expiry.
"use strict";

(function () {
  const E = window.EvDash;
  const config = E.readConfig();
  const clock = E.serverClock(config.server_now);
  const cp = config.charge_point;
  const TICK_MS = 1000;
  const PHASE_COLOURS = ["#8b5a2b", "#1f2937", "#94a3b8"]; // L1 brown, L2 black, L3 grey (IEC 60446)

  let latest = cp.record;

  /** A record of this charge point: the newest one shows in the values, each one in the charts. */
  function receive(record) {
    if (!record || record.charge_point !== cp.slug) return;
    if (E.isNewer(record, latest)) latest = record;
    acceptLive(record);
  }

  // Snapshot frames (several for a big snapshot) and telemetry frames (one per consumer batch) both
  // carry `records`, and are merged the same way: every record of this charge point is plotted once.
  function onMessage(message) {
    if (message.type === "snapshot" || message.type === "telemetry") {
      for (const record of message.records || []) receive(record);
    }
    if (message.type === "command") updateCommand(message.command);
    // A (re)connected socket missed the updates sent while it was down: ask for the pending ones.
    if (message.type === "snapshot" && !message.more) refreshPending();
  }

  // --- Commands ------------------------------------------------------------------------------

  const commandConfig = config.commands || { recent: [], recent_max: 5, action_labels: {}, reason_labels: {} };
  // After a command's expiry the server marks it failed within seconds if no poller answered: the
  // page asks a little after the expiry, then now and then until the command is final.
  const FALLBACK_GRACE_MS = 1000;
  const FALLBACK_REPEAT_MS = 5000;
  const commands = new Map(); // id -> the newest state known of each command listed or sent
  const fallbackTimers = new Map(); // id -> timer of its next GET
  const listEl = document.querySelector("[data-command-list]");
  const listEmptyEl = document.querySelector(".command-list-empty");
  const statusEl = document.querySelector("[data-command-status]");
  let followed = null; // id of the last command sent from this page: the status line shows it

  /** 10 -> "10", 6.5 -> "6.5": Python's "{:g}" (format_amperes() in views.py). */
  function formatAmperes(value) {
    return value === null || value === undefined ? "" : String(Number(Number(value).toPrecision(6)));
  }

  /** The same wording as describe_command() in views.py. */
  function describeCommand(command) {
    const what =
      command.action === "set_current_limit"
        ? `Set limit ${formatAmperes(command.value)} A`
        : commandConfig.action_labels[command.action] || command.action;
    let text = "pending";
    if (command.status === "applied") {
      text = "applied";
      if (command.read_back !== null && command.read_back !== undefined) {
        const unit = command.action === "set_current_limit" ? " A" : "";
        text += ` — read back ${formatAmperes(command.read_back)}${unit}`;
      }
    } else if (command.status === "failed") {
      const code = command.reason_code || "";
      text = `failed — ${command.reason || commandConfig.reason_labels[code] || code}`;
    }
    return { what, text };
  }

  /** "14:03:27 UTC", as time_text() in views.py. */
  function timeText(iso) {
    const ms = Date.parse(iso);
    return Number.isFinite(ms) ? `${new Date(ms).toISOString().slice(11, 19)} UTC` : "";
  }

  function isFinal(command) {
    return command.status === "applied" || command.status === "failed";
  }

  /** Keep the newest state of a command: a final one is never replaced by an older pending one. */
  function updateCommand(command) {
    if (!command || command.charge_point !== cp.slug || !command.id) return;
    const known = commands.get(command.id);
    if (known && isFinal(known) && !isFinal(command)) return;
    commands.set(command.id, command);
    if (isFinal(command)) {
      window.clearTimeout(fallbackTimers.get(command.id));
      fallbackTimers.delete(command.id);
    } else {
      scheduleFallback(command);
    }
    renderCommands();
  }

  function renderCommands() {
    const newest = [...commands.values()]
      .sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at))
      .slice(0, commandConfig.recent_max);
    if (listEl) {
      const items = newest.map((command) => {
        const { what, text } = describeCommand(command);
        const item = document.createElement("li");
        item.className = "command-item";
        item.dataset.commandId = command.id;
        item.dataset.state = command.status;
        const whatEl = document.createElement("span");
        whatEl.className = "command-what";
        whatEl.textContent = what;
        const resultEl = document.createElement("span");
        resultEl.className = "command-result";
        resultEl.textContent = text;
        const meta = document.createElement("span");
        meta.className = "command-meta muted";
        const time = document.createElement("time");
        time.dateTime = command.created_at;
        time.textContent = timeText(command.created_at);
        meta.append(`${command.username} · `, time);
        item.append(whatEl, resultEl, meta);
        return item;
      });
      listEl.replaceChildren(...items);
      listEmptyEl.hidden = items.length > 0;
    }
    const shown = followed && commands.get(followed);
    if (statusEl && shown) showStatus(shown.status, `${describeCommand(shown).what}: ${describeCommand(shown).text}`);
  }

  function showStatus(state, text) {
    statusEl.hidden = false;
    statusEl.dataset.state = state;
    E.setText(statusEl, text);
  }

  /** Ask the server about a pending command once its expiry has passed, if no update came by then. */
  function scheduleFallback(command, delayMs) {
    if (fallbackTimers.has(command.id)) return;
    const due = delayMs ?? Math.max(Date.parse(command.expires_at) - clock.now(), 0) + FALLBACK_GRACE_MS;
    fallbackTimers.set(
      command.id,
      window.setTimeout(() => fetchCommand(command.id), Number.isFinite(due) ? due : FALLBACK_REPEAT_MS),
    );
  }

  async function fetchCommand(id) {
    fallbackTimers.delete(id);
    try {
      const response = await fetch(commandConfig.command_url.replace(/[0-9a-f-]{36}/, id), {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      if (response.ok) updateCommand((await response.json()).command);
    } catch (err) {
      console.warn("evdash: could not fetch command", id, err);
    }
    const command = commands.get(id);
    if (command && !isFinal(command)) scheduleFallback(command, FALLBACK_REPEAT_MS);
  }

  function refreshPending() {
    for (const command of commands.values()) {
      if (!isFinal(command)) {
        window.clearTimeout(fallbackTimers.get(command.id));
        fallbackTimers.delete(command.id);
        fetchCommand(command.id);
      }
    }
  }

  /** Post one command form; the server answers 201 with the pending command, or why not. */
  async function send(form, submitter) {
    const body = new URLSearchParams(new FormData(form));
    const buttons = [...document.querySelectorAll("[data-commands] button")];
    const enabled = buttons.filter((button) => !button.disabled);
    for (const button of enabled) button.disabled = true;
    followed = null;
    showStatus("sending", `${submitter ? submitter.textContent : "Command"}: sending`);
    try {
      const response = await fetch(commandConfig.send_url, {
        method: "POST",
        body,
        headers: { "X-CSRFToken": body.get("csrfmiddlewaretoken"), Accept: "application/json" },
        credentials: "same-origin",
      });
      let answer = {};
      try {
        answer = await response.json();
      } catch (err) {
        answer = {}; // Django's own refusals (CSRF, 404 pages) are HTML
      }
      if (answer.command) {
        followed = answer.command.id;
        updateCommand(answer.command);
      } else {
        const reason = answer.error || (response.status === 403 ? "refused (reload the page)" : `HTTP ${response.status}`);
        showStatus("failed", `failed — ${reason}`);
      }
    } catch (err) {
      showStatus("failed", "failed — the server could not be reached");
    } finally {
      for (const button of enabled) button.disabled = false;
    }
  }

  for (const form of document.querySelectorAll("[data-command-form]")) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      // The browser has checked the limit against the profile's range (min, max, step); the server checks again.
      send(form, event.submitter);
    });
  }
  for (const command of commandConfig.recent) updateCommand(command);

  // --- Charts: the history from the database, then live ---------------------------------------
  //
  // The page opens with the last hour from GET .../history/ (raw records, or server-side buckets
  // for fast pollers), then extends it with live records. The seam: the history answer names the
  // newest raw record it holds ("last": ts and seq); a live record at or before it is already
  // plotted and is dropped. Live records that come while the history loads wait in a queue and go
  // through the same rule once it has arrived. The history group of the consumer may store a
  // record after the live push showed it elsewhere, so a history read can miss the newest records
  // the socket will never send again: a step between two plotted records longer than GAP_MS asks
  // the history for what lies between (a few times, as the history catches up), and a point is
  // plotted once per timestamp whichever way it came. A socket that reconnects leaves such a step
  // too, and is filled the same way.
  //
  // The range picker reloads the charts: "Last hour" follows live; a day, a week or a custom range
  // is a fixed picture (downsampled by the server to at most HISTORY_POINTS points) that live
  // records do not scroll away: the values above stay live, and "Last hour" returns to following.

  const HOUR_MS = 3600 * 1000;
  // The view's bound on points per answer (gateway/history_views.py MAX_POINTS_MAX).
  const HOUR_MAX_POINTS = 5000;
  // Day, week and custom ranges: the server's default bucketing target.
  const HISTORY_POINTS = 1500;
  // The values the charts draw (historyPoint and the band): the history sends only these.
  const CHART_ROLES = ["power_w", "current_l1_a", "current_l2_a", "current_l3_a"];
  // What a following chart holds at most: two hours at 1 Hz. A poller faster than 0.5 s reaches it
  // before the hour is over; its oldest points then leave first.
  const LIVE_MAX_POINTS = 7200;
  const GAP_MS = Math.max(2 * cp.poll_interval_ms, cp.poll_interval_ms + 1000);
  const FILL_DELAY_MS = 1500;
  const FILL_ATTEMPTS = 3;
  const MAX_QUEUED = LIVE_MAX_POINTS;

  const powerChart = document.getElementById("power-chart");
  const currentChart = document.getElementById("current-chart");
  const historyEl = document.querySelector("[data-history]");
  const historyUrl = historyEl ? historyEl.dataset.historyUrl : null;
  const metaEl = document.querySelector("[data-history-meta]");
  const customForm = document.querySelector("[data-history-custom]");
  const rangeButtons = [...document.querySelectorAll("button[data-range]")];
  let chartsReady = false;

  const series = {
    range: "hour", // hour | day | week | custom
    following: true, // live records extend the charts (the last hour only)
    loading: false,
    generation: 0, // one per load: an answer of an older load is ignored
    // Parallel arrays, oldest first; t in ms since the epoch.
    t: [],
    kw: [],
    l1: [],
    l2: [],
    l3: [],
    plotted: new Set(), // the timestamps in t: a sample is plotted once
    band: { t: [], min: [], max: [] }, // bucketed history: the power's min and max per bucket
    newest: null, // { t, seq } of the newest record plotted: the seam
    queue: [], // live records that came while the history loaded
    seamDropped: 0, // live records not plotted because the charts held them already
    dirty: false,
    revision: 0,
    uirevision: "hour-0",
  };

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
      series.dirty = true;
    });
  }

  function isAfter(key, other) {
    return key.t > other.t || (key.t === other.t && key.seq > other.seq);
  }

  function numberOrNull(value) {
    return value === null || value === undefined || !Number.isFinite(value) ? null : value;
  }

  /** Insert one sample (kept in time order); false when a sample of that time is plotted already. */
  function insertPoint(t, kw, l1, l2, l3) {
    if (series.plotted.has(t)) return false;
    let index = series.t.length;
    if (index > 0 && series.t[index - 1] > t) {
      let low = 0;
      while (low < index) {
        const mid = (low + index) >> 1;
        if (series.t[mid] < t) low = mid + 1;
        else index = mid;
      }
    }
    series.t.splice(index, 0, t);
    series.kw.splice(index, 0, kw);
    series.l1.splice(index, 0, l1);
    series.l2.splice(index, 0, l2);
    series.l3.splice(index, 0, l3);
    series.plotted.add(t);
    series.dirty = true;
    return true;
  }

  function insertRecord(record) {
    const values = record.values || {};
    const watts = numberOrNull(values.power_w);
    return insertPoint(
      E.recordTime(record),
      watts === null ? null : watts / 1000,
      numberOrNull(values.current_l1_a),
      numberOrNull(values.current_l2_a),
      numberOrNull(values.current_l3_a),
    );
  }

  /** A live record of this charge point: plotted once, after the history's newest record. */
  function acceptLive(record) {
    if (!series.following) return;
    if (series.loading) {
      series.queue.push(record);
      if (series.queue.length > MAX_QUEUED) series.queue.shift();
      return;
    }
    const key = { t: E.recordTime(record), seq: record.seq };
    if (!Number.isFinite(key.t)) return;
    if (series.newest && !isAfter(key, series.newest)) {
      // In the history already, or plotted: counted, for whoever wonders how the seam went.
      series.seamDropped += 1;
      if (historyEl) historyEl.dataset.seamDropped = String(series.seamDropped);
      return;
    }
    if (series.newest && key.t - series.newest.t > GAP_MS) fillGap(series.newest.t, key.t, 1);
    insertRecord(record);
    series.newest = key;
  }

  function historyParams(range, start, end) {
    if (range === "custom") return { start, end, max_points: HISTORY_POINTS };
    if (range === "hour") {
      // Enough for every record of the hour raw (the poll interval, with room for jitter).
      const expected = Math.ceil((HOUR_MS / cp.poll_interval_ms) * 1.2) + 10;
      return { range, max_points: Math.min(HOUR_MAX_POINTS, Math.max(HISTORY_POINTS, expected)) };
    }
    return { range, max_points: HISTORY_POINTS };
  }

  /** GET the history; the answer's JSON, or { error } (the view says why in JSON, the network may not). */
  async function fetchHistory(params) {
    if (!historyUrl) return { error: "no history here" };
    try {
      const query = new URLSearchParams({ ...params, roles: CHART_ROLES.join(",") });
      const response = await fetch(`${historyUrl}?${query}`, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      let answer = null;
      try {
        answer = await response.json();
      } catch (err) {
        answer = null;
      }
      if (!response.ok || !answer) return { error: (answer && answer.error) || `HTTP ${response.status}` };
      return answer;
    } catch (err) {
      return { error: "the server could not be reached" };
    }
  }

  /** Ask the history for the records strictly between two plotted ones (a few times: it may lag). */
  function fillGap(fromMs, toMs, attempt) {
    const generation = series.generation;
    window.setTimeout(async () => {
      if (generation !== series.generation) return;
      const answer = await fetchHistory({
        start: new Date(fromMs).toISOString(),
        end: new Date(toMs).toISOString(),
        max_points: HOUR_MAX_POINTS,
      });
      if (generation !== series.generation || answer.error) return;
      // Buckets cannot be merged with records: a gap that long stays a gap until the next reload.
      if (answer.bucket_s === 0) {
        answer.t.forEach((ts, i) => {
          const t = Date.parse(ts);
          if (t > fromMs && t < toMs) insertPoint(t, ...historyPoint(answer, i));
        });
      }
      if (attempt < FILL_ATTEMPTS) fillGap(fromMs, toMs, attempt + 1);
    }, FILL_DELAY_MS * attempt);
  }

  /** [kW, L1, L2, L3] of the history answer's i-th point (raw values or bucket averages). */
  function historyPoint(answer, i) {
    const column = (role) => numberOrNull((answer.values[role] || [])[i]);
    const watts = column("power_w");
    return [watts === null ? null : watts / 1000, column("current_l1_a"), column("current_l2_a"), column("current_l3_a")];
  }

  /** Replace the charts' points by a history answer. */
  function takeHistory(answer) {
    for (const key of ["t", "kw", "l1", "l2", "l3"]) series[key] = [];
    series.plotted = new Set();
    series.band = { t: [], min: [], max: [] };
    if (answer.error) {
      series.newest = null;
    } else {
      answer.t.forEach((ts, i) => insertPoint(Date.parse(ts), ...historyPoint(answer, i)));
      if (answer.bucket_s > 0 && answer.min && answer.max) {
        const kw = (list, i) => (numberOrNull((list || [])[i]) === null ? null : list[i] / 1000);
        series.band = {
          t: answer.t.map((ts) => Date.parse(ts)),
          min: answer.t.map((_, i) => kw(answer.min.power_w, i)),
          max: answer.t.map((_, i) => kw(answer.max.power_w, i)),
        };
      }
      series.newest = answer.last ? { t: Date.parse(answer.last.ts), seq: answer.last.seq } : null;
    }
    series.dirty = true;
  }

  function describeBucket(seconds) {
    if (seconds >= 3600 && seconds % 3600 === 0) return `${seconds / 3600} h`;
    if (seconds >= 60 && seconds % 60 === 0) return `${seconds / 60} min`;
    return `${Number(seconds.toPrecision(3))} s`;
  }

  /** The discreet line under the picker: what the server sent, how it was made, how long it took. */
  function showMeta(answer) {
    if (!metaEl) return;
    metaEl.dataset.state = answer ? (answer.error ? "error" : "loaded") : "loading";
    if (!answer) {
      E.setText(metaEl, "loading…");
      return;
    }
    if (answer.error) {
      E.setText(metaEl, `history unavailable: ${answer.error}${series.following ? " (live only)" : ""}`);
      return;
    }
    metaEl.dataset.range = answer.range;
    metaEl.dataset.start = answer.start;
    metaEl.dataset.end = answer.end;
    metaEl.dataset.points = String(answer.points);
    metaEl.dataset.source = answer.source;
    metaEl.dataset.bucketS = String(answer.bucket_s);
    metaEl.dataset.queryMs = String(answer.query_ms);
    const how = answer.bucket_s > 0 ? `${describeBucket(answer.bucket_s)} averages (${answer.source})` : "raw records";
    const after = series.following ? "then live" : "live paused: Last hour follows live";
    E.setText(metaEl, `${answer.points} points · ${how} · query ${answer.query_ms.toFixed(1)} ms · ${after}`);
  }

  function renderPicker() {
    for (const button of rangeButtons) {
      button.setAttribute("aria-pressed", String(button.dataset.range === series.range));
    }
    if (historyEl) historyEl.dataset.shownRange = series.range;
  }

  /** Load a range into the charts: the last hour (then live), a day, a week, or start..end (ISO). */
  async function load(range, start, end) {
    series.generation += 1;
    const generation = series.generation;
    series.range = range;
    series.following = range === "hour";
    series.loading = true;
    series.queue = [];
    renderPicker();
    showMeta(null);
    const answer = await fetchHistory(historyParams(range, start, end));
    if (generation !== series.generation) return;
    series.loading = false;
    takeHistory(answer);
    series.uirevision = `${range}-${generation}`; // a new range: the operator's old zoom goes
    // Live records that came meanwhile: the seam drops those the history holds.
    const queued = series.queue.sort((a, b) => E.recordTime(a) - E.recordTime(b) || a.seq - b.seq);
    series.queue = [];
    for (const record of queued) acceptLive(record);
    showMeta(answer);
    drawCharts(clock.now()); // now, not at the next tick: the picker answers at once
  }

  /** A following chart keeps the last hour (and at most LIVE_MAX_POINTS). */
  function trim(now) {
    let drop = 0;
    while (drop < series.t.length && series.t[drop] < now - HOUR_MS) drop += 1;
    drop = Math.max(drop, series.t.length - LIVE_MAX_POINTS);
    if (drop <= 0) return;
    for (const t of series.t.slice(0, drop)) series.plotted.delete(t);
    for (const key of ["t", "kw", "l1", "l2", "l3"]) series[key].splice(0, drop);
    series.dirty = true;
  }

  function drawCharts(now) {
    if (series.following) trim(now);
    if (!chartsReady || !series.dirty) return;
    series.dirty = false;
    series.revision += 1;
    const x = series.t.map((t) => new Date(t));
    // Copies: the series arrays grow between two draws, the charts must keep what they drew.
    const power = { ...line("Power", "#16a34a"), x, y: series.kw.slice(), hovertemplate: "%{y:.2f} kW<extra></extra>" };
    const traces = [power];
    if (series.band.t.length > 0) {
      // Bucketed history: the line is each bucket's average, the shaded band its min to max.
      const bandX = series.band.t.map((t) => new Date(t));
      const edge = { type: "scatter", mode: "lines", x: bandX, line: { width: 0 }, hoverinfo: "skip", showlegend: false };
      traces.push({ ...edge, name: "Min", y: series.band.min });
      traces.push({ ...edge, name: "Max", y: series.band.max, fill: "tonexty", fillcolor: "rgba(22,163,74,0.15)" });
    }
    const phases = [series.l1, series.l2, series.l3].map((y, i) => ({
      ...line(`L${i + 1}`, PHASE_COLOURS[i]),
      x,
      y: y.slice(),
      hovertemplate: `L${i + 1} %{y:.1f} A<extra></extra>`,
    }));
    const layout = (extra) => ({ ...extra, uirevision: series.uirevision, datarevision: series.revision });
    Plotly.react(powerChart, traces, layout(E.plotLayout("kW")), E.PLOT_CONFIG);
    Plotly.react(
      currentChart,
      phases,
      layout(E.plotLayout("A", { showlegend: true, legend: { orientation: "h", x: 0, y: 1.12 } })),
      E.PLOT_CONFIG,
    );
  }

  /** "2025-01-31T08:00:00" in this browser's time zone, as a datetime-local input shows it. */
  function localInputValue(ms) {
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  for (const button of rangeButtons) {
    button.addEventListener("click", () => {
      const range = button.dataset.range;
      if (range === "custom") {
        customForm.hidden = false;
        if (!customForm.elements.start.value) {
          customForm.elements.start.value = localInputValue(clock.now() - 24 * HOUR_MS);
          customForm.elements.end.value = localInputValue(clock.now());
        }
        customForm.elements.start.focus();
        return;
      }
      customForm.hidden = true;
      load(range);
    });
  }
  if (customForm) {
    customForm.addEventListener("submit", (event) => {
      event.preventDefault();
      // datetime-local is this browser's local time: the server gets UTC.
      const start = new Date(customForm.elements.start.value);
      const end = new Date(customForm.elements.end.value);
      if (!Number.isFinite(start.getTime()) || !Number.isFinite(end.getTime())) return;
      load("custom", start.toISOString(), end.toISOString());
    });
  }

  const badge = document.querySelector(".cp-state .badge");
  const errorEl = document.querySelector(".cp-error");
  const ageEl = document.querySelector(".cp-age-text");
  const valueEls = [...document.querySelectorAll("[data-value]")];
  const extraBody = document.querySelector("[data-extra]");
  const extraEmpty = document.querySelector(".identity-empty");
  const activeLimitEl = document.querySelector("[data-active-limit]");
  const activeLimitValueEl = document.querySelector("[data-active-limit-value]");
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
    // The limit an operator command set and the poller holds (null: none).
    const active = formatAmperes(latest.active_limit_a);
    E.setText(activeLimitValueEl, active);
    if (activeLimitEl) activeLimitEl.hidden = active === "";
    // An offline record carries no identity: keep showing the last one read.
    if (latest.extra && Object.keys(latest.extra).length > 0) renderExtra(latest.extra);
  }

  function tick() {
    const now = clock.now();
    render(now);
    drawCharts(now);
  }

  // The socket first, so that no record falls between the history read and the first live one.
  E.connectLive(config.ws_path, onMessage);
  load("hour");
  tick();
  window.setInterval(tick, TICK_MS);
})();
