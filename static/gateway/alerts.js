// The alert feed of the fleet page and of a charge point's page: the alerts that need attention
// (active, or cleared but never acknowledged), kept live from the page's socket, acknowledged with
// one click (who and when shown). A charge point's page reads ?charge_point=<slug> (its
// data-feed-url's query string is kept) and its socket sends only that charge point's alerts.
//
// It reads the feed over HTTP (GET /alerts/?format=json) when the page opens and each time the
// socket comes back (a telemetry snapshot that completes), then applies the socket's
// {"type": "alerts"} frames. An alert's cleared_at and acknowledged_at are only ever set once, so
// a late or repeated message can merge but never undo them: the order of HTTP answers and socket
// frames does not matter.
//
// Loaded after live.js and before the page script: it tees the messages of the page's one socket
// (EvDash.connectLive) instead of opening a second one (sockets per user are capped).
"use strict";

(function () {
  const E = window.EvDash;
  const listeners = [];
  const connectLive = E.connectLive;
  /** Call `fn(message)` for every message of the page's live socket, after the page's own handler. */
  E.onLiveMessage = (fn) => listeners.push(fn);
  E.connectLive = (path, onMessage) =>
    connectLive(path, (message) => {
      onMessage(message);
      for (const fn of listeners) fn(message);
    });

  const panel = document.querySelector("[data-alert-feed]");
  if (!panel) return;
  const list = panel.querySelector("[data-alert-feed-list]");
  const none = panel.querySelector("[data-alert-feed-none]");
  const count = panel.querySelector("[data-alert-feed-count]");
  const problem = panel.querySelector("[data-alert-feed-problem]");
  const csrfInput = panel.querySelector("input[name=csrfmiddlewaretoken]");
  const feedUrl = new URL(panel.dataset.feedUrl, window.location.href);
  feedUrl.searchParams.set("format", "json");
  feedUrl.searchParams.set("state", "attention");
  if (panel.dataset.site) feedUrl.searchParams.set("site", panel.dataset.site);
  // A charge point page's feed: its feed URL carries ?charge_point=<slug> (kept above).
  const chargePoint = feedUrl.searchParams.get("charge_point") || "";
  const ackUrlTemplate = panel.dataset.ackUrl; // holds the placeholder id ALERT_ID
  const chargePointUrl = panel.dataset.chargePointUrl; // holds __slug__; none on a charge point's page
  const ALERT_ID = "00000000-0000-0000-0000-000000000000";
  const MAX_SHOWN = 100;
  const SEVERITY_RANK = { critical: 0, warning: 1, info: 2 };

  const alerts = new Map(); // id -> alert message (gateway.alerts.messages.alert_json)
  const items = new Map(); // id -> <li>

  /** Merge a message into what the page knows of its alert: the set-once fields never go back to null. */
  function merge(alert) {
    const known = alerts.get(alert.id);
    const merged = { ...(known || {}), ...alert };
    if (known) {
      for (const field of ["cleared_at", "acknowledged_at", "acknowledged_by"]) {
        if (merged[field] === null && known[field] !== null) merged[field] = known[field];
      }
    }
    alerts.set(alert.id, merged);
  }

  /** Whether the alert belongs in this feed (a site's fleet page shows its site's, a charge point's page its own). */
  function shown(alert) {
    return (!panel.dataset.site || alert.site === panel.dataset.site) && (!chargePoint || alert.charge_point === chargePoint);
  }

  function timeText(iso) {
    const date = new Date(iso);
    return Number.isFinite(date.getTime()) ? date.toLocaleString() : iso;
  }

  function timeElement(iso) {
    const el = document.createElement("time");
    el.dateTime = iso;
    el.textContent = timeText(iso);
    el.title = iso;
    return el;
  }

  function span(className, text) {
    const el = document.createElement("span");
    el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  /** Fill the <li> of an alert (rebuilt whole: an item is a handful of elements). */
  function fill(li, alert) {
    li.className = `alert-item severity-${alert.severity}${alert.cleared_at ? " is-cleared" : " is-active"}${alert.acknowledged_at ? " is-acknowledged" : ""}`;
    li.dataset.alertId = alert.id;
    li.dataset.chargePoint = alert.charge_point;
    li.dataset.rule = alert.rule;
    li.replaceChildren();
    li.append(span("alert-severity", alert.severity));
    const title = span("alert-title");
    const rule = document.createElement("strong");
    rule.textContent = alert.rule;
    if (chargePointUrl) {
      const link = document.createElement("a");
      link.href = chargePointUrl.replace("__slug__", encodeURIComponent(alert.charge_point));
      link.textContent = alert.charge_point;
      title.append(rule, " · ", link);
    } else {
      title.append(rule, " · ", alert.charge_point);
    }
    li.append(title);
    li.append(span("alert-message", alert.message));
    const when = span("alert-when");
    when.append("raised ", timeElement(alert.raised_at));
    if (alert.cleared_at) when.append(", cleared ", timeElement(alert.cleared_at));
    else when.append(", ", span("alert-active", "active"));
    li.append(when);
    const ack = span("alert-ack");
    ack.dataset.alertAck = "";
    if (alert.acknowledged_at) {
      ack.append(`acknowledged by ${alert.acknowledged_by || "a deleted user"} at `, timeElement(alert.acknowledged_at));
    } else {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Acknowledge";
      button.dataset.acknowledge = alert.id;
      ack.append(button);
    }
    li.append(ack);
  }

  /** Active first, then by severity, newest first. */
  function order(a, b) {
    return (
      (a.cleared_at ? 1 : 0) - (b.cleared_at ? 1 : 0) ||
      (SEVERITY_RANK[a.severity] ?? 9) - (SEVERITY_RANK[b.severity] ?? 9) ||
      Date.parse(b.raised_at) - Date.parse(a.raised_at)
    );
  }

  function render() {
    const sorted = [...alerts.values()].filter(shown).sort(order).slice(0, MAX_SHOWN);
    const keep = new Set(sorted.map((alert) => alert.id));
    for (const [id, li] of items) {
      if (!keep.has(id)) {
        li.remove();
        items.delete(id);
      }
    }
    sorted.forEach((alert, index) => {
      let li = items.get(alert.id);
      if (!li) {
        li = document.createElement("li");
        items.set(alert.id, li);
      }
      const signature = JSON.stringify(alert);
      if (li.dataset.signature !== signature) {
        fill(li, alert);
        li.dataset.signature = signature;
      }
      if (list.children[index] !== li) list.insertBefore(li, list.children[index] || null);
    });
    const active = sorted.filter((alert) => !alert.cleared_at).length;
    none.hidden = sorted.length > 0;
    const cleared = sorted.length - active;
    count.textContent = sorted.length ? `(${active} active${cleared ? `, ${cleared} cleared` : ""})` : "";
    panel.dataset.alertCount = String(sorted.length);
  }

  function showProblem(text) {
    problem.textContent = text;
    problem.hidden = !text;
  }

  let loading = null;
  /** Read the alerts that need attention; drop those known from before that no longer do. */
  async function load() {
    if (loading) return loading;
    loading = (async () => {
      try {
        const response = await fetch(feedUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
        if (!response.ok || response.redirected) throw new Error(`HTTP ${response.status}`);
        const answer = await response.json();
        const asOf = Date.parse(answer.as_of);
        const listed = new Set(answer.alerts.map((alert) => alert.id));
        for (const [id, alert] of alerts) {
          // Raised after the server read the feed: the socket told us first; keep it.
          if (!listed.has(id) && Date.parse(alert.raised_at) <= asOf) alerts.delete(id);
        }
        for (const alert of answer.alerts) merge(alert);
        showProblem("");
        render();
      } catch (err) {
        showProblem("The alerts could not be loaded: reload the page.");
      } finally {
        loading = null;
      }
    })();
    return loading;
  }

  async function acknowledge(id, button) {
    button.disabled = true;
    try {
      const response = await fetch(ackUrlTemplate.replace(ALERT_ID, id), {
        method: "POST",
        headers: { "X-CSRFToken": csrfInput.value, Accept: "application/json" },
        credentials: "same-origin",
      });
      let answer = {};
      try {
        answer = await response.json();
      } catch (err) {
        answer = {}; // Django's own refusals (CSRF, login) are HTML
      }
      if (!answer.alert) throw new Error(answer.error || (response.status === 403 ? "refused (reload the page)" : `HTTP ${response.status}`));
      merge(answer.alert);
      showProblem("");
      render();
    } catch (err) {
      button.disabled = false;
      showProblem(`Acknowledging failed: ${err.message}`);
    }
  }

  list.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-acknowledge]");
    if (button) acknowledge(button.dataset.acknowledge, button);
  });

  let snapshots = 0;
  E.onLiveMessage((message) => {
    if (message.type === "alerts" && Array.isArray(message.alerts)) {
      for (const alert of message.alerts) merge(alert);
      render();
    } else if (message.type === "snapshot" && !message.more) {
      // The socket is (back) up: alerts may have changed while it was down.
      snapshots += 1;
      if (snapshots > 1) load();
    }
  });
  load();
})();
