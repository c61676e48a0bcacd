// The pipeline-health page: polls GET /pipeline/?format=json every few seconds and redraws the
// verdict, the hop latencies and one card per stage (gateway/pipeline/report.py makes the JSON):
// a poller's card lists its site controllers, a consumer's its consumers besides the telemetry groups.
//
// The last hop is measured here: the page opens the fleet WebSocket (as the fleet page does) and
// takes, per telemetry frame, at most three records: receipt on the server's clock - record ts is
// the whole chain up to this browser; minus the consumer's `to_consumer` (ts -> sinks done) it is
// the browser hop. The server's clock comes from each JSON answer's as_of, from the answer with
// the shortest round trip (an operator laptop whose clock is off must not skew the figure).
"use strict";

(function () {
  const E = window.EvDash;
  const config = E.readConfig();
  const WINDOW_MS = 60000;
  const SAMPLES_PER_FRAME = 3;
  const root = document.querySelector("[data-stages]");
  if (!root) return;

  // --- The server's clock ----------------------------------------------------------------------
  let clockOffsetMs = E.serverClock(config.server_now).offsetMs;
  let bestRttMs = Infinity;
  function noteServerTime(asOfIso, sentMs, receivedMs) {
    const serverMs = Date.parse(asOfIso);
    const rtt = receivedMs - sentMs;
    // The best of the recent answers; slowly forget an old best (the clock may drift or step).
    bestRttMs = Math.min(bestRttMs * 1.05, 60000);
    if (Number.isFinite(serverMs) && rtt <= bestRttMs) {
      bestRttMs = rtt;
      clockOffsetMs = serverMs - (sentMs + receivedMs) / 2;
    }
  }
  const serverNow = () => Date.now() + clockOffsetMs;

  // --- The browser hop ---------------------------------------------------------------------------
  const browserSamples = []; // [receivedAtMs, ts->browser ms]
  let lastReport = config.report;

  function sample(message) {
    if (message.type !== "telemetry" || !Array.isArray(message.records) || !message.records.length) return;
    const records = message.records;
    const picks =
      records.length <= SAMPLES_PER_FRAME ? records : [records[0], records[records.length >> 1], records[records.length - 1]];
    const now = serverNow();
    for (const record of picks) {
      const ts = Date.parse(record.ts);
      if (Number.isFinite(ts)) browserSamples.push([now, now - ts]);
    }
    while (browserSamples.length && browserSamples[0][0] < now - WINDOW_MS) browserSamples.shift();
  }

  function percentile(sorted, p) {
    return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
  }

  function browserHop() {
    const now = serverNow();
    while (browserSamples.length && browserSamples[0][0] < now - WINDOW_MS) browserSamples.shift();
    if (!browserSamples.length) return null;
    const sorted = browserSamples.map((s) => s[1]).sort((a, b) => a - b);
    const total = { p50: percentile(sorted, 50), p95: percentile(sorted, 95), samples: sorted.length };
    const upstream = lastReport && lastReport.to_consumer;
    if (!upstream) return { total, p50: null, p95: null };
    return {
      total,
      p50: Math.max(0, total.p50 - upstream.p50_ms),
      p95: Math.max(0, total.p95 - upstream.p95_ms),
    };
  }

  // --- Formatting --------------------------------------------------------------------------------
  function ms(value) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "—";
    if (value >= 10000) return `${(value / 1000).toFixed(0)} s`;
    if (value >= 1000) return `${(value / 1000).toFixed(1)} s`;
    return `${value.toFixed(value < 10 ? 1 : 0)} ms`;
  }
  const num = (value) => (value === null || value === undefined ? "—" : Number(value).toLocaleString("en"));
  const age = (seconds) => (seconds === null || seconds === undefined ? "—" : E.formatAge(seconds * 1000).replace(" ago", ""));

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-") || key === "title" || key === "role" || key === "datetime") node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function figure(label, value, attrs = {}) {
    return el("div", { class: "pipeline-figure", ...attrs }, el("dt", {}, label), el("dd", {}, value));
  }

  // --- Rendering ---------------------------------------------------------------------------------
  function renderVerdict(verdict) {
    const box = document.querySelector("[data-verdict]");
    for (const cls of [...box.classList]) if (cls.startsWith("state-")) box.classList.remove(cls);
    box.classList.add(`state-${verdict.state}`);
    box.dataset.state = verdict.state;
    E.setText(box.querySelector("[data-verdict-state]"), verdict.state);
    E.setText(box.querySelector("[data-verdict-why]"), verdict.why);
  }

  function renderHops(hops) {
    for (const hop of hops) {
      const box = document.querySelector(`[data-hop="${hop.hop}"]`);
      if (!box) continue;
      let value = `${ms(hop.p50_ms)} / ${ms(hop.p95_ms)}`;
      let detail = hop.samples ? `${hop.samples} samples${hop.estimated ? ", estimated" : ""}` : "no samples";
      if (hop.hop === "mqtt" && !hop.samples) detail = "no bridge reporting (direct path?)";
      if (hop.hop === "browser") {
        const measured = browserHop();
        value = measured ? `${ms(measured.p50)} / ${ms(measured.p95)}` : "— / —";
        detail = measured
          ? `${measured.total.samples} samples, estimated; ts → here ${ms(measured.total.p50)} / ${ms(measured.total.p95)}`
          : "waiting for telemetry on this page's socket";
        box.dataset.samples = measured ? measured.total.samples : 0;
      } else {
        box.dataset.samples = hop.samples;
      }
      E.setText(box.querySelector("[data-hop-value]"), value);
      E.setText(box.querySelector("[data-hop-detail]"), detail);
    }
  }

  function lagText(lag) {
    const parts = [];
    for (const [group, partitions] of Object.entries(lag.by_group)) {
      const each = Object.entries(partitions).map(([p, n]) => `p${p}: ${num(n)}`);
      parts.push(`${group} ${each.length ? each.join(", ") : "(no partitions)"}`);
    }
    return parts.join(" · ");
  }

  // A consumer besides the telemetry groups (command results, site status): its lag and dead letters.
  function otherConsumerFigure(consumer) {
    const label = consumer.name.charAt(0).toUpperCase() + consumer.name.slice(1);
    const value = consumer.assigned
      ? `lag ${num(consumer.lag_total)} · ${num(consumer.handled)} handled · ${num(consumer.dead_lettered)} dead-lettered`
      : `no partitions yet · ${num(consumer.dead_lettered)} dead-lettered`;
    const lagging = !consumer.assigned || consumer.lag_total > lastReport.thresholds.consumer_lag_lagging;
    return figure(label, value, {
      class: `pipeline-figure${lagging ? " state-lagging" : ""}`,
      "data-consumer": consumer.key,
      title: `${consumer.topic} as group ${consumer.group_id}: ${lagText({ by_group: { [consumer.name]: consumer.lag } })}`,
    });
  }

  // --- Site load management (a poller's site controllers) ----------------------------------------
  // The page's colours: a site whose control is failing (its rounds keep failing, or none for a
  // while) or refused (another poller holds it) is red; one in fallback (stale meter: failsafe
  // shares) is amber; one starting is grey.
  function siteState(site) {
    if (site.problem || site.state === "refused") return "failing";
    if (site.state === "fallback") return "lagging";
    if (site.state === "controlling") return "ok";
    return "unknown";
  }

  function commandsText(commands) {
    const each = Object.entries(commands || {}).map(([action, n]) => `${action} ${num(n)}`);
    const total = Object.values(commands || {}).reduce((sum, n) => sum + n, 0);
    return each.length ? `${num(total)} (${each.join(" · ")})` : "0";
  }

  function siteLine(site) {
    const state = siteState(site);
    const why = [site.problem, site.reason].filter(Boolean);
    const figures = [];
    if (site.state === "refused") {
      figures.push(figure("Held by", `poller ${site.holder} on ${site.holder_host}`, { "data-site-figure": "holder" }));
    } else {
      const ago = site.last_round_at ? E.formatAge(serverNow() - Date.parse(site.last_round_at)) : "none yet";
      const failed = site.failed_in_a_row ? `${num(site.errors)} · ${num(site.failed_in_a_row)} in a row` : num(site.errors);
      figures.push(
        figure("Rounds", `${num(site.rounds)} · ${num(site.urgent)} urgent`, { "data-site-figure": "rounds" }),
        figure("Failed rounds", failed, { "data-site-figure": "errors", class: `pipeline-figure${site.failed_in_a_row ? " state-failing" : ""}` }),
        figure("Last round", `${ago} · took ${ms(site.last_round_ms)}`, { "data-site-figure": "last-round", title: `one every ${site.period_s} s` }),
        figure("Commands sent", commandsText(site.commands), { "data-site-figure": "commands" })
      );
      if (site.headroom_a !== null && site.headroom_a !== undefined) {
        const source = site.draw_source === "meter" && site.meter_age_s !== null ? `meter, ${site.meter_age_s} s old` : site.draw_source;
        figures.push(figure("Headroom", `${site.headroom_a} A of ${site.limit_a} A (${source})`, { "data-site-figure": "headroom" }));
      }
    }
    return el(
      "div",
      { class: `pipeline-site state-${state}`, "data-site": site.site, "data-site-state": site.state, "data-state": state },
      el(
        "header",
        { class: "pipeline-site-header" },
        el("span", { class: "pipeline-state", "data-site-state-label": "" }, site.state),
        el("span", { class: "pipeline-stage-name" }, site.site)
      ),
      why.length ? el("ul", { class: "pipeline-why", "data-site-why": "" }, why.map((line) => el("li", {}, line))) : null,
      el("dl", { class: "pipeline-figures" }, figures)
    );
  }

  function siteControlBlock(stage) {
    const sites = stage.site_controllers || [];
    const totals = stage.site_control;
    const refused = sites.filter((site) => site.state === "refused").length;
    const summary = totals
      ? `${num(sites.length - refused)} controlled${refused ? `, ${num(refused)} refused` : ""} · ${num(totals.periods)} rounds · ${num(totals.errors)} failed`
      : "";
    return el(
      "section",
      { class: "pipeline-sites", "data-site-control": "" },
      el("h3", {}, "Site load management ", el("span", { class: "muted" }, summary)),
      sites.length ? sites.map(siteLine) : el("p", { class: "muted" }, "no load-managed site among this poller's charge points")
    );
  }

  function stageCard(stage) {
    const figures = [
      figure("Records", stage.records_per_s === null || stage.records_per_s === undefined ? num(stage.records) : `${num(stage.records)} · ${stage.records_per_s}/s`, { "data-figure": "records" }),
    ];
    if (stage.outbox) {
      figures.push(
        figure("Outbox", `${num(stage.outbox.depth)} waiting · oldest ${age(stage.outbox.oldest_age_s)}`, { "data-figure": "outbox" }),
        figure("Dropped", num(stage.outbox.dropped), { "data-figure": "dropped" })
      );
    }
    if (stage.consumer_lag) {
      figures.push(
        figure("Consumer lag", `${num(stage.consumer_lag.total)} messages`, { "data-figure": "lag", title: lagText(stage.consumer_lag) }),
        figure("Partitions", lagText(stage.consumer_lag), { "data-figure": "partitions" })
      );
    }
    if (stage.dead_letters !== null && stage.dead_letters !== undefined) {
      figures.push(figure("Dead letters", num(stage.dead_letters), { "data-figure": "dead-letters" }));
    }
    for (const consumer of stage.other_consumers || []) figures.push(otherConsumerFigure(consumer));
    if (stage.stats && stage.stats.charge_points !== undefined) {
      figures.push(figure("Charge points", num(stage.stats.charge_points), { "data-figure": "charge-points" }));
    }
    if (stage.stats && stage.stats.lateness) {
      figures.push(figure("Poll lateness", `${ms(stage.stats.lateness.p50_ms)} / ${ms(stage.stats.lateness.p95_ms)}`, { "data-figure": "lateness" }));
    }
    for (const [hop, summary] of Object.entries(stage.latency || {})) {
      figures.push(figure(`${hop} p50/p95`, `${ms(summary.p50_ms)} / ${ms(summary.p95_ms)}`, { "data-latency": hop }));
    }
    const error = stage.last_error
      ? el(
          "p",
          { class: `pipeline-error level-${(stage.last_error_level || "").toLowerCase()}`, "data-last-error": "" },
          el("strong", {}, `${stage.last_error_level || "last error"} `),
          el("time", { datetime: stage.last_error_at }, stage.last_error_at ? E.formatAge(serverNow() - Date.parse(stage.last_error_at)) : ""),
          ": ",
          stage.last_error
        )
      : el("p", { class: "pipeline-error muted", "data-last-error": "" }, "no warning or error");
    return el(
      "article",
      { class: `card pipeline-stage state-${stage.state}`, "data-stage-id": stage.id, "data-kind": stage.kind, "data-state": stage.state, "data-pid": stage.pid },
      el(
        "header",
        { class: "pipeline-stage-header" },
        el("span", { class: "pipeline-state", "data-stage-state": "" }, stage.state),
        el("h2", {}, `${stage.kind_label} `, el("span", { class: "pipeline-stage-name" }, stage.name)),
        el("span", { class: "muted" }, `${stage.host} · pid ${stage.pid} · reported ${E.formatAge(stage.seen_age_s * 1000)}`)
      ),
      stage.why.length ? el("ul", { class: "pipeline-why", "data-why": "" }, stage.why.map((why) => el("li", {}, why))) : null,
      el("dl", { class: "pipeline-figures" }, figures),
      stage.site_control || stage.site_controllers ? siteControlBlock(stage) : null,
      error
    );
  }

  function renderStages(stages) {
    const cards = stages.length
      ? stages.map(stageCard)
      : [el("p", { class: "card empty", "data-no-stages": "" }, "No stage has reported yet: are runpoller, runbridge and runconsumer running?")];
    root.replaceChildren(...cards);
  }

  function render(report) {
    lastReport = report;
    renderVerdict(report.verdict);
    renderHops(report.hops);
    renderStages(report.stages);
    const updated = document.querySelector("[data-pipeline-updated]");
    updated.dataset.stale = "false";
    updated.replaceChildren("as of ", el("time", { datetime: report.as_of }, new Date(Date.parse(report.as_of)).toLocaleTimeString()));
  }

  // --- Polling -----------------------------------------------------------------------------------
  let polling = false;
  async function poll() {
    if (polling) return;
    polling = true;
    const sent = Date.now();
    try {
      const response = await fetch(config.json_url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const report = await response.json();
      noteServerTime(report.as_of, sent, Date.now());
      render(report);
    } catch (err) {
      const updated = document.querySelector("[data-pipeline-updated]");
      updated.dataset.stale = "true";
      E.setText(updated, `cannot reach the server (${err.message}): showing the last answer`);
    } finally {
      polling = false;
    }
  }

  render(config.report);
  E.connectLive(config.ws_path, (message) => {
    sample(message);
  });
  window.setInterval(poll, config.refresh_s * 1000);
  // The browser hop between two answers too: it is this page's own measurement.
  window.setInterval(() => lastReport && renderHops(lastReport.hops), 1000);
})();
