"""One long-lived Kafka producer per web process, for the sync views' sends (commands, acknowledgements).

An AIOKafkaProducer belongs to the event loop it was started on, and the web process has no loop
that lives long enough (async_to_sync makes one per call under WSGI and in tests). So the producer
lives on a loop of its own, run by a daemon thread that starts on the first send; any request
thread hands it a send (asyncio.run_coroutine_threadsafe) and waits for the broker's answer.

Before this, each command started a producer of its own: a TCP connection, a metadata request and
a producer start per click (bench/web_producer.py measures both).

- Failures: a send that fails or is not confirmed within its timeout raises what the callers
  already handle (KafkaError, OSError, TimeoutError), and the producer is replaced: the next send
  starts a new one, so a broker that comes back is used again without a restart of the process.
- Order: never two producers at once. The replaced one still holds what timed out and delivers
  it if the broker comes back within its request timeout (the command service says "it may still
  arrive late"); a new producer starts only once it has stopped, so a later command to the same
  charger never overtakes an earlier one. Meanwhile sends time out, as they would anyway.
- Settings: the producer is keyed by the KAFKA_* settings it was made from; when they change
  (tests switch brokers, an operator edits the environment of a reloaded process) the next send
  connects with the new ones.
- Exit: atexit stops the producer and the thread within CLOSE_TIMEOUT_S, whatever the broker does.
"""

import asyncio
import atexit
import concurrent.futures
import logging
import threading
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from django.conf import settings

from gateway.kafka.config import producer_options

logger = logging.getLogger(__name__)

# A send waits this much longer than its own timeout for the producer's thread to answer, in case
# that thread is busy: the send's own timeout normally ends it first.
ANSWER_GRACE_S = 1.0
# A replaced producer flushes what it still holds (a send that timed out may arrive late, as the
# command service says) for up to this long: a little over its request_timeout_ms, after which
# aiokafka fails the batches itself.
STOP_TIMEOUT_S = 20.0
# At process exit, what is left is given this long: a web process must not hang on a dead broker.
CLOSE_TIMEOUT_S = 3.0

SettingsKey = tuple[tuple[str, Any], ...]


def send(topic: str, value: bytes, *, key: bytes | None, timeout_s: float) -> RecordMetadata:
    """Publish one message with the process's shared producer and wait for the broker's acknowledgement.

    Raises KafkaError or OSError when the broker refuses or cannot be reached, TimeoutError when it
    does not confirm within timeout_s (the message may then still arrive later).
    """
    return _shared.send(topic, value, key=key, timeout_s=timeout_s)


def close(timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Stop the shared producer and its thread (at exit; a later send starts them again)."""
    _shared.close(timeout_s)


class WebProducer:
    """A producer on an event loop of its own, for callers on any thread (the process has one: `_shared`).

    The attributes under "On the loop's thread only" are touched from that thread alone (no lock
    needed: coroutines on one loop interleave only at awaits); `_lock` guards the start and the stop
    of the thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._exit_hook = False
        # On the loop's thread only:
        self._producer: AIOKafkaProducer | None = None
        self._producer_key: SettingsKey | None = None
        self._connecting = asyncio.Lock()  # one start at a time; concurrent first sends share it
        self._stopping: set[asyncio.Task] = set()  # replaced producers, still flushing

    def send(self, topic: str, value: bytes, *, key: bytes | None, timeout_s: float) -> RecordMetadata:
        """See the module's send()."""
        loop = self._running_loop()
        answer = asyncio.run_coroutine_threadsafe(self._send(_settings_key(), topic, value, key, timeout_s), loop)
        try:
            return answer.result(timeout_s + ANSWER_GRACE_S)
        except TimeoutError:
            if answer.done():  # the send's own timeout: the broker did not confirm
                raise
            answer.cancel()  # the producer's thread did not answer at all
            raise TimeoutError(f"the Kafka producer thread did not answer within {timeout_s:g} s") from None
        except concurrent.futures.CancelledError:  # close() (process exit) while the send waited
            raise TimeoutError("the Kafka producer stopped before the broker confirmed") from None

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the producer (flushing for up to timeout_s), then the loop and its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            if loop is None or thread is None or not thread.is_alive():
                return
            stopped = asyncio.run_coroutine_threadsafe(self._shutdown(timeout_s), loop)
            try:
                stopped.result(timeout_s + ANSWER_GRACE_S)
            except TimeoutError:
                logger.warning("the web process's Kafka producer did not stop within %g s", timeout_s)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(ANSWER_GRACE_S)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The producer's loop, its thread started on first use."""
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                self._producer, self._producer_key, self._stopping = None, None, set()
                self._connecting = asyncio.Lock()
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=_run_forever, args=(self._loop,), name="kafka-web-producer", daemon=True
                )
                self._thread.start()
                if not self._exit_hook:
                    atexit.register(self.close)
                    self._exit_hook = True
            return self._loop

    async def _send(
        self, settings_key: SettingsKey, topic: str, value: bytes, key: bytes | None, timeout_s: float
    ) -> RecordMetadata:
        async with asyncio.timeout(timeout_s):
            producer = await self._connected(settings_key)
            try:
                return await producer.send_and_wait(topic, value, key=key)
            except (KafkaError, OSError, asyncio.CancelledError) as exc:
                # Cancelled: the timeout (the broker did not confirm). aiokafka's producer may not
                # recover from a broken connection (its sender routine can die for good, see
                # KafkaTransport._discard): a new one costs one connection, once per failure.
                logger.debug("Kafka send failed (%s): the next send starts a new producer", type(exc).__name__)
                self._replace(producer)
                raise

    async def _connected(self, settings_key: SettingsKey) -> AIOKafkaProducer:
        """The started producer for these settings: the current one, or a new one if they changed."""
        async with self._connecting:
            if self._producer is not None and self._producer_key == settings_key:
                return self._producer
            if self._producer is not None:
                logger.info("Kafka settings changed: the web process's producer reconnects")
                self._replace(self._producer)
            if self._stopping:  # never two at once (see the module's docstring); the send's timeout bounds this
                await asyncio.wait(set(self._stopping))
            # No linger: a web process sends one command (or acknowledgement) at a time and a user
            # waits for it; the 5 ms the pollers spend batching records would only be added latency.
            options = producer_options() | {"linger_ms": 0}
            producer = AIOKafkaProducer(**options)
            try:
                await producer.start()
            except BaseException:  # refused, unreachable or cancelled by the send's timeout
                self._replace(producer)
                raise
            self._producer, self._producer_key = producer, settings_key
            logger.info("web process connected to Kafka at %s", options["bootstrap_servers"])
            return producer

    def _replace(self, producer: AIOKafkaProducer) -> None:
        """Forget the producer (the next send starts another) and stop it in the background."""
        if self._producer is producer:
            self._producer, self._producer_key = None, None
        task = asyncio.get_running_loop().create_task(_stop(producer, STOP_TIMEOUT_S))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _shutdown(self, timeout_s: float) -> None:
        """Stop the current producer and wait for the replaced ones, within timeout_s; cancel what is left."""
        if self._producer is not None:
            self._replace(self._producer)
        if self._stopping:
            await asyncio.wait(self._stopping, timeout=timeout_s)
        # What did not stop in time (the producers' own tasks included) is cancelled, so that
        # closing the loop leaves no pending task behind.
        leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=ANSWER_GRACE_S)


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _stop(producer: AIOKafkaProducer, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await producer.stop()
    except (KafkaError, OSError, TimeoutError) as exc:
        logger.debug("stopping a replaced Kafka producer: %s", type(exc).__name__)


def _settings_key() -> SettingsKey:
    """What the producer's options are made of: the KAFKA_* settings (gateway.kafka.config reads no others).

    Not producer_options() itself: it builds a new SSL context each time (~45 ms with the system's
    CAs), which would cost more than the connection this module saves. Holds the SASL password:
    compared, never logged.
    """
    return tuple(sorted((name, value) for name, value in settings.EVDASH.items() if name.startswith("KAFKA_")))


_shared = WebProducer()
