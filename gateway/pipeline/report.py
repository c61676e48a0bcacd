"""The pipeline-health report: from the StageStatus rows, each stage's state and why, the latency of
each hop, and one verdict: where data is stuck. The page, its JSON and GET /api/v1/pipeline/ all
serve `pipeline_report()`.

States, worst last:
    ok        reporting, nothing below applies
    lagging   behind but moving: outbox older than OUTBOX_LAGGING_S, a consumer's lag over
              CONSUMER_LAG_LAGGING messages, a hop's p95 over HOP_LAGGING_MS, a consumer with no
              partitions yet (its telemetry groups, the command results and the site status ones)
    failing   an ERROR in the last ERROR_RECENT_S, or records waiting in its outbox with none
              delivered for OUTBOX_STUCK_S (publisher.PublishStats.stalled_s: the transport is down;
              a backlog that moves is only lagging), or a poller's site controller whose rounds keep
              failing or stopped (gateway/health/sites.py, the rule readiness uses; a site in
              fallback or refused shows on its line of the page, not in the stage's state)
    stopped   it said it stopped (stopped_at), or it has not reported for STALE_INTERVALS of its
              interval: the process died or hangs

Hops, in the order data flows (gateway/pipeline/latency.py says how each is measured):
    poll -> mqtt (edge path: MQTT broker and bridge) -> kafka -> consumer -> browser
The browser hop is the page's own: WebSocket receipt - record ts, minus `to_consumer` here.
"""

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from gateway.models import StageKind, StageStatus
from gateway.telemetry import format_ts, parse_ts

OK, LAGGING, FAILING, STOPPED = "ok", "lagging", "failing", "stopped"
SEVERITY = {OK: 0, LAGGING: 1, FAILING: 2, STOPPED: 3}
STALE_INTERVALS = 3
STALE_AT_LEAST_S = 3.0
ERROR_RECENT_S = 60.0
OUTBOX_LAGGING_S = 5.0  # the bridge calls an outbox this old a backlog (mqtt.bridge.BACKLOG_AGE_S)
OUTBOX_STUCK_S = 30.0
CONSUMER_LAG_LAGGING = 1000
HOP_LAGGING_MS = 5000.0
# A row not seen for this long is left off the report (a renamed or retired process); it stays in
# the table (admin) until someone deletes it.
FORGET_AFTER = timedelta(days=7)
# A consumer stage's consumers besides its telemetry groups: (stats key, name on the page).
OTHER_CONSUMERS = (("results", "command results"), ("site_status", "site status"))
FLOW_ORDER = {StageKind.POLLER: 0, StageKind.BRIDGE: 1, StageKind.CONSUMER: 2}
KIND_LABELS = dict(StageKind.choices)
HOPS = (
    ("poll", "Poll", "Modbus read and decode: the record's poll_ms"),
    ("mqtt", "MQTT + bridge", "bridge receipt (persisted) - record ts; edge path only"),
    ("kafka", "Kafka", "producer timestamp (CreateTime) - record ts (edge: - bridge receipt): the outbox wait"),
    ("consumer", "Consumer", "sinks done (stored, pushed) - Kafka message timestamp: broker write, fetch, sinks"),
    ("browser", "Browser", "this page's WebSocket receipt - record ts, minus the chain up to the consumer"),
)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else format_ts(moment)


def stale_after_s(stats: dict[str, Any]) -> float:
    interval_s = stats.get("interval_s") or 5.0
    return max(STALE_INTERVALS * float(interval_s), STALE_AT_LEAST_S)


def seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def stage_state(row: StageStatus, now: datetime) -> tuple[str, list[str]]:
    """(state, why): every reason found, the worst state's first."""
    stats = row.stats or {}
    reasons: list[tuple[str, str]] = []
    age_s = (now - row.seen_at).total_seconds()
    if stats.get("stopped_at"):
        reasons.append((STOPPED, f"stopped at {stats['stopped_at']}"))
    elif age_s > stale_after_s(stats):
        reasons.append((STOPPED, f"no report for {seconds(age_s)}: the process died, hangs or lost the database"))
    severe = stats.get("last_severe")
    if severe and (now - parse_ts(severe["at"])).total_seconds() <= ERROR_RECENT_S:
        reasons.append((FAILING, f"{severe['level'].lower()}: {severe['message']}"))
    outbox = stats.get("outbox") or {}
    outbox_age_s = outbox.get("oldest_age_s")
    if outbox_age_s is not None:
        depth, stalled_s = outbox.get("depth", 0), outbox.get("stalled_s", 0.0)
        if stalled_s > OUTBOX_STUCK_S:  # nothing delivered for that long, not merely a backlog (publisher.py)
            target = "Kafka" if stats.get("output") == "kafka" else "the MQTT broker"
            waited = seconds(stalled_s)
            why = f"outbox not draining: {depth} records waiting, none delivered for {waited} ({target} down?)"
            reasons.append((FAILING, why))
        elif outbox_age_s > OUTBOX_LAGGING_S:
            reasons.append((LAGGING, f"outbox behind: {depth} records waiting, the oldest {seconds(outbox_age_s)}"))
    for name, consumer in consumers(stats):
        if not consumer.get("assigned"):
            reasons.append((LAGGING, f"{name}: no partitions assigned yet"))
        if consumer.get("lag_total", 0) > CONSUMER_LAG_LAGGING:
            reasons.append((LAGGING, f"{name}: {consumer['lag_total']} messages behind"))
    for site in stats.get("site_controllers") or []:
        if site.get("problem"):  # rounds failing in a row, or none for a while (gateway/health/sites.py)
            reasons.append((FAILING, site["problem"]))
    for hop, summary in stage_latency(stats).items():
        if summary.get("p95_ms", 0) > HOP_LAGGING_MS:
            reasons.append((LAGGING, f"{hop} latency high: p95 {summary['p95_ms'] / 1000:.1f} s"))
    if not reasons:
        return OK, []
    reasons.sort(key=lambda reason: -SEVERITY[reason[0]])
    return reasons[0][0], [why for _state, why in reasons]


def consumers(stats: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A consumer stage's Kafka consumers by name: its telemetry groups, then the others it runs."""
    named = [(group["name"], group) for group in stats.get("groups") or []]
    return named + [(label, stats[key]) for key, label in OTHER_CONSUMERS if stats.get(key) is not None]


def other_consumers(stats: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The consumers besides the telemetry groups (command results, site status) as the page shows them."""
    if stats.get("groups") is None:
        return None
    return [{"key": key, "name": label} | stats[key] for key, label in OTHER_CONSUMERS if stats.get(key) is not None]


def stage_latency(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A stage's hop summaries: its own, or its consumer groups' (the live group's first)."""
    latency = dict(stats.get("latency") or {})
    groups = sorted(stats.get("groups") or [], key=lambda group: group.get("name") != "live")
    for group in groups:
        for hop, summary in (group.get("latency") or {}).items():
            latency.setdefault(hop, summary)
    return latency


def stage_json(row: StageStatus, now: datetime) -> dict[str, Any]:
    stats = row.stats or {}
    state, why = stage_state(row, now)
    groups = stats.get("groups")
    return {
        "id": row.pk,
        "kind": row.kind,
        "kind_label": KIND_LABELS.get(row.kind, row.kind),
        "name": row.name,
        "host": row.host,
        "pid": row.pid,
        "started_at": iso(row.started_at),
        "seen_at": iso(row.seen_at),
        "seen_age_s": round(max(0.0, (now - row.seen_at).total_seconds()), 1),
        "state": state,
        "why": why,
        "records": stats.get("records"),
        "records_per_s": stats.get("records_per_s"),
        "outbox": stats.get("outbox"),
        "consumer_lag": None
        if groups is None
        else {"total": stats.get("lag_total", 0), "by_group": {g["name"]: g.get("lag", {}) for g in groups}},
        "dead_letters": stats.get("dead_letters"),
        "other_consumers": other_consumers(stats),
        "site_control": stats.get("site_control"),
        "site_controllers": stats.get("site_controllers"),
        "latency": stage_latency(stats),
        "last_error": row.last_error,
        "last_error_at": iso(row.last_error_at),
        "last_error_level": stats.get("last_error_level"),
        "stats": stats,
    }


def combine(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Several processes' windows of one hop: the worst p50 and p95 (an operator looks for the slow one)."""
    if not summaries:
        return None
    return {
        "p50_ms": max(s["p50_ms"] for s in summaries),
        "p95_ms": max(s["p95_ms"] for s in summaries),
        "samples": sum(s.get("samples", 0) for s in summaries),
    }


def hop_latencies(stages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The hops in flow order from the stages still reporting, and `to_consumer` for the page's
    browser hop. On the edge path the consumer's ts->Kafka spans MQTT, bridge and Kafka: the Kafka
    hop is that minus the bridge's mqtt hop (p50 from p50, p95 from p95: an estimate, marked)."""
    live = [stage for stage in stages if stage["state"] != STOPPED]
    by_hop: dict[str, list[dict[str, Any]]] = {}
    for stage in live:
        for hop, summary in stage["latency"].items():
            by_hop.setdefault(hop, []).append(summary)
    measured = {hop: combine(summaries) for hop, summaries in by_hop.items()}
    mqtt, to_kafka = measured.get("mqtt"), measured.get("to_kafka")
    kafka, estimated = to_kafka, False
    if mqtt is not None and to_kafka is not None:
        kafka = {
            "p50_ms": round(max(0.0, to_kafka["p50_ms"] - mqtt["p50_ms"]), 1),
            "p95_ms": round(max(0.0, to_kafka["p95_ms"] - mqtt["p95_ms"]), 1),
            "samples": to_kafka["samples"],
        }
        estimated = True
    values = {"poll": measured.get("poll"), "mqtt": mqtt, "kafka": kafka, "consumer": measured.get("consumer")}
    hops = []
    for hop, label, how in HOPS:
        summary = values.get(hop)
        hops.append(
            {
                "hop": hop,
                "label": label,
                "how": how,
                "p50_ms": None if summary is None else summary["p50_ms"],
                "p95_ms": None if summary is None else summary["p95_ms"],
                "samples": 0 if summary is None else summary["samples"],
                "estimated": estimated if hop == "kafka" else False,
                "measured_by": "page" if hop == "browser" else "stages",
            }
        )
    return hops, measured.get("to_consumer")


def verdict(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Where data is stuck: the most upstream red stage (stopped or failing), else the most upstream
    lagging one. Upstream first: a dead poller explains an idle consumer, not the other way round."""
    if not stages:
        return {
            "state": "unknown",
            "stage": None,
            "why": "no stage has reported yet: are runpoller, runbridge and runconsumer running?",
        }
    for states in ((STOPPED, FAILING), (LAGGING,)):
        for stage in stages:  # already in flow order
            if stage["state"] in states:
                return {
                    "state": stage["state"],
                    "stage": stage["id"],
                    "why": f"{stage['kind_label']} {stage['name']} on {stage['host']}: {stage['why'][0]}",
                }
    return {"state": OK, "stage": None, "why": f"data flows: {len(stages)} stages reporting, none behind"}


def pipeline_report(now: datetime | None = None) -> dict[str, Any]:
    """The whole page as JSON (shape tested in tests/test_pipeline.py)."""
    now = now or timezone.now()
    rows = StageStatus.objects.filter(seen_at__gte=now - FORGET_AFTER)
    ordered = sorted(rows, key=lambda row: (FLOW_ORDER.get(row.kind, 9), row.name, row.host))
    stages = [stage_json(row, now) for row in ordered]
    hops, to_consumer = hop_latencies(stages)
    return {
        "as_of": format_ts(now),
        "verdict": verdict(stages),
        "hops": hops,
        "to_consumer": to_consumer,
        "stages": stages,
        "thresholds": {
            "outbox_lagging_s": OUTBOX_LAGGING_S,
            "outbox_stuck_s": OUTBOX_STUCK_S,
            "consumer_lag_lagging": CONSUMER_LAG_LAGGING,
            "hop_lagging_ms": HOP_LAGGING_MS,
            "error_recent_s": ERROR_RECENT_S,
            "stale_intervals": STALE_INTERVALS,
        },
    }
