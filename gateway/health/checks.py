"""Readiness checks: is a dependency reachable right now, within a deadline?

The web process's /readyz runs check_database, check_channel_layer and check_kafka side by side;
the workers (gateway/health/workers.py) reuse the database probe from their metrics server's
thread. Every check answers within CHECK_TIMEOUT_S: a load balancer's probe must not hang on a
dependency that hangs.

What a check reports to the caller is short and fixed ("unreachable: OperationalError"), because
/readyz needs no login: host names, user names and driver messages go to the log instead, once
per change of state (a probe every few seconds would otherwise repeat them all day).
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka.client import AIOKafkaClient
from channels.layers import get_channel_layer
from django.db import DEFAULT_DB_ALIAS, connections

from gateway.conf import setting
from gateway.kafka.config import client_options

logger = logging.getLogger(__name__)

# Each check's deadline: a load balancer's probe timeout is typically 5 s, and the checks run side by side.
CHECK_TIMEOUT_S = 2.0
# How long a Kafka answer is reused: a bootstrap costs the broker a connection and a metadata request,
# and several load balancers probing every second should not multiply that.
KAFKA_CACHE_S = 3.0


@dataclass(frozen=True)
class CheckResult:
    """One dependency as a readiness probe saw it."""

    name: str  # "database", "channel_layer", "kafka", "mqtt", ...
    ok: bool
    detail: str = ""  # why not, or what was seen
    duration_ms: float = 0.0


def failure(exc: BaseException) -> str:
    """The detail of a failed check: the kind of failure, never its message (which may name hosts and users)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {CHECK_TIMEOUT_S:g} s"
    return f"unreachable: {type(exc).__name__}"


class Transitions:
    """Logs a check's failure when it starts and its recovery when it ends, not every probe in between."""

    def __init__(self) -> None:
        self._failing: set[str] = set()
        self._lock = threading.Lock()  # the workers' probes run on the metrics server's threads

    def note(self, result: CheckResult, exc: BaseException | None = None) -> None:
        with self._lock:
            was_failing = result.name in self._failing
            if result.ok:
                self._failing.discard(result.name)
            else:
                self._failing.add(result.name)
        if result.ok and was_failing:
            logger.info("readiness: %s is back (%.0f ms)", result.name, result.duration_ms)
        elif not result.ok and not was_failing:
            logger.warning("readiness: %s failed: %s (%r)", result.name, result.detail, exc)


transitions = Transitions()


class BlockingProbe:
    """A blocking check run on a daemon thread of its own, waited for at most timeout_s.

    A connect to a database host that went silent can block for minutes (the kernel's TCP
    timeout): the caller gets its answer at the deadline, and while that thread is still stuck no
    second one is started, so repeated probes cannot pile up threads.
    """

    def __init__(self, name: str, check: Callable[[], None], timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self.name = name
        self.check = check
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None
        self._started_at = 0.0

    def run(self) -> CheckResult:
        """Blocks the calling thread for at most timeout_s."""
        started = time.monotonic()
        with self._lock:
            if self._running is not None and self._running.is_alive():
                result = CheckResult(
                    self.name, False, f"the previous check has not returned for {started - self._started_at:.0f} s"
                )
                transitions.note(result)
                return result
            outcome: list[BaseException | None] = []
            thread = threading.Thread(target=self._attempt, args=(outcome,), name=f"probe-{self.name}", daemon=True)
            self._running, self._started_at = thread, started
            thread.start()
        thread.join(self.timeout_s)
        duration_ms = (time.monotonic() - started) * 1000
        if not outcome:
            exc: BaseException | None = TimeoutError()
        else:
            exc = outcome[0]
        result = CheckResult(self.name, exc is None, "reachable" if exc is None else failure(exc), duration_ms)
        transitions.note(result, exc)
        return result

    def _attempt(self, outcome: list[BaseException | None]) -> None:
        try:
            self.check()
        except Exception as exc:
            outcome.append(exc)
        else:
            outcome.append(None)


def ping_database(alias: str = DEFAULT_DB_ALIAS) -> None:
    """One round trip to the database, on a connection of this thread that is closed afterwards.

    A fresh connection each time: a connection kept from an earlier probe could be one the server
    has since dropped, and the probe's thread ends right after (nothing would close it later).
    """
    connection = connections[alias]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


database_probe = BlockingProbe("database", ping_database)


async def check_database() -> CheckResult:
    """The database answers a query (on a thread of its own; at most CHECK_TIMEOUT_S)."""
    return await asyncio.to_thread(database_probe.run)


async def check_channel_layer() -> CheckResult:
    """A message makes the round trip through the channel layer (Redis in production)."""
    started = time.monotonic()
    layer = get_channel_layer()
    if layer is None:
        result = CheckResult("channel_layer", False, "no channel layer configured")
        transitions.note(result)
        return result
    exc: BaseException | None = None
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            channel = await layer.new_channel("health")
            await layer.send(channel, {"type": "health.ping"})
            await layer.receive(channel)
    except Exception as error:  # any failure of the layer is "not ready", said in the detail
        exc = error
    result = CheckResult(
        "channel_layer",
        exc is None,
        type(layer).__name__ if exc is None else failure(exc),
        (time.monotonic() - started) * 1000,
    )
    transitions.note(result, exc)
    return result


class KafkaCheck:
    """A bootstrap (connect, API versions, metadata) against the configured brokers, answers cached briefly."""

    def __init__(self, cache_s: float = KAFKA_CACHE_S) -> None:
        self.cache_s = cache_s
        self._cached: tuple[str, float, CheckResult] | None = None  # (brokers, monotonic, result)

    async def __call__(self) -> CheckResult:
        brokers = str(setting("KAFKA_BOOTSTRAP_SERVERS"))
        now = time.monotonic()
        if self._cached is not None:
            cached_brokers, at, result = self._cached
            if cached_brokers == brokers and now - at < self.cache_s:
                return result
        exc: BaseException | None = None
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._bootstrap()
        except Exception as error:  # a Kafka error, a refused connection, a timeout, a TLS failure: not ready
            exc = error
        result = CheckResult(
            "kafka", exc is None, "reachable" if exc is None else failure(exc), (time.monotonic() - now) * 1000
        )
        transitions.note(result, exc)
        self._cached = (brokers, time.monotonic(), result)
        return result

    @staticmethod
    async def _bootstrap() -> None:
        client = AIOKafkaClient(**client_options(), request_timeout_ms=int(CHECK_TIMEOUT_S * 1000))
        try:
            await client.bootstrap()
        finally:
            await client.close()

    def forget(self) -> None:
        """Drop the cached answer (tests that change the brokers' state)."""
        self._cached = None


check_kafka = KafkaCheck()


async def web_readiness() -> list[CheckResult]:
    """The web process's dependencies, checked side by side: what /readyz reports."""
    return list(await asyncio.gather(check_database(), check_channel_layer(), check_kafka()))
