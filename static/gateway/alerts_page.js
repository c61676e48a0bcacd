// The /alerts/ page, kept live: a new alert that matches the page's filters appears on the first
// page, every alert shown follows its clear and its acknowledgement in place, and the count follows.
//
// It starts from what the view rendered (page-config: the page's alerts as alert_json, the filters
// as data from gateway.alerts.report, the page number and the total), then listens on the page's
// one socket (/ws/alerts/: alert updates only) through EvDash.connectLive, which reconnects with
// backoff like every live page. Each time the socket is (back) up, its snapshot (one empty frame)
// completes and the page reads itself again over HTTP (GET /alerts/?<filters>&page=N&format=json):
// what changed between the render and the socket, or while the socket was down, is not missed.
//
// What an operator sees:
// - Only the first page takes new alerts in, in order, keeping its per_page newest (what a reload
//   shows). A later page keeps its rows where they are (whoever reads older alerts keeps their
//   place) and says how many new alerts arrived, with a link to the newest.
// - A row whose alert leaves the filters (say, acknowledged on "Needs attention") stays, updated and
//   dimmed, until the next reload or re-read: rows never vanish under the pointer.
// - Acknowledge posts in the background (the form still works without this script).
// cleared_at and acknowledged_at are set once: a late or repeated message merges but never undoes
// them, so the order of HTTP answers and socket frames does not matter.
"use strict";

(function () {
  const E = window.EvDash;
  const config = E.readConfig();
  if (!config.ws_path) return; // bad filters: the page shows the errors, nothing is live

  const table = document.querySelector("[data-alert-table]");
  const body = table.tBodies[0];
  const none = document.querySelector("[data-alert-none]");
  const count = document.querySelector("[data-alert-count]");
  const pages = document.querySelector("[data-alert-pages]");
  const older = document.querySelector("[data-alert-older]");
  const newer = document.querySelector("[data-alert-newer]");
  const newerText = document.querySelector("[data-alert-newer-text]");
  const problem = document.querySelector("[data-alert-problem]");
  const filter = config.filter;
  const firstPage = config.page === 1;
  const SET_ONCE = ["cleared_at", "acknowledged_at", "acknowledged_by"];
  // What an event sets: the alert before it had these unset (a raise has no before).
  const EVENT_SETS = { cleared: ["cleared_at"], acknowledged: ["acknowledged_at", "acknowledged_by"] };
  const REREAD_RETRY_MS = 5000;

  const rows = new Map(); // id -> { alert, tr, signature, touched }: the alerts on this page
  const counted = new Map(); // id -> whether it is in `total` (it matched the filters when last seen)
  let total = config.total;
  let newest = config.newest; // later pages: the newest alert of the filters that this page knows of
  let arrived = 0; // later pages: new alerts the socket told of
  let arrivedUnseen = false; // later pages: a re-read found newer ones (raised while the socket was down)
  let pastEnd = false; // later pages: a re-read found the list shorter than this page's place in it
  let clock = 0; // counts what the socket said: a re-read keeps what it said after the question left

  /** Whether an alert (alert_json) passes the page's filters: the test gateway.alerts.report makes in SQL. */
  function matches(alert) {
    for (const [field, value] of Object.entries(filter.equal)) {
      if (alert[field] !== value) return false;
    }
    return filter.any_unset.length === 0 || filter.any_unset.some((field) => !alert[field]);
  }

  /** Merge a message into what the page knows of its alert: the set-once fields never go back to null. */
  function merge(known, alert) {
    const merged = { ...(known || {}), ...alert };
    if (known) {
      for (const field of SET_ONCE) {
        if (merged[field] == null && known[field] != null) merged[field] = known[field];
      }
    }
    return merged;
  }

  /** Keep `total` right as alerts enter or leave the filters; true if this one just entered. */
  function recount(alert) {
    let was = counted.get(alert.id);
    if (was === undefined) {
      // Not seen before: it matched before this event if it did without the fields the event set.
      const sets = EVENT_SETS[alert.event];
      was = sets !== undefined && matches({ ...alert, ...Object.fromEntries(sets.map((field) => [field, null])) });
    }
    const is = matches(alert);
    total += Number(is) - Number(was);
    counted.set(alert.id, is);
    return is && !was;
  }

  /** Newest first, ties by id: the view's order (ORDERING in gateway/alert_views.py). */
  function newestFirst(a, b) {
    const at = Date.parse(b.raised_at) - Date.parse(a.raised_at);
    if (at) return at;
    return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
  }

  function noteNewest(alert) {
    if (!newest || newestFirst(alert, newest) < 0) newest = { id: alert.id, raised_at: alert.raised_at };
  }

  /** An alert message from the socket or from an acknowledgement's answer. */
  function receive(alert) {
    clock += 1;
    const row = rows.get(alert.id);
    const merged = merge(row && row.alert, alert);
    const entered = recount(merged);
    if (row) {
      row.alert = merged;
      row.touched = clock;
    } else if (entered && firstPage) {
      rows.set(alert.id, { alert: merged, tr: null, signature: "", touched: clock, fresh: true });
    } else if (entered) {
      arrived += 1;
      noteNewest(merged);
    }
  }

  // --- Rows: the same markup as templates/gateway/alerts.html ---

  function element(tag, className, ...children) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    el.append(...children);
    return el;
  }

  /** A timestamp as the server renders it: settings.TIME_ZONE is UTC, and alert_json's times are UTC. */
  function timeElement(iso) {
    const el = element("time", "", iso.slice(0, 19).replace("T", " "));
    el.dateTime = iso;
    return el;
  }

  function hiddenInput(name, value) {
    const input = element("input");
    input.type = "hidden";
    input.name = name;
    input.value = value;
    return input;
  }

  function ackForm(id) {
    const form = element("form");
    form.method = "post";
    form.action = config.ack_url.replace(config.alert_id_placeholder, id);
    // The logout form's token: a page's tokens are all good for its CSRF cookie.
    const token = document.querySelector("input[name=csrfmiddlewaretoken]");
    const button = element("button", "", "Acknowledge");
    button.type = "submit";
    form.append(
      hiddenInput("csrfmiddlewaretoken", token ? token.value : ""),
      hiddenInput("next", window.location.pathname + window.location.search),
      button,
    );
    return form;
  }

  function fill(tr, alert, inFilters) {
    tr.className = `alert-row severity-${alert.severity}${alert.cleared_at ? "" : " is-active"}${inFilters ? "" : " is-outside-filters"}`;
    tr.dataset.alertId = alert.id;
    const link = element("a", "", alert.charge_point);
    link.href = config.charge_point_url.replace(config.slug_placeholder, encodeURIComponent(alert.charge_point));
    const what = element("td", "", element("strong", "", alert.rule), element("br"), element("span", "muted", alert.message));
    if (!inFilters) what.append(element("br"), element("span", "alert-outside", "No longer matches these filters."));
    const where = element("td", "", link);
    if (alert.site) where.append(element("br"), element("span", "muted", alert.site));
    const cleared = element("td", "", alert.cleared_at ? timeElement(alert.cleared_at) : element("span", "alert-active", "active"));
    cleared.dataset.alertCleared = "";
    const ack = element("td");
    ack.dataset.alertAck = "";
    if (alert.acknowledged_at) {
      ack.append(element("span", "alert-acked", `by ${alert.acknowledged_by || "(deleted user)"} at `, timeElement(alert.acknowledged_at)));
    } else {
      ack.append(ackForm(alert.id));
    }
    tr.replaceChildren(
      element("td", "", element("span", "alert-severity", config.severity_labels[alert.severity] || alert.severity)),
      what,
      where,
      element("td", "", timeElement(alert.raised_at)),
      cleared,
      ack,
    );
  }

  function removeRow(id) {
    const row = rows.get(id);
    if (row && row.tr) row.tr.remove();
    rows.delete(id);
  }

  function render() {
    const shown = [...rows.values()].sort((a, b) => newestFirst(a.alert, b.alert));
    if (firstPage) {
      // The first page keeps the per_page newest alerts of the filters, as a reload shows it (the
      // older ones are on the next page); rows that left the filters do not take a place.
      let kept = 0;
      for (const row of [...shown]) {
        if (matches(row.alert) && ++kept > config.per_page) {
          removeRow(row.alert.id);
          shown.splice(shown.indexOf(row), 1);
        }
      }
    }
    shown.forEach((row, index) => {
      const inFilters = matches(row.alert);
      const signature = JSON.stringify([row.alert, inFilters]);
      if (!row.tr) row.tr = element("tr");
      if (row.signature !== signature) {
        fill(row.tr, row.alert, inFilters);
        row.signature = signature;
      }
      if (row.fresh) {
        row.tr.classList.add("is-new");
        row.fresh = false;
      }
      if (body.children[index] !== row.tr) body.insertBefore(row.tr, body.children[index] || null);
    });
    const numPages = Math.max(1, Math.ceil(total / config.per_page));
    const place = numPages > 1 && config.page <= numPages ? ` · page ${config.page} of ${numPages}` : "";
    count.textContent = `${total} alert${total === 1 ? "" : "s"}${place}`;
    count.hidden = total === 0;
    table.hidden = shown.length === 0;
    none.hidden = shown.length > 0;
    older.hidden = config.page >= numPages;
    pages.hidden = config.page === 1 && numPages === 1;
    if (pastEnd) {
      newerText.textContent = "The list has become shorter than this page: it no longer has a page " + config.page + ".";
      newer.hidden = false;
    } else if (arrived || arrivedUnseen) {
      newerText.textContent = arrived
        ? `${arrived} new alert${arrived === 1 ? "" : "s"} since this page was loaded${arrivedUnseen ? ", and more while it was not connected" : ""}.`
        : "New alerts arrived since this page was loaded.";
      newer.hidden = false;
    }
  }

  function showProblem(text) {
    problem.textContent = text;
    problem.hidden = !text;
  }

  // --- Reading the page again: on every (re)connection ---

  /** Make the page what a reload would show, but for what the socket said after the question left. */
  function reconcile(answer, asked) {
    total = answer.total;
    if (answer.page !== config.page) {
      // The server answered its last page instead: keep these rows, and say why they are all there is.
      pastEnd = true;
      render();
      return;
    }
    pastEnd = false;
    const listed = new Set(answer.alerts.map((alert) => alert.id));
    for (const [id, row] of rows) {
      // Gone from the page (it left the filters, or the page moved on) while the socket was down.
      if (!listed.has(id) && row.touched <= asked) removeRow(id);
    }
    for (const alert of answer.alerts) {
      const row = rows.get(alert.id);
      const merged = merge(row && row.alert, alert);
      if (row) row.alert = merged;
      else rows.set(alert.id, { alert: merged, tr: null, signature: "", touched: asked, fresh: false });
      counted.set(alert.id, matches(merged));
    }
    if (!firstPage && answer.newest && (!newest || newestFirst(answer.newest, newest) < 0)) {
      arrivedUnseen = true;
      newest = answer.newest;
    }
    render();
  }

  let reading = false;
  let readAgain = false;
  let retry = null;
  async function reread() {
    if (reading) {
      readAgain = true; // reconnected during a read: its answer may be from before the gap
      return;
    }
    reading = true;
    window.clearTimeout(retry);
    const asked = clock;
    const url = new URL(window.location.href);
    url.hash = "";
    url.searchParams.set("format", "json");
    url.searchParams.set("page", String(config.page));
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok || response.redirected) throw new Error(response.redirected ? "signed out" : `HTTP ${response.status}`);
      reconcile(await response.json(), asked);
      showProblem("");
    } catch (err) {
      showProblem(`The alerts could not be read again (${err.message}): retrying.`);
      retry = window.setTimeout(reread, REREAD_RETRY_MS);
    } finally {
      reading = false;
    }
    if (readAgain) {
      readAgain = false;
      reread();
    }
  }

  // --- Acknowledging without leaving the page ---

  body.addEventListener("submit", async (event) => {
    const form = event.target;
    const button = form.querySelector("button");
    event.preventDefault();
    button.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      let answer = {};
      try {
        answer = await response.json();
      } catch (err) {
        answer = {}; // Django's own refusals (CSRF) and the login page are HTML
      }
      if (!answer.alert) {
        throw new Error(answer.error || (response.status === 403 || response.redirected ? "refused: reload the page" : `HTTP ${response.status}`));
      }
      receive(answer.alert);
      showProblem("");
      render();
    } catch (err) {
      button.disabled = false;
      showProblem(`Acknowledging failed: ${err.message}`);
    }
  });

  // --- Start: the rendered rows, then the socket ---

  for (const alert of config.alerts) {
    const tr = body.querySelector(`tr[data-alert-id="${alert.id}"]`);
    // Rendered by the server: redrawn only once something changes.
    rows.set(alert.id, { alert, tr, signature: tr ? JSON.stringify([alert, true]) : "", touched: 0, fresh: false });
    counted.set(alert.id, true);
  }
  E.connectLive(config.ws_path, (message) => {
    if (message.type === "alerts" && Array.isArray(message.alerts)) {
      for (const alert of message.alerts) receive(alert);
      render();
    } else if (message.type === "snapshot" && !message.more) {
      reread(); // (back) up: read what the socket could not tell
    }
  });
})();
