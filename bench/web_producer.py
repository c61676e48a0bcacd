"""Command publish from the web process: a producer per command (before) vs the process's one producer.

What a page or API request waits for between storing the command row and answering: the publish
of one command to the commands topic, acknowledged (acks=all), on a local Tansu broker.

- per call: what publish_command did before gateway/kafka/web_producer.py, through async_to_sync
  as the sync views called it: a new AIOKafkaProducer started (connection, metadata), one
  send_and_wait, stopped;
- shared: publish_command now, the web process's long-lived producer on its own thread.

Sequential sends (one click at a time) from this process, wall clock around each call, after a
few warm-up sends; the two variants alternate in rounds, so a noisy moment hits both.

    .venv/bin/python bench/web_producer.py [--quick] [--sends N]
"""

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

try:
    from bench import common
except ModuleNotFoundError:  # run as `python bench/web_producer.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import common

TITLE = "Command publish from the web process: producer per command vs one shared producer (ms)"
WARMUP = 5
ROUNDS = 10  # the sends of each variant are split into this many alternating rounds


def _setup_django(var_dir: Path, bootstrap: str) -> None:
    os.environ.update(common.embedded_env(var_dir, KAFKA_BOOTSTRAP_SERVERS=bootstrap, KAFKA_ENABLE_IDEMPOTENCE="0"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evdash.settings")
    import django

    django.setup()


def _message(index: int):
    from gateway.commands.messages import CommandMessage

    now = datetime.now(UTC)
    return CommandMessage(
        id=str(uuid.uuid4()),
        charge_point=f"bench-cp-{index % 16:02d}",
        site="bench-site",
        action="set_current_limit",
        value=10.0 if index % 2 else 16.0,
        user="bench",
        created_at=now,
        expires_at=now + timedelta(seconds=30),
    )


async def _publish_per_call(message) -> None:
    """publish_command as it was: a producer of its own for each command."""
    from aiokafka import AIOKafkaProducer

    from gateway.commands.service import PUBLISH_TIMEOUT_S
    from gateway.kafka.config import producer_options
    from gateway.kafka.topics import commands_topic

    producer = AIOKafkaProducer(**producer_options())
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            await producer.start()
            await producer.send_and_wait(commands_topic(), message.to_json(), key=message.key)
    finally:
        await producer.stop()


def run(quick: bool, sends: int | None = None) -> list[dict]:
    """One row per variant: sends, p50/p99/max ms, and the sends per second that gives one request thread."""
    sends = sends or (100 if quick else 200)
    with common.scratch_var_dir() as var_dir, common.tansu(log_dir=var_dir) as (_broker, bootstrap):
        _setup_django(var_dir, bootstrap)
        from asgiref.sync import async_to_sync

        from gateway.commands.service import publish_command
        from gateway.kafka import web_producer
        from gateway.kafka.topics import commands_topic, ensure_topics

        asyncio.run(ensure_topics([commands_topic()]))
        variants = {"per call (before)": async_to_sync(_publish_per_call), "shared (after)": publish_command}
        timings: dict[str, list[float]] = {name: [] for name in variants}
        try:
            for publish in variants.values():
                for index in range(WARMUP):
                    publish(_message(index))
            per_round = max(1, sends // ROUNDS)
            index = 0
            while any(len(t) < sends for t in timings.values()):
                for name, publish in variants.items():
                    for _ in range(min(per_round, sends - len(timings[name]))):
                        message = _message(index)
                        index += 1
                        started = time.perf_counter()
                        publish(message)
                        timings[name].append((time.perf_counter() - started) * 1000)
        finally:
            web_producer.close()  # before the broker stops
    rows = []
    for name, values in timings.items():
        cuts = common.percentiles(values, (50, 99))
        rows.append(
            common.rounded(
                {
                    "producer": name,
                    "sends": len(values),
                    "p50_ms": cuts["p50"],
                    "p99_ms": cuts["p99"],
                    "max_ms": max(values),
                    "sends_per_s_one_thread": 1000 * len(values) / sum(values),
                },
                2,
            )
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=common.quick_default(), help="100 sends, not 200")
    parser.add_argument("--sends", type=int, default=None, help="sends per variant")
    options = parser.parse_args()
    common.print_rows(TITLE, run(options.quick, options.sends))
