"""The history JSON views behind the charts: login, refused input, raw vs bucketed, the points bound.

Samples are written as rows of the history table from scripted values, and every expectation
(which samples, which bucket averages) is computed here from those values, not by the query code.
"""

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.test import Client
from django.urls import reverse

from gateway.models import ChargePoint, DeviceProfile, Site, TelemetrySample
from gateway.telemetry import format_ts
from tests.conftest import make_charge_point

pytestmark = pytest.mark.django_db


def history_url(slug: str = "cp-1") -> str:
    return reverse("gateway:charge_point_history", args=[slug])


FLEET_URL = "/fleet/power-history/"


def power_at(i: int) -> float:
    """Scripted power of sample i, W: varied, so averages and extremes differ per bucket."""
    return float((i * 37) % 11_000 + 100)


def add_samples(cp: ChargePoint, times: list[datetime], *, first_seq: int = 1) -> list[TelemetrySample]:
    rows = [
        TelemetrySample(
            charge_point=cp,
            ts=ts,
            seq=first_seq + i,
            status="charging",
            power_w=power_at(i),
            current_l1_a=power_at(i) / 230,
            current_l2_a=None,
            current_l3_a=1.0,
        )
        for i, ts in enumerate(times)
    ]
    TelemetrySample.objects.bulk_create(rows)
    return rows


def whole_ms(moment: datetime) -> datetime:
    """Timestamps as records carry them: milliseconds."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def seconds_before_now(count: int, step_s: float, newest_age_s: float = 5) -> list[datetime]:
    """`count` timestamps `step_s` apart, oldest first, the newest `newest_age_s` ago."""
    newest = whole_ms(datetime.now(UTC) - timedelta(seconds=newest_age_s))
    return [newest - timedelta(seconds=step_s * (count - 1 - i)) for i in range(count)]


@pytest.fixture
def cp(site: Site, generic_profile: DeviceProfile) -> ChargePoint:
    return make_charge_point(site, generic_profile, "cp-1", port=5020)


# --- Login, methods, refused input -------------------------------------------------------------


@pytest.mark.parametrize("url", [history_url(), FLEET_URL])
def test_anonymous_gets_401_json_not_a_login_page(client: Client, cp: ChargePoint, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 401
    assert response.json() == {"error": "login required"}


@pytest.mark.parametrize("url", [history_url(), FLEET_URL])
def test_only_get_and_head(admin_client: Client, client: Client, cp: ChargePoint, url: str) -> None:
    for who in (admin_client, client):
        assert who.post(url).status_code == 405
        assert who.delete(url).status_code == 405
    assert admin_client.head(url).status_code == 200


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"range": "year"}, "range must be one of hour, day, week"),
        ({"start": "yesterday"}, "start is not an ISO 8601 date-time"),
        ({"start": "2025-13-45T00:00:00Z"}, "start is not an ISO 8601 date-time"),
        ({"start": "2025-01-01T00:00:00"}, "start needs a time zone"),
        ({"start": "2025-01-02T00:00:00Z", "end": "2025-01-01T00:00:00Z"}, "end must be after start"),
        ({"start": "2025-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}, "end must be after start"),
        ({"start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:01Z"}, "longer than 31 days"),
        ({"end": "2025-01-01T00:00:00Z"}, "end needs a start"),
        ({"range": "day", "start": "2025-01-01T00:00:00Z"}, "either range or start/end"),
        ({"max_points": "many"}, "max_points must be a number"),
        ({"max_points": "5"}, "max_points must be between 10 and 5000"),
        ({"max_points": "5001"}, "max_points must be between 10 and 5000"),
        ({"max_points": "nan"}, "max_points must be between"),
        ({"roles": "power_w,voltage_l9_v"}, "unknown values voltage_l9_v"),
    ],
)
def test_charge_point_history_refuses_bad_input_with_a_reason(
    admin_client: Client, cp: ChargePoint, query: dict, says: str
) -> None:
    response = admin_client.get(history_url(), query)
    assert response.status_code == 400
    assert says in response.json()["error"]


def test_a_month_is_accepted_and_an_unknown_charge_point_is_404(admin_client: Client, cp: ChargePoint) -> None:
    month = {"start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00+00:00"}
    assert admin_client.get(history_url(), month).status_code == 200
    response = admin_client.get(history_url("nope"))
    assert response.status_code == 404
    assert response.json() == {"error": "no charge point 'nope'"}


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ({"window_s": "0"}, 400, "window_s must be between 1 and 86400"),
        ({"window_s": "-5"}, 400, "window_s must be between"),
        ({"window_s": "ten"}, 400, "window_s must be a number"),
        ({"window_s": "86401"}, 400, "window_s must be between"),
        ({"bucket_s": "0.5"}, 400, "bucket_s must be between 1 and"),
        ({"window_s": "86400", "bucket_s": "1"}, 400, "over 5000 points"),
        ({"site": "atlantis"}, 404, "no site 'atlantis'"),
    ],
)
def test_fleet_power_history_refuses_bad_input(
    admin_client: Client, cp: ChargePoint, query: dict, status: int, says: str
) -> None:
    response = admin_client.get(FLEET_URL, query)
    assert response.status_code == status
    assert says in response.json()["error"]


# --- What comes back ---------------------------------------------------------------------------


def test_the_last_hour_is_raw_every_sample_once_with_the_newest_as_the_seam(
    admin_client: Client, cp: ChargePoint
) -> None:
    times = seconds_before_now(120, 1.0)
    rows = add_samples(cp, times)
    add_samples(cp, [times[-1] - timedelta(hours=2)], first_seq=10_000)  # outside the hour

    answer = admin_client.get(history_url(), {"range": "hour"}).json()

    assert answer["range"] == "hour" and answer["source"] == "raw" and answer["bucket_s"] == 0
    assert answer["points"] == 120
    assert answer["t"] == [format_ts(ts) for ts in times]
    assert answer["values"]["power_w"] == [row.power_w for row in rows]
    assert answer["values"]["current_l2_a"] == [None] * 120
    assert answer["status"] == ["charging"] * 120
    assert answer["last"] == {"ts": format_ts(times[-1]), "seq": 120}
    assert "min" not in answer and answer["query_ms"] >= 0
    # The range ends at the server's now, an hour after it starts.
    start, end = (datetime.fromisoformat(answer[k].replace("Z", "+00:00")) for k in ("start", "end"))
    assert end - start == timedelta(hours=1)
    assert answer["end"] == answer["server_now"]


def test_a_range_beyond_max_points_is_bucketed_on_the_server(admin_client: Client, cp: ChargePoint) -> None:
    times = seconds_before_now(3000, 1.0)
    rows = add_samples(cp, times)

    answer = admin_client.get(history_url(), {"range": "hour", "max_points": "100"}).json()

    # 3000 samples over 50 minutes into at most 100 points: the smallest readable bucket is 1 min
    # (30 s would make 101 buckets over the hour), aligned on the epoch.
    assert answer["source"] == "raw" and answer["bucket_s"] == 60
    assert answer["points"] == len(answer["t"]) <= 100
    expected: dict[int, list[TelemetrySample]] = defaultdict(list)
    for row in rows:
        expected[math.floor(row.ts.timestamp() / 60)].append(row)
    assert answer["t"] == [format_ts(datetime.fromtimestamp(b * 60, UTC)) for b in sorted(expected)]
    for i, bucket in enumerate(sorted(expected)):
        powers = [row.power_w for row in expected[bucket]]
        assert answer["values"]["power_w"][i] == pytest.approx(sum(powers) / len(powers))
        assert answer["min"]["power_w"][i] == min(powers)
        assert answer["max"]["power_w"][i] == max(powers)
    assert sum(len(v) for v in expected.values()) == 3000  # every sample in one bucket
    # The seam is still the newest raw sample, whatever the buckets.
    assert answer["last"] == {"ts": format_ts(times[-1]), "seq": 3000}


def test_roles_send_only_the_values_asked_for_raw_and_bucketed(admin_client: Client, cp: ChargePoint) -> None:
    rows = add_samples(cp, seconds_before_now(300, 1.0))
    everything = admin_client.get(history_url(), {"range": "hour"})
    raw = admin_client.get(history_url(), {"range": "hour", "roles": "power_w,current_l1_a"})
    assert set(raw.json()["values"]) == {"power_w", "current_l1_a"}
    assert raw.json()["values"]["power_w"] == [row.power_w for row in rows]
    assert len(raw.content) < len(everything.content)  # what the page saves on every load
    bucketed = admin_client.get(history_url(), {"range": "hour", "roles": "power_w", "max_points": "10"}).json()
    assert bucketed["bucket_s"] > 0
    assert set(bucketed["values"]) == set(bucketed["min"]) == set(bucketed["max"]) == {"power_w"}


def test_the_default_bound_is_1500_points_and_a_larger_one_sends_raw(admin_client: Client, cp: ChargePoint) -> None:
    add_samples(cp, seconds_before_now(2000, 1.0))
    bucketed = admin_client.get(history_url()).json()
    assert bucketed["bucket_s"] > 0 and 0 < bucketed["points"] <= 1500
    raw = admin_client.get(history_url(), {"max_points": "2000"}).json()
    assert raw["bucket_s"] == 0 and raw["points"] == 2000
    one_less = admin_client.get(history_url(), {"max_points": "1999"}).json()
    assert one_less["bucket_s"] > 0


def test_ranges_and_a_custom_span_select_their_samples(admin_client: Client, cp: ChargePoint) -> None:
    now = whole_ms(datetime.now(UTC))
    ages_h = [0.5, 3, 20, 30, 24 * 6, 24 * 8]
    times = [now - timedelta(hours=h) for h in sorted(ages_h, reverse=True)]
    add_samples(cp, times)
    in_range = {
        name: admin_client.get(history_url(), {"range": name}).json()["points"] for name in ("hour", "day", "week")
    }
    assert in_range == {"hour": 1, "day": 3, "week": 5}
    # Custom: start and end inclusive, any offset accepted.
    span = {
        "start": format_ts(now - timedelta(hours=30)),
        "end": (now - timedelta(hours=3)).astimezone(timezone(timedelta(hours=2))).isoformat(),
    }
    custom = admin_client.get(history_url(), span).json()
    assert custom["range"] == "custom"
    assert custom["t"] == [format_ts(now - timedelta(hours=h)) for h in (30, 20, 3)]
    # No end: up to now.
    since = admin_client.get(history_url(), {"start": format_ts(now - timedelta(hours=21))}).json()
    assert since["points"] == 3


def test_no_samples_is_an_empty_series_without_a_seam(admin_client: Client, cp: ChargePoint) -> None:
    answer = admin_client.get(history_url()).json()
    assert answer["points"] == 0 and answer["t"] == [] and answer["last"] is None


def test_fleet_power_is_the_sum_of_each_charge_points_mean_over_completed_buckets(
    admin_client: Client, cp: ChargePoint, site: Site, generic_profile: DeviceProfile
) -> None:
    other_site = Site.objects.create(slug="south", name="South")
    cp2 = make_charge_point(site, generic_profile, "cp-2", port=5021)
    cp3 = make_charge_point(other_site, generic_profile, "cp-3", port=5022)
    series = {cp: seconds_before_now(590, 1.0, newest_age_s=0), cp2: seconds_before_now(295, 2.0, newest_age_s=0)}
    series[cp3] = seconds_before_now(100, 3.0, newest_age_s=0)
    rows = {c: add_samples(c, times) for c, times in series.items()}
    before = datetime.now(UTC)

    answer = admin_client.get(FLEET_URL, {"window_s": "600"}).json()
    after = datetime.now(UTC)
    one_site = admin_client.get(FLEET_URL, {"window_s": "600", "site": "south"}).json()

    assert answer["bucket_s"] == 5.0 and answer["window_s"] == 600 and answer["site"] is None
    starts = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in answer["t"]]
    # Completed buckets only: none reaches past the moment the view answered.
    assert starts and max(starts) + timedelta(seconds=5) <= after
    assert min(starts) >= before - timedelta(seconds=605)

    def expected(charge_points: list[ChargePoint]) -> dict[int, float]:
        totals: dict[int, float] = defaultdict(float)
        for c in charge_points:
            per_bucket: dict[int, list[float]] = defaultdict(list)
            for row in rows[c]:
                per_bucket[math.floor(row.ts.timestamp() / 5)].append(row.power_w)
            for bucket, powers in per_bucket.items():
                totals[bucket] += sum(powers) / len(powers)
        return totals

    for got, charge_points in ((answer, [cp, cp2, cp3]), (one_site, [cp3])):
        want = expected(charge_points)
        assert len(got["t"]) == len(got["power_w"]) > 50
        for ts, power in zip(got["t"], got["power_w"], strict=True):
            bucket = round(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() / 5)
            assert power == pytest.approx(want[bucket]), ts
