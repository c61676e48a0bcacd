"""The chart queries on the embedded database: raw when few, bucketed on the server, rollups beyond a day."""

from datetime import timedelta

import pytest

from gateway.history import rollups
from gateway.history.query import charge_point_series, fleet_power_series
from gateway.history.store import save_history
from gateway.models import ChargePoint, Site
from tests.conftest import make_charge_point
from tests.test_history_store import T0, series

pytestmark = pytest.mark.django_db


@pytest.fixture
def cp(site, generic_profile):
    return make_charge_point(site, generic_profile, "cp-1", 502)


def test_a_short_range_is_sent_raw_with_the_newest_record_for_the_live_seam(cp) -> None:
    records = series("cp-1", T0, 20, power=lambda i: None if i == 3 else 100.0 * i)
    save_history(records)
    result = charge_point_series("cp-1", T0, T0 + timedelta(seconds=19))
    assert (result["source"], result["bucket_s"], result["points"]) == ("raw", 0, 20)
    assert result["t"] == [record["ts"] for record in records]
    assert result["values"]["power_w"][:5] == [0.0, 100.0, 200.0, None, 400.0]
    assert result["last"] == {"ts": records[-1]["ts"], "seq": 19}
    assert "min" not in result and result["query_ms"] >= 0


def test_a_longer_range_is_bucketed_on_the_server(cp) -> None:
    records = series(
        "cp-1", T0, 600, power=lambda i: float(i % 7), status=lambda i: "charging" if i < 305 else "available"
    )
    save_history(records)
    result = charge_point_series("cp-1", T0, T0 + timedelta(seconds=599), max_points=50)
    assert (result["source"], result["bucket_s"], result["points"]) == ("raw", 15, 40)
    for k in (0, 20, 39):
        chunk = [float(i % 7) for i in range(15 * k, 15 * k + 15)]
        assert result["values"]["power_w"][k] == pytest.approx(sum(chunk) / 15)
        assert (result["min"]["power_w"][k], result["max"]["power_w"][k]) == (min(chunk), max(chunk))
    assert result["status"][19] == "charging" and result["status"][20] == "available"
    assert result["t"][1] == records[15]["ts"]
    assert result["last"] == {"ts": records[-1]["ts"], "seq": 599}


def test_beyond_a_day_rollups_then_the_raw_tail(cp) -> None:
    # 30 h at one record a minute; rolled up except the last 2 hours (the maintenance behind).
    start = T0 - timedelta(hours=28, minutes=T0.minute % 5)  # on a 5-minute bucket boundary
    records = series("cp-1", start, 30 * 60, every_s=60, power=lambda i: float(i))
    save_history(records)
    rollups.roll_up(since=start, now=T0)
    result = charge_point_series("cp-1", start, start + timedelta(hours=30), max_points=500)
    assert result["source"] == "rollup" and result["bucket_s"] == 300
    assert result["points"] <= 500
    means = dict(zip(result["t"], result["values"]["power_w"], strict=True))
    # Every bucket is the mean of its five minutes, whether from rollups or the raw tail.
    for k in range(0, len(records) - 5, 5):
        assert means[records[k]["ts"]] == pytest.approx(sum(range(k, k + 5)) / 5)
    assert result["last"]["seq"] == len(records) - 1


def test_fleet_power_sums_the_charge_points_mean_power(cp, generic_profile) -> None:
    other_site = Site.objects.create(slug="other", name="Other")
    make_charge_point(other_site, generic_profile, "cp-2", 503)
    save_history(
        series("cp-1", T0, 20, power=lambda i: 1000.0 + i) + series("cp-2", T0, 10, every_s=2, power=lambda i: 50.0)
    )
    result = fleet_power_series(T0, T0 + timedelta(seconds=20), bucket_s=10)
    assert result["bucket_s"] == 10.0
    assert result["t"] == [series("cp-1", T0, 20)[0]["ts"], series("cp-1", T0, 20)[10]["ts"]]
    assert result["power_w"] == [pytest.approx(1004.5 + 50), pytest.approx(1014.5 + 50)]
    only = fleet_power_series(T0, T0 + timedelta(seconds=20), site="other", bucket_s=10)
    assert only["power_w"] == [pytest.approx(50.0), pytest.approx(50.0)]


def test_fleet_power_end_is_exclusive_so_a_sample_on_the_boundary_opens_no_bucket(cp) -> None:
    # The page asks up to the last completed bucket's end; a sample stamped exactly there belongs
    # to the bucket still filling and must not show as a one-sample bucket (a dip on the chart).
    save_history(series("cp-1", T0, 21, power=lambda i: 1000.0))
    result = fleet_power_series(T0, T0 + timedelta(seconds=20), bucket_s=10)
    assert result["t"] == [series("cp-1", T0, 21)[0]["ts"], series("cp-1", T0, 21)[10]["ts"]]


def test_an_unknown_charge_point_raises_does_not_exist(db) -> None:
    with pytest.raises(ChargePoint.DoesNotExist):
        charge_point_series("nowhere", T0, T0 + timedelta(hours=1))
