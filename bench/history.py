"""Telemetry history on PostgreSQL: the history sink's storage rate, and the chart queries.

- Storage: records of 500 charge points (1 Hz, ending now) through gateway.history.store.save_history
  in consumer-sized batches, on a partitioned table: records/s, and CPU µs per record in the
  consumer (this process) and in its PostgreSQL backend. Then the same batches again (a redelivery:
  every record a conflict).
- Queries (gateway.history.query, the functions the pages call), median of 5: a day and a week of
  one charge point at 1 Hz (charge_point_series, max 1500 points: a day is bucketed from raw
  samples, a week from the one-minute rollups), a day of 500 charge points (fleet_power_series,
  60 s buckets, from rollups) and the fleet chart's 600 s window (5 s buckets, raw).
The week at 1 Hz (604,800 samples) is written with generate_series and rolled up by
gateway.history.rollups; the fleet's day of rollups (720,000 rows) is written with generate_series
too (43 million raw samples would take the storage run half an hour).

    .venv/bin/python bench/history.py [--quick]     (database: BENCH_DATABASE_URL + "_history")
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

try:
    from bench import common
except ModuleNotFoundError:  # run as `python bench/history.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common

TITLE = "History: storage rate into PostgreSQL, chart query times"
FLEET = 500
BATCH = 500
WEEK_SLUG = "hist-week"


def slug_of(n: int) -> str:
    return f"hist-{n:04d}"


def setup_django() -> None:
    url = common.own_database_url("history")
    common.ensure_postgres_database(url)
    env = common.production_env("127.0.0.1:9", database_url=url)
    common.run_manage(["migrate", "--verbosity", "0"], env)
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evdash.settings")
    import django

    django.setup()


def prepare_fleet() -> dict[str, int]:
    from django.db import connection

    from gateway.models import ChargePoint, DeviceProfile, Site

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE gateway_telemetrysample, gateway_telemetryrollup")
    site, _ = Site.objects.get_or_create(slug="hist-site", defaults={"name": "History bench"})
    profile = DeviceProfile.objects.get(slug="generic-ev-charger")
    wanted = [slug_of(n) for n in range(FLEET)] + [WEEK_SLUG]
    have = set(ChargePoint.objects.filter(slug__in=wanted).values_list("slug", flat=True))
    ChargePoint.objects.bulk_create(
        [
            ChargePoint(slug=slug, name=slug, site=site, profile=profile, host="127.0.0.1", port=502 + i % 1000)
            for i, slug in enumerate(wanted)
            if slug not in have
        ]
    )
    return dict(ChargePoint.objects.filter(slug__in=wanted).values_list("slug", "id"))


def records_for(seconds: int, end) -> list[dict]:
    from datetime import timedelta

    from gateway.telemetry import format_ts

    start = end - timedelta(seconds=seconds)
    out = []
    for second in range(seconds):
        ts = format_ts(start + timedelta(seconds=second))
        for n in range(FLEET):
            out.append(
                {
                    "schema_version": 2,
                    "type": "telemetry",
                    "charge_point": slug_of(n),
                    "site": "hist-site",
                    "profile": "generic-ev-charger",
                    "ts": ts,
                    "seq": second,
                    "status": "charging",
                    "iec61851_state": "C",
                    "values": {
                        "power_w": 7000.0 + n,
                        "current_l1_a": 16.0,
                        "current_l2_a": 16.0,
                        "current_l3_a": 16.0,
                        "voltage_l1_v": 230.1,
                        "voltage_l2_v": 229.8,
                        "voltage_l3_v": 231.0,
                        "energy_total_wh": 1e6 + second * 2,
                        "session_energy_wh": second * 2.0,
                        "temperature_c": 41.5,
                        "current_limit_a": 32.0,
                        "error_code": 0,
                    },
                    "extra": {"serial": f"SN-{n:06d}", "firmware": "5.12.3"},
                    "quality": "good",
                    "error": None,
                    "poll_ms": 21.4,
                    "active_limit_a": None,
                }
            )
    return out


def measure_storage(records: list[dict]) -> dict:
    from django.db import connection

    from gateway.history.store import save_history

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    batches = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
    row = {"records": len(records), "batch": BATCH}
    for label in ("", "redelivered_"):
        server0, cpu0, wall0 = common.cpu_seconds(backend, tree=False), time.process_time(), time.perf_counter()
        stored = sum(save_history(batch) for batch in batches)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        server = common.cpu_seconds(backend, tree=False) - server0
        row |= {
            f"{label}stored": stored,
            f"{label}records_per_s": round(len(records) / wall),
            f"{label}consumer_cpu_us_per_record": round(cpu / len(records) * 1e6, 1),
            f"{label}postgres_cpu_us_per_record": round(server / len(records) * 1e6, 1),
        }
    return row


def prepare_queries(ids: dict[str, int], end) -> None:
    """A week of WEEK_SLUG at 1 Hz (rolled up), and a day of rollups of the fleet."""
    from datetime import timedelta

    from django.db import connection

    from gateway.history import partitions, rollups

    week_start = end - timedelta(days=7)
    partitions.ensure_partitions(partitions.SAMPLES, week_start, end)
    partitions.ensure_partitions(partitions.ROLLUPS, week_start, end)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO gateway_telemetrysample (charge_point_id, ts, seq, status, power_w, current_l1_a, "
            "energy_total_wh) SELECT %s, t, n, CASE WHEN n %% 7200 < 5400 THEN 'charging' ELSE 'available' END, "
            "CASE WHEN n %% 7200 < 5400 THEN 7000 + 500 * sin(n / 600.0) ELSE 0 END, 16, 1e6 + n "
            "FROM generate_series(0, 604799) AS n, LATERAL (SELECT %s::timestamptz + n * interval '1 second') AS g(t)",
            [ids[WEEK_SLUG], week_start],
        )
    rollups.roll_up(since=week_start, now=end)
    day_start = end - timedelta(days=1)
    fleet_ids = [ids[slug_of(n)] for n in range(FLEET)]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO gateway_telemetryrollup (charge_point_id, minute, samples, last_status, power_w_min, "
            "power_w_avg, power_w_max) SELECT cp, m, 60, 'charging', 6000, 7000 + cp %% 100, 7400 "
            "FROM unnest(%s::bigint[]) AS cp, generate_series(date_trunc('minute', %s::timestamptz), "
            "date_trunc('minute', %s::timestamptz) - interval '1 minute' * 15, interval '1 minute') AS m "
            "ON CONFLICT DO NOTHING",
            [fleet_ids, day_start, end],
        )
        cursor.execute("ANALYZE gateway_telemetrysample")
        cursor.execute("ANALYZE gateway_telemetryrollup")


def timed(call, repeats: int = 5) -> tuple[float, dict]:
    times, result = [], {}
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1), result


def measure_queries(end) -> list[dict]:
    from datetime import timedelta

    from gateway.history.query import charge_point_series, fleet_power_series

    rows = []
    for label, span in (
        ("1 charge point, day (1 Hz)", timedelta(days=1)),
        ("1 charge point, week (1 Hz)", timedelta(days=7)),
    ):
        ms, result = timed(lambda span=span: charge_point_series(WEEK_SLUG, end - span, end))
        rows.append(
            {
                "query": label,
                "ms": ms,
                "points": result["points"],
                "bucket_s": result["bucket_s"],
                "source": result["source"],
            }
        )
    ms, result = timed(lambda: fleet_power_series(end - timedelta(days=1), end, bucket_s=60))
    rows.append(
        {
            "query": f"fleet of {FLEET}, day (60 s buckets)",
            "ms": ms,
            "points": len(result["t"]),
            "bucket_s": 60,
            "source": "rollup + raw",
        }
    )
    ms, result = timed(lambda: fleet_power_series(end - timedelta(seconds=600), end, bucket_s=5))
    rows.append(
        {
            "query": f"fleet of {FLEET}, 600 s (5 s buckets)",
            "ms": ms,
            "points": len(result["t"]),
            "bucket_s": 5,
            "source": "raw",
        }
    )
    return rows


def run(quick: bool) -> list[dict]:
    from datetime import UTC, datetime

    setup_django()
    ids = prepare_fleet()
    end = datetime.now(UTC).replace(microsecond=0)
    records = records_for(200 if quick else 1200, end)  # 100,000 or 600,000 records
    storage = measure_storage(records)
    prepare_queries(ids, end)
    what = f"{storage['records']:,} records of {FLEET} charge points, batches of {BATCH}"
    rows = [
        {"measure": "storage rate, records/s", "value": storage["records_per_s"], "detail": what},
        {"measure": "consumer CPU, µs per record", "value": storage["consumer_cpu_us_per_record"], "detail": what},
        {"measure": "PostgreSQL CPU, µs per record", "value": storage["postgres_cpu_us_per_record"], "detail": what},
        {
            "measure": "redelivered, records/s",
            "value": storage["redelivered_records_per_s"],
            "detail": f"the same batches again: {storage['redelivered_stored']} new rows",
        },
    ]
    for query in measure_queries(end):
        detail = f"{query['points']} points, {query['source']}" + (
            f", {query['bucket_s']} s buckets" if query["bucket_s"] else ""
        )
        rows.append({"measure": f"query ms: {query['query']}", "value": query["ms"], "detail": detail})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--quick", action="store_true", default=common.quick_default())
    args = parser.parse_args()
    common.print_rows(TITLE, run(args.quick))


if __name__ == "__main__":
    main()
