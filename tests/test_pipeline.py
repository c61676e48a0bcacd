"""The pipeline-health rows and report from real runs: the poller and the consumer (on the embedded
Kafka broker, against simulated chargers) write their StageStatus rows with counters and hop
latencies; an error they log turns the stage red, without the password it mentioned; a stage that
stops reporting goes stale; a poller whose Kafka is down shows its outbox piling up; the page, its
JSON and GET /api/v1/pipeline/ serve the report (login required)."""

import asyncio
import logging
import os
import subprocess
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from gateway import services
from gateway.kafka.topics import telemetry_topic
from gateway.models import StageStatus
from gateway.pipeline import report as report_module
from gateway.pipeline.errors import scrub
from gateway.pipeline.latency import HopWindow
from gateway.pipeline.report import pipeline_report
from gateway.profiles.store import SHIPPED_DIR, read_spec_file
from gateway.simulator.fleet import SimulatorFleet
from gateway.sinks import live_consumer
from tests.conftest import free_port, make_charge_point

pytestmark = pytest.mark.django_db(transaction=True)

GENERIC = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
INTERVAL_S = 0.2


@pytest.fixture
def fast_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(settings.EVDASH, "STAGE_STATUS_INTERVAL_S", INTERVAL_S)


def rows() -> dict[str, StageStatus]:
    return {row.kind: row for row in StageStatus.objects.all()}


async def arows() -> dict[str, StageStatus]:
    return await sync_to_async(rows)()


async def report(now=None) -> dict:
    return await sync_to_async(pipeline_report)(now)


def stage_of(body: dict, kind: str) -> dict:
    return next(stage for stage in body["stages"] if stage["kind"] == kind)


async def wait_for_report(condition, what: str, timeout_s: float = 30.0) -> dict:
    """Poll the report until condition(report) holds."""
    latest: dict = {}

    async def check() -> bool:
        nonlocal latest
        latest = await report()
        return condition(latest)

    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last report: {latest}")
        await asyncio.sleep(0.1)
    return latest


def hop(body: dict, name: str) -> dict:
    return next(item for item in body["hops"] if item["hop"] == name)


def live_lag_partitions(body: dict) -> set[str]:
    """The partitions the consumer's live group reported a lag for (once it measured them)."""
    for stage in body["stages"]:
        if stage["kind"] == "consumer":
            for group in stage["stats"].get("groups", []):
                if group["name"] == "live":
                    return set(group.get("lag") or {})
    return set()


async def test_poller_and_consumer_write_their_rows_and_the_report_follows(
    kafka, site, generic_profile, fast_status
) -> None:
    async with SimulatorFleet(GENERIC, 2, base_port=0, seed=5) as fleet:
        for index, sim in enumerate(fleet.charge_points):
            await sync_to_async(make_charge_point)(site, generic_profile, f"cp-{index}", sim.port)
        stop_poller, stop_consumer = asyncio.Event(), asyncio.Event()
        consumer = live_consumer(telemetry_topic(), auto_offset_reset="earliest")
        consumer_task = asyncio.create_task(services.run_consumer(stop_consumer, consumer))
        poller_task = asyncio.create_task(services.run_poller(stop_poller, poller_id="pipeline-test"))
        try:
            # Both stages reporting, data flowing end to end: every hop but the browser's measured.
            body = await wait_for_report(
                lambda body: (
                    {s["kind"] for s in body["stages"]} == {"poller", "consumer"}
                    and all(s["state"] == "ok" for s in body["stages"])
                    and all(hop(body, name)["samples"] > 0 for name in ("poll", "kafka", "consumer"))
                    and live_lag_partitions(body) == {"0", "1"}
                ),
                "both stages ok with hop latencies and the live group's lag per partition",
            )
            assert body["verdict"]["state"] == "ok"
            assert body["verdict"]["why"].startswith("data flows: 2 stages")
            assert [s["kind"] for s in body["stages"]] == ["poller", "consumer"]  # flow order
            poller, consumer_stage = stage_of(body, "poller"), stage_of(body, "consumer")
            assert poller["name"] == "pipeline-test" and poller["pid"] > 0
            assert poller["stats"]["charge_points"] == 2 and poller["stats"]["output"] == "kafka"
            assert poller["records"] > 0
            assert set(poller["outbox"]) == {
                "depth",
                "oldest_age_s",
                "dropped",
                "delivered",
                "failed_sends",
                "stalled_s",
            }
            assert poller["outbox"]["delivered"] > 0
            groups = {group["name"]: group for group in consumer_stage["stats"]["groups"]}
            assert set(groups) == {"live", "history"}
            assert groups["live"]["handled"] > 0 and groups["live"]["assigned"] is True
            assert set(groups["live"]["lag"]) == {"0", "1"}  # the test topic's two partitions
            assert consumer_stage["consumer_lag"]["total"] >= 0 and consumer_stage["dead_letters"] == 0
            assert {"poll", "to_kafka", "consumer", "to_consumer"} <= set(consumer_stage["latency"])
            # The hops are what the records carried: poll_ms of a local simulator is well under a
            # second, and the whole chain here takes well under 5 s.
            assert 0 < hop(body, "poll")["p50_ms"] < 1000
            assert 0 <= hop(body, "kafka")["p50_ms"] < 5000 and hop(body, "kafka")["estimated"] is False
            assert 0 <= body["to_consumer"]["p50_ms"] < 5000
            assert hop(body, "mqtt")["samples"] == 0  # direct path: no bridge
            assert hop(body, "browser")["measured_by"] == "page"
            # The rows move: seen_at and the counters are written again every interval.
            first = (await arows())["poller"]
            await asyncio.sleep(INTERVAL_S * 3)
            again = (await arows())["poller"]
            assert again.seen_at > first.seen_at and again.stats["records"] > first.stats["records"]

            # An error a stage logs turns it red, with the message, never the password it mentioned.
            logging.getLogger("gateway.pipeline.test").error(
                "cannot reach mqtts://bridge:s3cret-pw@broker.example:8883 (refused)"
            )
            body = await wait_for_report(
                lambda body: stage_of(body, "poller")["state"] == "failing", "the logged error turns the poller red"
            )
            poller = stage_of(body, "poller")
            assert poller["last_error"] == "cannot reach mqtts://bridge:***@broker.example:8883 (refused)"
            assert poller["last_error_level"] == "ERROR" and poller["last_error_at"]
            assert poller["why"][0].startswith("error: cannot reach")
            assert body["verdict"]["state"] == "failing" and body["verdict"]["stage"] == poller["id"]

            # A stopped poller: its last row says so, the report shows it red, first in the verdict.
            stop_poller.set()
            await asyncio.wait_for(poller_task, 30)
            row = (await arows())["poller"]
            assert row.stats["stopped_at"]
            body = await report()
            assert stage_of(body, "poller")["state"] == "stopped"
            assert stage_of(body, "poller")["why"][0].startswith("stopped at ")
            assert body["verdict"]["state"] == "stopped" and "Poller pipeline-test" in body["verdict"]["why"]
        finally:
            stop_poller.set()
            stop_consumer.set()
            await asyncio.gather(poller_task, consumer_task, return_exceptions=True)
    consumer_row = (await arows())["consumer"]
    assert consumer_row.stats["stopped_at"]  # the consumer's last row too


async def test_a_stage_that_stops_reporting_goes_stale(kafka, site, generic_profile, fast_status) -> None:
    """A process that dies or hangs writes nothing more: its row ages past STALE_INTERVALS intervals."""
    async with SimulatorFleet(GENERIC, 1, base_port=0, seed=6) as fleet:
        await sync_to_async(make_charge_point)(site, generic_profile, "cp-0", fleet.charge_points[0].port)
        stop = asyncio.Event()
        task = asyncio.create_task(services.run_poller(stop, poller_id="hangs"))
        try:
            await wait_for_report(lambda body: len(body["stages"]) == 1, "the poller's row")
            row = (await arows())["poller"]
            assert not row.stats["stopped_at"]
            interval_s = row.stats["interval_s"]
            fresh = await report(row.seen_at + timedelta(seconds=interval_s))
            assert fresh["stages"][0]["state"] != "stopped"
            # Nothing written for more than three intervals (at least 3 s): what a hung process looks like.
            stale_s = max(report_module.STALE_INTERVALS * interval_s, report_module.STALE_AT_LEAST_S) + 1
            stale = await report(row.seen_at + timedelta(seconds=stale_s))
            stage = stale["stages"][0]
            assert stage["state"] == "stopped"
            assert stage["why"][0].startswith("no report for 4.0 s: the process died, hangs")
            assert stale["verdict"] == {"state": "stopped", "stage": stage["id"], "why": stale["verdict"]["why"]}
            assert stale["verdict"]["why"].startswith("Poller hangs on ")
            # Latencies of a stopped stage are not the pipeline's: left out of the hops.
            assert all(item["samples"] == 0 for item in stale["hops"])
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def test_a_stuck_outbox_shows_on_the_poller(
    kafka, site, generic_profile, fast_status, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kafka unreachable: records pile up in the poller's outbox; lagging first, then failing, with why."""
    monkeypatch.setitem(settings.EVDASH, "KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setattr(services, "POLLER_FLUSH_TIMEOUT_S", 0.5)
    # The thresholds, shortened so the test takes seconds (the production ones: 5 s and 30 s).
    monkeypatch.setattr(report_module, "OUTBOX_LAGGING_S", 0.5)
    monkeypatch.setattr(report_module, "OUTBOX_STUCK_S", 2.0)
    async with SimulatorFleet(GENERIC, 2, base_port=0, seed=7) as fleet:
        for index, sim in enumerate(fleet.charge_points):
            await sync_to_async(make_charge_point)(site, generic_profile, f"cp-{index}", sim.port)
        stop = asyncio.Event()
        task = asyncio.create_task(services.run_poller(stop, poller_id="no-kafka"))
        try:
            body = await wait_for_report(
                lambda body: body["stages"] and body["stages"][0]["state"] == "lagging", "the outbox behind"
            )
            assert body["stages"][0]["why"][0].startswith("outbox behind: ")
            body = await wait_for_report(
                lambda body: any(why.startswith("outbox not draining") for why in body["stages"][0]["why"]),
                "the outbox stuck",
            )
            stage = body["stages"][0]
            assert stage["state"] == "failing"
            assert stage["outbox"]["depth"] > 0 and stage["outbox"]["delivered"] == 0
            assert stage["outbox"]["oldest_age_s"] > 2.0
            assert "(Kafka down?)" in next(why for why in stage["why"] if why.startswith("outbox not draining"))
            # The publisher's own warning is the stage's last error.
            assert "kafka unavailable" in stage["last_error"] and stage["last_error_level"] == "WARNING"
            assert body["verdict"]["state"] == "failing" and "Poller no-kafka" in body["verdict"]["why"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


def test_the_page_its_json_and_the_api_need_a_login(db: None) -> None:
    client = Client()
    assert client.get("/pipeline/").status_code == 302
    assert client.get("/pipeline/?format=json").status_code == 302
    assert client.get("/api/v1/pipeline/").status_code in (401, 403)
    client.force_login(get_user_model().objects.create_user("operator", password="pw-1234567"))
    page = client.get("/pipeline/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "data-verdict" in html and 'data-hop="browser"' in html and "gateway/pipeline.js" in html
    assert "<script>" not in html.replace('<script id="page-config" type="application/json">', "")  # CSP
    body = client.get("/pipeline/?format=json").json()
    assert body["verdict"]["state"] == "unknown" and body["stages"] == []
    assert [item["hop"] for item in body["hops"]] == ["poll", "mqtt", "kafka", "consumer", "browser"]
    api = client.get("/api/v1/pipeline/")
    assert api.status_code == 200
    assert set(api.json()) == set(body) and api.json()["hops"] == body["hops"]
    assert api["ETag"]


def test_hop_windows_and_the_error_scrub() -> None:
    window = HopWindow(window_s=60)
    for value in range(1, 101):
        window.add(float(value), now_s=1000.0)
    assert window.summary(now_s=1000.0) == {"p50_ms": 50.0, "p95_ms": 95.0, "max_ms": 100.0, "samples": 100}
    assert window.summary(now_s=1061.0) is None  # the window forgets
    window.add(float("nan"))
    window.add(10 * 24 * 3600 * 1000.0)  # a clock step, not a latency
    assert window.summary() is None
    assert scrub("kafka://user:pw@h:9093 and redis://:pw@h/0") == "kafka://user:***@h:9093 and redis://***@h/0"
    assert len(scrub("x" * 2000)) == 500


def test_processes_of_one_group_on_one_host_have_a_row_each_and_a_restart_replaces_the_dead_one() -> None:
    """Two consumers of a group on one machine both show; a restarted one takes its dead
    predecessor's place, keeping why that one failed until it has an error of its own."""
    from datetime import UTC, datetime

    from gateway.pipeline.errors import LastError
    from gateway.pipeline.reporter import write_status

    started = datetime.now(UTC)
    dead = subprocess.Popen(["true"])
    dead.wait()
    sibling = subprocess.Popen(["sleep", "30"])
    try:
        crash = LastError("the live consumer failed: boom", "CRITICAL", "gateway.services", started)
        common = {"kind": "consumer", "name": "evdash-consumer", "host": "box", "started_at": started, "stats": {}}
        write_status(pid=dead.pid, last_error=crash, **common)
        write_status(pid=sibling.pid, last_error=None, **common)
        write_status(pid=os.getpid(), last_error=None, first=True, **common)
        by_pid = {row.pid: row for row in StageStatus.objects.filter(name="evdash-consumer")}
        assert set(by_pid) == {sibling.pid, os.getpid()}
        assert by_pid[os.getpid()].last_error == "the live consumer failed: boom"
        assert by_pid[sibling.pid].last_error == ""
    finally:
        sibling.kill()
        sibling.wait()
