"""The history on PostgreSQL: partitioned tables, partitions created on demand and ahead, pruning by dropping them."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from gateway.history import maintenance, partitions, rollups
from gateway.history.query import charge_point_series, fleet_power_series
from gateway.history.store import save_history
from gateway.models import TelemetryRollup, TelemetrySample
from tests.conftest import make_charge_point
from tests.test_history_store import T0, series

pytestmark = [pytest.mark.production, pytest.mark.django_db]


@pytest.fixture
def cp(site, generic_profile):
    return make_charge_point(site, generic_profile, "cp-1", 502)


def test_the_history_tables_are_partitioned_by_time_with_a_brin_on_ts() -> None:
    assert partitions.is_partitioned(partitions.SAMPLES) and partitions.is_partitioned(partitions.ROLLUPS)
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'gateway_sample_ts_idx'")
        assert "USING brin" in cursor.fetchone()[0]
    today = datetime.now(UTC).date()
    names = partitions.partitions(partitions.SAMPLES)
    for ahead in range(partitions.DAYS_AHEAD + 1):
        assert partitions.SAMPLES.name(today + timedelta(days=ahead)) in names


def test_store_creates_the_partition_a_batch_needs_and_redelivery_adds_nothing(cp, caplog) -> None:
    moment = datetime.now(UTC) - timedelta(days=5)  # before the partitions the migration made
    name = partitions.SAMPLES.name(moment.date())
    assert name not in partitions.partitions(partitions.SAMPLES)
    records = series("cp-1", moment, 100) + series("nowhere", moment, 2)
    assert save_history(records) == 100
    assert name in partitions.partitions(partitions.SAMPLES)
    assert save_history(records) == 0  # redelivered: conflicts, no second row
    assert save_history(records[20:40]) == 0
    assert TelemetrySample.objects.count() == 100
    assert sorted(TelemetrySample.objects.values_list("power_w", flat=True)) == [1000.0 + i for i in range(100)]
    assert "unknown charge point 'nowhere'" in caplog.text
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{name}"')
        assert cursor.fetchone()[0] == 100  # the rows sit in their day's partition


def test_maintenance_rolls_up_then_prunes_whole_partitions(cp, settings) -> None:
    now = datetime.now(UTC)
    settings.EVDASH = dict(settings.EVDASH, RETENTION_RAW_DAYS=14, RETENTION_ROLLUP_DAYS=400)
    old = (now - timedelta(days=10)).replace(hour=12, minute=0, second=0, microsecond=0)
    save_history(series("cp-1", old, 120) + series("cp-1", T0, 60))
    rollups.roll_up(since=old, now=now)
    assert TelemetryRollup.objects.filter(minute__lt=now - timedelta(days=9)).count() == 2
    # Five days later the old day is past the 14 days: its partition goes, its rollups stay.
    report = maintenance.maintain(now + timedelta(days=5))
    assert partitions.SAMPLES.name(old.date()) in report["dropped"]
    assert partitions.SAMPLES.name((now + timedelta(days=5 + partitions.DAYS_AHEAD)).date()) in report["created"]
    assert TelemetrySample.objects.count() == 60
    assert TelemetryRollup.objects.filter(minute__lt=now - timedelta(days=9)).count() == 2
    # Rollups go by month once the whole month is past the rollup retention.
    settings.EVDASH = dict(settings.EVDASH, RETENTION_ROLLUP_DAYS=1)
    report = maintenance.maintain(now + timedelta(days=70))
    assert partitions.ROLLUPS.name(old.date()) in report["dropped"]
    assert not TelemetryRollup.objects.filter(minute__lt=now - timedelta(days=9)).exists()


def test_queries_on_postgresql(cp) -> None:
    save_history(series("cp-1", T0, 3000))
    raw = charge_point_series("cp-1", T0, T0 + timedelta(seconds=99))
    assert raw["source"] == "raw" and raw["points"] == 100
    bucketed = charge_point_series("cp-1", T0, T0 + timedelta(seconds=2999), max_points=100)
    assert bucketed["bucket_s"] == 30 and bucketed["points"] == 100
    assert bucketed["values"]["power_w"][0] == pytest.approx(sum(1000.0 + i for i in range(30)) / 30)
    assert bucketed["last"] == {"ts": series("cp-1", T0, 3000)[-1]["ts"], "seq": 2999}
    fleet = fleet_power_series(T0, T0 + timedelta(seconds=60), bucket_s=60)
    assert fleet["power_w"] == [pytest.approx(sum(1000.0 + i for i in range(60)) / 60)]
