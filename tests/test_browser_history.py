"""Charts with history in Chromium: the charge point page opens with the last hour from the database
and goes on live, each sample plotted exactly once across the seam; the range picker reloads the
charts downsampled by the server; the fleet power chart opens with its whole window.

The server is the demo's web process (daphne with both consumer groups on its loop: the live one
pushes, the history one stores), on a SQLite database of its own and the session's Kafka broker.
No poller runs: the test publishes telemetry records to the topic as a poller would, older ones
first (only the history has them), then a live stream that runs while the page opens, so records
reach the page by both ways and the page must merge them. Every expectation is computed from the
records the test published.
"""

import asyncio
import math
import threading
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from aiokafka import AIOKafkaProducer

from gateway.kafka.config import producer_options
from gateway.kafka.topics import ensure_topics, telemetry_topic
from gateway.profiles.decode import TelemetryFields
from gateway.telemetry import Record, build_record, encode_record, format_ts, parse_ts
from tests.browser import launch_chromium, serving
from tests.conftest import free_port
from tests.processes import Service, manage, process_env, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Route

pytestmark = pytest.mark.browser
T = TypeVar("T")

PASSWORD = "browser-history-pw-4821"
SLUG, SITE, PROFILE = "cp-h", "depot", "generic-ev-charger"
POLL_MS = 200  # the live stream's pace, as the charge point's poll interval says
OLD_RECORDS, OLD_STEP_S, OLD_NEWEST_AGE = 2000, 30, timedelta(hours=2)  # only in the day and week views
RECENT_RECORDS = 300  # 1 Hz over the five minutes before the test: in the last hour
WAIT_MS = 30_000

SETUP = f"""
from django.contrib.auth import get_user_model
from gateway.models import ChargePoint, DeviceProfile, Site
site = Site.objects.create(slug="{SITE}", name="Depot")
ChargePoint.objects.create(slug="{SLUG}", name="CP H", site=site, host="127.0.0.1", port={{port}},
                           profile=DeviceProfile.objects.get(slug="{PROFILE}"), poll_interval_ms={POLL_MS})
get_user_model().objects.create_user("viewer", password="{PASSWORD}")
"""
SERVE = "from gateway.demo import serve_web_with_consumer; serve_web_with_consumer('127.0.0.1', {port})"


def power_of(seq: int) -> float:
    """Scripted power, W: different from one record to the next."""
    return float((seq * 37) % 11_000 + 100)


def make_record(seq: int, moment: datetime) -> Record:
    values = {"power_w": power_of(seq), "current_l1_a": power_of(seq) / 230, "current_l2_a": 1.0, "current_l3_a": 2.0}
    fields = TelemetryFields(status="charging", iec61851_state="C", values=values, extra={})
    return build_record(charge_point=SLUG, site=SITE, profile=PROFILE, seq=seq, fields=fields, moment=moment)


def ms(ts: str) -> int:
    return round(parse_ts(ts).timestamp() * 1000)


class Publisher:
    """Publishes records as a poller would, from a thread of its own (Playwright owns this one's loop).

    `backlog(records)` sends records at once; `stream()` then sends one record every POLL_MS with
    the time of sending, until `pause()`. Every record sent is in `sent`.
    """

    def __init__(self) -> None:
        self.sent: list[Record] = []
        self.seq = 0
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.producer: AIOKafkaProducer | None = None
        self.streaming: asyncio.Future | None = None
        self.paused = threading.Event()
        self.run(self._start())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    async def _start(self) -> None:
        await ensure_topics([telemetry_topic()])
        self.producer = AIOKafkaProducer(**producer_options())
        await self.producer.start()

    async def _send(self, records: list[Record]) -> None:
        for record in records:
            await self.producer.send(telemetry_topic(), encode_record(record), key=SLUG.encode())
        await self.producer.flush()
        with self.lock:
            self.sent.extend(records)

    def next_record(self, moment: datetime) -> Record:
        self.seq += 1
        return make_record(self.seq, moment)

    def backlog(self, moments: list[datetime]) -> None:
        self.run(self._send([self.next_record(moment) for moment in moments]))

    async def _stream(self, paused: threading.Event) -> None:
        # Paused between sends, never inside one: a record handed to Kafka is always in `sent`
        # (a cancel during the flush once left a record plotted that the test did not expect).
        while not paused.is_set():
            await self._send([self.next_record(datetime.now(UTC))])
            await asyncio.sleep(POLL_MS / 1000)  # the poll interval: the pace of a poller, not a wait

    def stream(self) -> None:
        self.paused = threading.Event()
        self.streaming = asyncio.run_coroutine_threadsafe(self._stream(self.paused), self.loop)

    def pause(self) -> None:
        if self.streaming is not None:
            self.paused.set()
            wait_until(self.streaming.done, 10, "the stream to pause")
            self.streaming = None

    def records(self) -> list[Record]:
        with self.lock:
            return list(self.sent)

    def close(self) -> None:
        self.pause()
        if self.producer is not None:
            self.run(self.producer.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server(kafka: dict, tmp_path: Path) -> Iterator[dict]:
    """The web server with both consumer groups, on its own database and the test's topic."""
    env = process_env(
        tmp_path,
        KAFKA_BOOTSTRAP_SERVERS=kafka["KAFKA_BOOTSTRAP_SERVERS"],
        KAFKA_ENABLE_IDEMPOTENCE="0",
        EVDASH_TELEMETRY_TOPIC=kafka["TELEMETRY_TOPIC"],
        EVDASH_COMMANDS_TOPIC=kafka["COMMANDS_TOPIC"],
        EVDASH_COMMAND_RESULTS_TOPIC=kafka["COMMAND_RESULTS_TOPIC"],
        EVDASH_ALERTS_TOPIC=kafka["ALERTS_TOPIC"],
        EVDASH_CONSUMER_GROUP=kafka["CONSUMER_GROUP"],
        EVDASH_TOPIC_PARTITIONS=str(kafka["TOPIC_PARTITIONS"]),
    )
    env.pop("REDIS_URL", None)  # the in-memory channel layer: the consumer pushes in the web process
    manage(["migrate", "-v", "0"], env)
    manage(["shell", "-c", SETUP.format(port=free_port())], env)
    port = free_port()
    web = Service("shell", env, tmp_path / "web.log", "-c", SERVE.format(port=port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: serving(url), 60, "the web server", web)
        yield {"url": url, "env": env, "web": web}
        web.stop()
    finally:
        web.kill()


@pytest.fixture
def publisher(kafka: dict) -> Iterator[Publisher]:
    publisher = Publisher()
    try:
        yield publisher
    finally:
        publisher.close()


@pytest.fixture
def page(server: dict) -> Iterator:
    """A logged-in browser page in UTC (the custom range's inputs are local time)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, timezone_id="UTC")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{server['url']}/accounts/login/")
        page.fill("input[name=username]", "viewer")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{server['url']}/")
        yield page
        browser.close()
    assert errors == []


def stored_count(page, server: dict, start: datetime) -> int:
    """How many records of SLUG the server's history holds since `start` (its own JSON view)."""
    url = f"{server['url']}/chargepoints/{SLUG}/history/"
    answer = page.request.get(url, params={"start": format_ts(start), "max_points": "5000"}).json()
    return answer["points"] if answer["bucket_s"] == 0 else -1


# The charts as drawn: the power trace's timestamps (ms), and how many traces each chart has.
PLOTTED = """() => ({
    power: document.getElementById('power-chart').data[0].x.map(d => new Date(d).getTime()),
    l1: document.getElementById('current-chart').data[0].x.length,
    traces: document.getElementById('power-chart').data.length,
})"""


def plotted(page) -> dict:
    return page.evaluate(PLOTTED)


def meta(page) -> dict:
    return page.eval_on_selector("[data-history-meta]", "el => ({...el.dataset, text: el.textContent})")


def wait_loaded(page, range_name: str) -> dict:
    page.wait_for_function(
        """r => { const el = document.querySelector('[data-history-meta]');
                  return el.dataset.state === 'loaded' && el.dataset.range === r; }""",
        arg=range_name,
        timeout=WAIT_MS,
    )
    return meta(page)


def wait_plotted(page, expected_ms: list[int], what: str) -> None:
    """Wait until the power trace holds exactly `expected_ms` (sorted), each timestamp once."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            """want => { const x = document.getElementById('power-chart').data[0].x;
                         return x.length === want.length
                             && x.every((d, i) => new Date(d).getTime() === want[i]); }""",
            arg=expected_ms,
            timeout=WAIT_MS,
        )
    except PlaywrightTimeout:
        got = plotted(page)["power"]
        missing, extra = sorted(set(expected_ms) - set(got)), sorted(set(got) - set(expected_ms))
        duplicates = len(got) - len(set(got))
        raise AssertionError(
            f"{what}: {len(got)} plotted, {len(expected_ms)} expected; missing {missing[:5]}…({len(missing)}), "
            f"extra {extra[:5]}…({len(extra)}), duplicates {duplicates}; meta {meta(page)}"
        ) from None


def buckets(records: list[Record], start: str, end: str, bucket_s: int) -> set[int]:
    """The epoch-aligned buckets holding at least one of `records` within [start, end]."""
    low, high = ms(start), ms(end)
    return {math.floor(ms(r["ts"]) / 1000 / bucket_s) for r in records if low <= ms(r["ts"]) <= high}


def test_history_then_live_each_sample_once_and_the_range_picker(server: dict, publisher: Publisher, page) -> None:
    now = datetime.now(UTC)
    old_newest = now - OLD_NEWEST_AGE
    publisher.backlog([old_newest - timedelta(seconds=OLD_STEP_S * i) for i in range(OLD_RECORDS)][::-1])
    publisher.backlog([now - timedelta(seconds=RECENT_RECORDS - i) for i in range(RECENT_RECORDS)])
    publisher.stream()
    wait_until(lambda: stored_count(page, server, now - timedelta(hours=1)) > RECENT_RECORDS, 60, "the history")

    # The history answer is held back a little, so that live records surely arrive while it loads
    # and must wait for it: the seam's buffered path runs every time, not only when timing allows.
    def slow_history(route: "Route") -> None:
        threading.Event().wait(2.0)  # the server's slowness, scripted (not a wait for a condition)
        route.continue_()

    page.route(lambda url: f"/chargepoints/{SLUG}/history/?range=hour" in url, slow_history)
    page.goto(f"{server['url']}/chargepoints/{SLUG}/")
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=WAIT_MS)
    hour = wait_loaded(page, "hour")
    assert hour["source"] == "raw" and hour["bucketS"] == "0"
    assert "raw records" in hour["text"] and "then live" in hour["text"]
    assert float(hour["queryMs"]) >= 0 and f"{hour['points']} points" in hour["text"]
    # Live records arrive after the history: wait for a few seconds of them, then stop the stream.
    history_points = int(hour["points"])
    page.wait_for_function(
        "n => document.getElementById('power-chart').data[0].x.length >= n + 10", arg=history_points, timeout=WAIT_MS
    )
    publisher.pause()
    sent = publisher.records()
    hour_start = ms(hour["start"])
    expected = sorted(ms(r["ts"]) for r in sent if ms(r["ts"]) >= hour_start)
    assert len(expected) == len(set(expected))
    # Exactly every record of the hour: those only the history had, those both had, those only
    # the socket brought (the newest), each once.
    wait_plotted(page, expected, "history + live")
    assert ms(sent[-1]["ts"]) > ms(hour["end"])  # some came only live
    assert history_points >= RECENT_RECORDS  # and some only from the history
    # Live records that came during the load and were in the history too: dropped at the seam.
    assert int(page.get_attribute("[data-history]", "data-seam-dropped") or 0) >= 1
    assert plotted(page)["l1"] == len(expected)

    # Day: more records than the 1,500 points a range may send, so the server groups them by minute.
    page.click("[data-range=day]")
    day = wait_loaded(page, "day")
    assert (day["source"], day["bucketS"]) == ("raw", "60")
    want = buckets(sent, day["start"], day["end"], 60)
    assert int(day["points"]) == len(want) <= 1500
    assert "1 min averages" in day["text"] and "live paused" in day["text"]
    drawn = plotted(page)
    assert sorted(drawn["power"]) == sorted(b * 60_000 for b in want)
    assert drawn["traces"] == 3  # the averages, and the min-to-max band
    assert page.get_attribute("[data-range=day]", "aria-pressed") == "true"

    # While a past range is shown, live records update the values but leave the charts alone.
    publisher.stream()
    newest_before = len(publisher.records())
    wait_until(lambda: len(publisher.records()) >= newest_before + 5, 20, "five more live records")
    publisher.pause()
    newest = publisher.records()[-1]
    page.wait_for_function(
        "ts => document.querySelector('time.cp-age-text').getAttribute('datetime') === ts",
        arg=newest["ts"],
        timeout=WAIT_MS,
    )
    assert plotted(page) == drawn

    # Week: ten-minute buckets (from the minute rollups where the maintenance made them; the same
    # buckets either way).
    page.click("[data-range=week]")
    week = wait_loaded(page, "week")
    assert (week["source"], week["bucketS"]) == ("rollup", "600")
    sent = publisher.records()
    assert int(week["points"]) == len(buckets(sent, week["start"], week["end"], 600))

    # Custom: a span of the old records, few enough to come raw, exactly those records.
    old = [r for r in sent if ms(r["ts"]) <= ms(format_ts(old_newest))]
    chosen = old[100:400]
    start = parse_ts(chosen[0]["ts"]) - timedelta(seconds=OLD_STEP_S / 2)
    end = parse_ts(chosen[-1]["ts"]) + timedelta(seconds=OLD_STEP_S / 2)
    page.click("[data-range=custom]")
    page.fill("[data-history-custom] input[name=start]", start.strftime("%Y-%m-%dT%H:%M:%S"))
    page.fill("[data-history-custom] input[name=end]", end.strftime("%Y-%m-%dT%H:%M:%S"))
    page.click("[data-history-custom] button[type=submit]")
    custom = wait_loaded(page, "custom")
    assert (custom["source"], custom["bucketS"], custom["points"]) == ("raw", "0", "300")
    wait_plotted(page, [ms(r["ts"]) for r in chosen], "custom range")

    # Back to the last hour: the history again, then live again, still each sample once.
    page.click("[data-range=hour]")
    hour = wait_loaded(page, "hour")
    publisher.stream()
    page.wait_for_function(
        "n => document.getElementById('power-chart').data[0].x.length >= n + 5",
        arg=int(hour["points"]),
        timeout=WAIT_MS,
    )
    publisher.pause()
    sent = publisher.records()
    wait_plotted(page, sorted(ms(r["ts"]) for r in sent if ms(r["ts"]) >= ms(hour["start"])), "back to the hour")


def test_fleet_power_chart_opens_with_its_whole_window(server: dict, publisher: Publisher, page) -> None:
    now = datetime.now(UTC)
    # 1 Hz over the last eight minutes, stored before the page opens.
    publisher.backlog([now - timedelta(seconds=480 - i) for i in range(480)])
    wait_until(lambda: stored_count(page, server, now - timedelta(minutes=9)) == 480, 60, "the history")
    page.goto(f"{server['url']}/")
    page.wait_for_function(
        """() => { const el = document.getElementById('fleet-power-chart');
                   const n = Number(el.dataset.historyPoints);
                   return n > 0 && el.data[0].x.length >= n; }""",
        timeout=WAIT_MS,
    )
    chart = page.eval_on_selector(
        "#fleet-power-chart",
        """el => ({points: Number(el.dataset.historyPoints), queryMs: Number(el.dataset.queryMs),
                   x: el.data[0].x.map(d => new Date(d).getTime()), y: el.data[0].y})""",
    )
    sent = publisher.records()
    # 5-second buckets, each at its middle, every completed one the records touch.
    want = {math.floor(ms(r["ts"]) / 5000) for r in sent}
    history = [(x, y) for x, y in zip(chart["x"], chart["y"], strict=True) if (x - 2500) / 5000 in want]
    assert len(history) == chart["points"] >= len(want) - 2  # the newest bucket may still be filling
    # The window is there at once: eight minutes, not the seconds since the page opened.
    assert history[-1][0] - history[0][0] >= 470_000
    # One charge point: the fleet power of a bucket is its mean power there, kW.
    for x, y in history:
        powers = [power_of(r["seq"]) for r in sent if math.floor(ms(r["ts"]) / 5000) == (x - 2500) // 5000]
        assert y == pytest.approx(sum(powers) / len(powers) / 1000)
    assert chart["queryMs"] >= 0
