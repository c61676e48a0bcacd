"""REST API latency: latest telemetry of the fleet, and one day of one charge point's history.

On PostgreSQL (production layout, the bench's own database and Redis db), daphne serves the
product; a client on the same machine sends sequential requests over one keep-alive connection
with an API token and measures each round trip (request written to response read), p50 and p99:

- latest telemetry of the fleet (FLEET charge points, each with a latest record): the default
  page (100) and the largest (1,000);
- one charge point's history over a day at 1 Hz (86,400 raw samples, downsampled by the server
  to 1,441 points of 60 s buckets), the service behind the charge point page's "day";
- the same latest-fleet page again with If-None-Match: the 304 an unchanged page costs.

The rate limit is raised for the run (EVDASH_API_RATE_LIMIT): the bench measures the API, not
the throttle.

    .venv/bin/python bench/api.py [--quick]     (database: BENCH_DATABASE_URL + "_api")
"""

import argparse
import http.client
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

try:
    from bench import common
except ModuleNotFoundError:  # run as `python bench/api.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common

TITLE = "REST API: latency of latest telemetry and of a day of history"
FLEET = 1000
DAY_SLUG = "api-day"
WARMUP = 20


def slug_of(n: int) -> str:
    return f"api-{n:04d}"


def environment() -> dict[str, str]:
    url = common.own_database_url("api")
    common.ensure_postgres_database(url)
    return common.production_env(
        "127.0.0.1:9",
        database_url=url,
        redis_url=common.own_redis_url(10),
        EVDASH_API_RATE_LIMIT="1000000/minute",
    )


def setup_django(env: dict[str, str]) -> None:
    common.run_manage(["migrate", "--verbosity", "0"], env)
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evdash.settings")
    import django

    django.setup()


def prepare(end: datetime) -> str:
    """FLEET charge points with a latest record, a day of DAY_SLUG at 1 Hz; returns an API token."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from gateway.history import partitions
    from gateway.models import ApiToken, ChargePoint, DeviceProfile, LatestTelemetry, Site
    from gateway.telemetry import build_record

    site, _ = Site.objects.get_or_create(slug="api-site", defaults={"name": "API bench"})
    profile = DeviceProfile.objects.get(slug="generic-ev-charger")
    wanted = [slug_of(n) for n in range(FLEET)] + [DAY_SLUG]
    have = set(ChargePoint.objects.filter(slug__in=wanted).values_list("slug", flat=True))
    ChargePoint.objects.bulk_create(
        [
            ChargePoint(slug=slug, name=slug, site=site, profile=profile, host="127.0.0.1", port=1502 + i)
            for i, slug in enumerate(wanted)
            if slug not in have
        ]
    )
    ids = dict(ChargePoint.objects.filter(slug__in=wanted).values_list("slug", "id"))
    LatestTelemetry.objects.filter(charge_point_id__in=ids.values()).delete()
    latest = []
    for slug, pk in ids.items():
        record = build_record(charge_point=slug, site=site.slug, profile=profile.slug, seq=1, fields=None, moment=end)
        record |= {"status": "charging", "quality": "good", "error": None}
        record["values"] |= {"power_w": 7200.0, "current_l1_a": 16.0, "energy_total_wh": 123456.0}
        latest.append(LatestTelemetry(charge_point_id=pk, record=record, source_ts=end))
    LatestTelemetry.objects.bulk_create(latest)

    day_start = end - timedelta(days=1)
    partitions.ensure_partitions(partitions.SAMPLES, day_start, end)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM gateway_telemetrysample WHERE charge_point_id = %s", [ids[DAY_SLUG]])
        cursor.execute(
            "INSERT INTO gateway_telemetrysample (charge_point_id, ts, seq, status, power_w, current_l1_a, "
            "energy_total_wh) SELECT %s, t, n, CASE WHEN n %% 7200 < 5400 THEN 'charging' ELSE 'available' END, "
            "CASE WHEN n %% 7200 < 5400 THEN 7000 + 500 * sin(n / 600.0) ELSE 0 END, 16, 1e6 + n "
            "FROM generate_series(0, 86399) AS n, LATERAL (SELECT %s::timestamptz + n * interval '1 second') AS g(t)",
            [ids[DAY_SLUG], day_start],
        )
        cursor.execute("ANALYZE gateway_telemetrysample")

    user, _ = get_user_model().objects.get_or_create(username="api-bench")
    ApiToken.objects.filter(user=user).delete()
    _row, raw = ApiToken.issue(user, "bench")
    return raw


def measure(port: int, token: str, path: str, count: int, headers: dict[str, str] | None = None) -> dict:
    """Sequential GETs of `path` over one connection: latency percentiles (ms), status, bytes."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = {"Authorization": f"Bearer {token}", "Accept": "application/json"} | (headers or {})
    times, status, size = [], 0, 0
    try:
        for index in range(WARMUP + count):
            started = time.perf_counter()
            connection.request("GET", path, headers=sent)
            response = connection.getresponse()
            body = response.read()
            elapsed_ms = (time.perf_counter() - started) * 1000
            status, size = response.status, len(body)
            if status not in (200, 304):
                raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
            if index >= WARMUP:
                times.append(elapsed_ms)
    finally:
        connection.close()
    return {"status": status, "bytes": size} | common.percentiles(times, (50, 99))


def etag_of(port: int, token: str, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        response.read()
        return response.getheader("ETag") or ""
    finally:
        connection.close()


def run(quick: bool) -> list[dict]:
    env = environment()
    setup_django(env)
    end = datetime.now(UTC).replace(microsecond=0)
    token = prepare(end)
    count = 100 if quick else 400
    day = urlencode({"start": (end - timedelta(days=1)).isoformat(), "end": end.isoformat()})
    cases = [
        ("latest telemetry, fleet page of 100", "/api/v1/telemetry/latest/", None),
        ("latest telemetry, fleet page of 1,000", "/api/v1/telemetry/latest/?limit=1000", None),
        ("history, 1 charge point, a day at 1 Hz", f"/api/v1/charge-points/{DAY_SLUG}/history/?{day}", None),
    ]
    rows = []
    with common.scratch_var_dir() as var_dir:
        port = common.free_port()
        daphne = common.spawn_daphne(port, env | {"EVDASH_VAR_DIR": str(var_dir)}, var_dir / "daphne.log")
        try:
            for label, path, headers in cases:
                result = measure(port, token, path, count, headers)
                rows.append(rounded_row(label, result, count))
            path = "/api/v1/telemetry/latest/?limit=1000"
            result = measure(port, token, path, count, {"If-None-Match": etag_of(port, token, path)})
            rows.append(rounded_row("latest telemetry, page of 1,000, unchanged (304)", result, count))
        finally:
            common.stop_process(daphne)
    return rows


def rounded_row(label: str, result: dict, count: int) -> dict:
    return {
        "request": label,
        "p50 ms": round(result["p50"], 1),
        "p99 ms": round(result["p99"], 1),
        "status": result["status"],
        "KB": round(result["bytes"] / 1024, 1),
        "requests": count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--quick", action="store_true", default=common.quick_default())
    args = parser.parse_args()
    common.print_rows(TITLE, run(args.quick))


if __name__ == "__main__":
    main()
