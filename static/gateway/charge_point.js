// The charge point page: status, values, identity and live charts, from /ws/chargepoints/<slug>/.
// Records are buffered and drawn once a second; the charts keep a bounded window of points.
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
