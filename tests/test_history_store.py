"""The history sink on the embedded database: bulk, idempotent, rollups, retention, maintenance."""

import asyncio
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

from gateway.history import maintenance, rollups
from gateway.history.store import save_history, store_history
from gateway.models import RollupBacklog, TelemetryRollup, TelemetrySample
from gateway.telemetry import format_ts
from tests.conftest import make_charge_point

pytestmark = pytest.mark.django_db

# A recent whole minute, so nothing falls before the raw retention.
T0 = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)


def sample_record(slug: str, moment: datetime, seq: int, power_w: float | None, status: str = "charging") -> dict:
    """A telemetry v2 record as the poller publishes it."""
    return {
        "schema_version": 2,
        "type": "telemetry",
        "charge_point": slug,
        "site": "test-site",
        "profile": "generic-ev-charger",
        "ts": format_ts(moment),
        "seq": seq,
        "status": status,
        "iec61851_state": "C",
        "values": {
            "power_w": power_w,
            "current_l1_a": None if power_w is None else power_w / 230,
            "energy_total_wh": 1000.0 + seq,
        },
        "extra": {"serial": "X"},
        "quality": "good",
        "error": None,
        "poll_ms": 12.0,
        "active_limit_a": 16.0,
    }


def series(
    slug: str,
    start: datetime,
    count: int,
    every_s: float = 1.0,
    power=lambda i: 1000.0 + i,
    status=lambda i: "charging",
) -> list[dict]:
    return [sample_record(slug, start + timedelta(seconds=i * every_s), i, power(i), status(i)) for i in range(count)]


@pytest.fixture
def cp(site, generic_profile):
    return make_charge_point(site, generic_profile, "cp-1", 502)


def test_each_record_is_one_row_with_its_values(cp) -> None:
    records = series("cp-1", T0, 10)
    assert save_history(records) == 10
    rows = list(
        TelemetrySample.objects.order_by("ts").values(
            "ts", "seq", "status", "power_w", "energy_total_wh", "active_limit_a"
        )
    )
    assert [row["seq"] for row in rows] == list(range(10))
    assert [row["power_w"] for row in rows] == [1000.0 + i for i in range(10)]
    assert rows[3]["energy_total_wh"] == 1003.0 and rows[3]["active_limit_a"] == 16.0
    assert rows[0]["ts"] == T0


@pytest.mark.django_db(transaction=True)
async def test_redelivered_batch_leaves_no_duplicate_rows(cp) -> None:
    records = series("cp-1", T0, 50)
    await store_history(records)
    await store_history(records[10:30])  # a consumer restart before its commit
    await store_history(records)
    assert await TelemetrySample.objects.acount() == 50
    # Same (charge point, ts, seq) with other values: the first stored stays.
    changed = [dict(record, values=dict(record["values"], power_w=-1.0)) for record in records[:5]]
    await store_history(changed)
    assert await TelemetrySample.objects.filter(power_w=-1.0).acount() == 0


def test_unknown_charge_points_are_skipped_with_a_warning(cp, caplog) -> None:
    save_history(series("cp-1", T0, 3) + series("nowhere", T0, 2))
    assert TelemetrySample.objects.count() == 3
    assert "unknown charge point 'nowhere'" in caplog.text


def test_records_older_than_the_raw_retention_are_skipped(cp, settings) -> None:
    old = datetime.now(UTC) - timedelta(days=settings.EVDASH["RETENTION_RAW_DAYS"], hours=1)
    save_history(series("cp-1", old, 3) + series("cp-1", T0, 2))
    assert TelemetrySample.objects.count() == 2


def expected_minute(records: list[dict]) -> dict:
    powers = [r["values"]["power_w"] for r in records if r["values"]["power_w"] is not None]
    return {
        "samples": len(records),
        "min": min(powers),
        "avg": sum(powers) / len(powers),
        "max": max(powers),
        "status": records[-1]["status"],
    }


def test_rollups_of_completed_minutes(cp) -> None:
    # 3 minutes at 2 s, the power a saw-tooth, the status changing inside the 2nd minute; a gap in power.
    records = series(
        "cp-1",
        T0,
        90,
        every_s=2,
        power=lambda i: None if i == 5 else float((i * 37) % 100),
        status=lambda i: "charging" if i < 40 else "suspended",
    )
    save_history(records)
    written = rollups.roll_up(since=T0, now=T0 + timedelta(minutes=2, seconds=30))
    assert written == 2  # the third minute is not complete yet
    rows = {row.minute: row for row in TelemetryRollup.objects.all()}
    for minute in range(2):
        expected = expected_minute(records[minute * 30 : (minute + 1) * 30])
        row = rows[T0 + timedelta(minutes=minute)]
        assert row.samples == expected["samples"]
        assert (row.power_w_min, row.power_w_max) == (expected["min"], expected["max"])
        assert row.power_w_avg == pytest.approx(expected["avg"])
        assert row.last_status == expected["status"]
    assert rows[T0 + timedelta(minutes=1)].last_status == "suspended"
    # Again, and with a late record in minute 0: recomputed, never doubled.
    save_history([sample_record("cp-1", T0 + timedelta(seconds=59, milliseconds=500), 1000, 5000.0)])
    rollups.roll_up(now=T0 + timedelta(minutes=2, seconds=30))
    first = TelemetryRollup.objects.get(minute=T0)
    assert first.samples == 31 and first.power_w_max == 5000.0
    assert TelemetryRollup.objects.count() == 2


def test_records_replayed_from_long_ago_are_rolled_up_even_after_a_restart(cp) -> None:
    """An outbox replays records older than the roll-up's look-back: their note is in the database
    (written with them), so a consumer that dies before its next roll-up loses no minute."""
    live_now = datetime.now(UTC).replace(microsecond=0)
    save_history(series("cp-1", live_now - timedelta(seconds=30), 30))
    assert rollups.pending_since() is None  # live records need no note: the look-back covers them
    now = T0 + timedelta(hours=1)
    save_history(series("cp-1", now - timedelta(minutes=3), 120))
    rollups.roll_up(now=now)
    assert rollups.pending_since() is None
    replayed_from = now - timedelta(minutes=40)
    save_history(series("cp-1", replayed_from, 60, power=lambda i: 500.0))
    # The process stops here: what it knew in memory is gone; the note is a row.
    assert RollupBacklog.objects.get().since == replayed_from
    rollups.roll_up(now=now)
    minute = TelemetryRollup.objects.get(minute=replayed_from)
    assert (minute.samples, minute.power_w_avg) == (60, 500.0)
    assert rollups.pending_since() is None


def test_prune_deletes_what_is_past_the_retention_on_sqlite(cp, settings) -> None:
    now = datetime.now(UTC)
    save_history(series("cp-1", now - timedelta(days=3), 5) + series("cp-1", now - timedelta(hours=1), 5))
    rollups.roll_up(since=now - timedelta(days=4), now=now)
    assert TelemetryRollup.objects.count() == 2
    settings.EVDASH = dict(settings.EVDASH, RETENTION_RAW_DAYS=2, RETENTION_ROLLUP_DAYS=2)
    report = maintenance.prune(now)
    assert report["deleted"] == {"gateway_telemetrysample": 5, "gateway_telemetryrollup": 1}
    assert TelemetrySample.objects.filter(ts__lt=now - timedelta(days=2)).count() == 0
    assert TelemetrySample.objects.count() == 5


@pytest.mark.django_db(transaction=True)
async def test_the_maintenance_job_rolls_up_by_itself_and_stops(site, generic_profile) -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(make_charge_point)(site, generic_profile, "cp-1", 502)
    await store_history(series("cp-1", T0, 60))
    stop = asyncio.Event()
    job = asyncio.create_task(maintenance.run_maintenance(stop, interval_s=0.2))
    # wait_for polls a sync condition; the ORM needs its async API here: the same poll, awaited.
    deadline = asyncio.get_running_loop().time() + 15
    while await TelemetryRollup.objects.acount() != 1:
        assert not job.done(), "the maintenance job ended by itself"
        assert asyncio.get_running_loop().time() < deadline, "no rollup within 15 s"
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(job, 5)


def test_manage_py_history_maintain_and_status(cp) -> None:
    save_history(series("cp-1", T0, 120))
    out = io.StringIO()
    call_command("history", "maintain", stdout=out)
    assert "rolled up" in out.getvalue()
    assert TelemetryRollup.objects.count() == 2
    out = io.StringIO()
    call_command("history", "status", stdout=out)
    assert "gateway_telemetrysample" in out.getvalue() and "120 rows" in out.getvalue()
