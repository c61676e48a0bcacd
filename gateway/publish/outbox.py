"""The durable outbox: messages on disk (SQLite, WAL) from the moment they are published until
their transport confirms delivery.

Durability: WAL with synchronous=NORMAL. A committed append survives the process being killed
(kill -9, a crash): the WAL is in the operating system's hands as soon as the commit returns.
A power loss or kernel crash may lose the last commits (up to the last checkpoint's fsync);
synchronous=FULL would close that window at the price of an fsync per round.

Cost: the steady state is one executemany per round of appends and one DELETE per range of
delivered ids, plus a memory copy of the unsent tail so that `oldest` reads from disk only when
it must (after a restart, or when an outage outgrew the memory copy). Count and size are kept up
to date incrementally: nothing scans the table after opening it.

Limits (size and age, from the settings by default): when one is hit the oldest messages are
dropped first and counted, with one warning per episode and an info line when it ends.
"""

import collections
import contextlib
import fcntl
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from gateway.conf import setting
from gateway.publish.base import OutboxEntry

logger = logging.getLogger(__name__)

# The memory copy of the unsent tail holds at most this many bytes (keys + values); an outage that
# buffers more is read back from disk, a round at a time, once the transport is back.
MEMORY_TAIL_MAX_BYTES = 32 * 1024 * 1024
# Drops read the oldest messages' sizes from disk in chunks of this many.
DROP_CHUNK = 1000
# The age limit is checked at most this often (it is counted in days; the check costs a query).
AGE_CHECK_INTERVAL_S = 1.0
# A full episode ends when the outbox is back under this share of its limits: without the margin
# an outbox at its limit would start and end an episode (and warn) on every append.
EPISODE_END_SHARE = 0.9

PAGE_BYTES = 65536
WAL_CHECKPOINT_BYTES = 16 * 1024 * 1024  # the WAL is copied into the database (and fsynced) at this size

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    created_s REAL NOT NULL,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL
)
"""


class OutboxLocked(RuntimeError):
    """Another live process holds this outbox file: two writers would deliver each other's messages twice."""


def outbox_path(name: str) -> Path:
    """Where the outbox called `name` lives: OUTBOX_DIR / f"{name}.sqlite3"."""
    return Path(setting("OUTBOX_DIR")) / f"{name}.sqlite3"


def lock_exclusively(path: Path, what: str) -> int:
    """Take the exclusive flock on `<path>.lock` (the kernel drops it when the process dies, even by
    kill -9); returns its file descriptor, to close when done. OutboxLocked if another process holds it."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OutboxLocked(f"{what} {path} is in use by another process (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def id_ranges(ids: Collection[int]) -> list[tuple[int, int]]:
    """Distinct ids as sorted inclusive (first, last) runs: a DELETE per run, not per id."""
    ordered = sorted(ids)
    if not ordered:
        return []
    if ordered[-1] - ordered[0] + 1 == len(ordered):  # the usual case: one run
        return [(ordered[0], ordered[-1])]
    ranges: list[tuple[int, int]] = []
    first = previous = ordered[0]
    for entry_id in ordered[1:]:
        if entry_id != previous + 1:
            ranges.append((first, previous))
            first = entry_id
        previous = entry_id
    ranges.append((first, previous))
    return ranges


class Outbox:
    """An ordered, durable queue of (topic, key, value) messages with increasing ids.

    One process at a time: the constructor takes an exclusive flock on `<file>.lock` for the
    life of the object (the kernel releases it when the process dies, even by kill -9), and
    raises OutboxLocked if another process holds it.

    Ids increase with every append and continue after a reopen while the file holds messages
    (an emptied outbox may start again from 1: nothing refers to delivered ids).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int | None = None,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = setting("OUTBOX_MAX_BYTES") if max_bytes is None else max_bytes
        self.max_age_s = setting("OUTBOX_MAX_AGE_S") if max_age_s is None else max_age_s
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # Large pages: a round's rows (600 B each) fill a few pages instead of splitting many;
            # measured ~1 us per record less than 4 KiB pages. Applies when the file is created.
            self._db.execute(f"PRAGMA page_size={PAGE_BYTES}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // PAGE_BYTES}")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
            count, size, last_id = self._db.execute(
                "SELECT count(*), total(length(key) + length(value)), max(id) FROM outbox"
            ).fetchone()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._count = count
        self._size = int(size)
        self._next_id = (last_id or 0) + 1
        # The memory copy: every stored message with id >= _memory_from, in id order. Messages
        # below _memory_from ("cold": from before a restart, or pushed out by a long outage) are
        # read from disk; _cold says there may be some.
        self._memory: collections.deque[OutboxEntry] = collections.deque()
        self._memory_bytes = 0
        self._memory_from = self._next_id
        self._cold = count > 0
        self._dropped = 0
        self._dropping = False  # in a "full" episode
        self._episode_dropped = 0
        self._age_checked_at = float("-inf")
        self._closed = False

    def _lock(self) -> int:
        return lock_exclusively(self.path, "outbox")

    @property
    def count(self) -> int:
        """Messages stored and not delivered."""
        return self._count

    @property
    def size_bytes(self) -> int:
        """Keys plus values of the stored messages (what the size limit counts)."""
        return self._size

    @property
    def last_id(self) -> int:
        """The id of the newest message appended (0 if none): delivered up to it, the outbox is flushed."""
        return self._next_id - 1

    @property
    def dropped(self) -> int:
        """Messages dropped by the limits since this outbox was opened."""
        return self._dropped

    def append(self, items: Sequence[tuple[str, bytes, bytes]]) -> list[int]:
        """Store (topic, key, value) messages in one transaction; returns their ids, in order."""
        if not items:
            return []
        now = self.clock()
        first = self._next_id
        ids = list(range(first, first + len(items)))
        entries = [
            OutboxEntry(entry_id, topic, key, value) for entry_id, (topic, key, value) in zip(ids, items, strict=True)
        ]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO outbox (id, created_s, topic, key, value) VALUES (?, ?, ?, ?, ?)",
                [(e.id, now, e.topic, e.key, e.value) for e in entries],
            )
        self._next_id = ids[-1] + 1
        added = sum(len(e.key) + len(e.value) for e in entries)
        self._count += len(entries)
        self._size += added
        self._memory.extend(entries)
        self._memory_bytes += added
        self._trim_memory()
        self._enforce_limits(now)
        return ids

    def oldest(self, limit: int) -> list[OutboxEntry]:
        """Up to `limit` stored messages, oldest first: what to send next."""
        if self._cold:
            rows = self._db.execute(
                "SELECT id, topic, key, value FROM outbox WHERE id < ? ORDER BY id LIMIT ?",
                (self._memory_from, limit),
            ).fetchall()
            if rows:
                cold = [OutboxEntry(*row) for row in rows]
                return cold + list(itertools.islice(self._memory, limit - len(cold)))
            self._cold = False
        return list(itertools.islice(self._memory, limit))

    def remove(self, ids: Collection[int]) -> int:
        """Delete delivered messages; returns how many were still stored (ids already dropped by the
        limits while they were in flight are ignored: they were counted as dropped)."""
        if not ids:
            return 0
        wanted = set(ids)
        removed, freed = self._remove_from_memory(wanted)
        ranges = id_ranges(wanted)
        cold_ranges = [(first, min(last, self._memory_from - 1)) for first, last in ranges if first < self._memory_from]
        with self._transaction():
            for first, last in cold_ranges:  # not in memory: measured on disk (they may have been dropped)
                cold_count, cold_size = self._db.execute(
                    "SELECT count(*), total(length(key) + length(value)) FROM outbox WHERE id BETWEEN ? AND ?",
                    (first, last),
                ).fetchone()
                removed += cold_count
                freed += int(cold_size)
            self._db.executemany("DELETE FROM outbox WHERE id BETWEEN ? AND ?", ranges)
        self._count -= removed
        self._size -= freed
        return removed

    def oldest_age_s(self) -> float | None:
        """Seconds since the oldest stored message was appended; None when empty."""
        created_s = self._oldest_created_s()
        return None if created_s is None else max(0.0, self.clock() - created_s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._db.close()
        os.close(self._lock_fd)  # releases the flock

    # --- internals ---

    @contextlib.contextmanager
    def _transaction(self):
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _remove_from_memory(self, wanted: set[int]) -> tuple[int, int]:
        """Drop the wanted ids from the memory copy; returns (messages, bytes) removed."""
        memory = self._memory
        removed = freed = 0
        # The usual case: the delivered ids are the oldest in memory.
        while memory and memory[0].id in wanted:
            entry = memory.popleft()
            removed += 1
            freed += len(entry.key) + len(entry.value)
        in_memory = sum(1 for entry_id in wanted if entry_id >= self._memory_from)
        if removed < in_memory:  # a partial delivery left holes: filter (rare: a failed send)
            kept: collections.deque[OutboxEntry] = collections.deque()
            for entry in memory:
                if entry.id in wanted:
                    removed += 1
                    freed += len(entry.key) + len(entry.value)
                else:
                    kept.append(entry)
            self._memory = kept
        self._memory_bytes -= freed
        return removed, freed

    def _trim_memory(self) -> None:
        """Keep the memory copy under MEMORY_TAIL_MAX_BYTES: the oldest part stays on disk only."""
        memory = self._memory
        while self._memory_bytes > MEMORY_TAIL_MAX_BYTES and memory:
            entry = memory.popleft()
            self._memory_bytes -= len(entry.key) + len(entry.value)
            self._cold = True
        self._memory_from = memory[0].id if memory else self._next_id

    def _oldest_created_s(self) -> float | None:
        row = self._db.execute("SELECT created_s FROM outbox ORDER BY id LIMIT 1").fetchone()
        return None if row is None else row[0]

    def _enforce_limits(self, now: float) -> None:
        over_size = self._size > self.max_bytes
        check_age = now - self._age_checked_at >= AGE_CHECK_INTERVAL_S
        oldest_created_s = None
        if check_age:
            self._age_checked_at = now
            oldest_created_s = self._oldest_created_s()
        expired = oldest_created_s is not None and now - oldest_created_s > self.max_age_s
        if over_size or expired:
            reason = (
                f"{self._size} bytes over the {self.max_bytes}-byte limit"
                if over_size
                else f"records older than the {self.max_age_s:.0f} s limit"
            )
            self._drop_oldest(now - self.max_age_s if expired else float("-inf"), reason)
        elif self._dropping and check_age:
            age_ok = oldest_created_s is None or now - oldest_created_s < EPISODE_END_SHARE * self.max_age_s
            if self._size < EPISODE_END_SHARE * self.max_bytes and age_ok:
                logger.info(
                    "outbox %s no longer full: %d records dropped in that episode", self.path, self._episode_dropped
                )
                self._dropping = False

    def _drop_oldest(self, created_before_s: float, reason: str) -> None:
        """Delete the oldest messages while over the size limit or created before the cutoff."""
        dropped_now = 0
        while self._count:
            rows = self._db.execute(
                "SELECT id, created_s, length(key) + length(value) FROM outbox ORDER BY id LIMIT ?", (DROP_CHUNK,)
            ).fetchall()
            last_id, count, freed = None, 0, 0
            for entry_id, created_s, size in rows:
                if self._size - freed <= self.max_bytes and created_s >= created_before_s:
                    break
                last_id, count, freed = entry_id, count + 1, freed + size
            if last_id is None:
                break
            with self._transaction():
                self._db.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
            self._count -= count
            self._size -= freed
            dropped_now += count
            memory = self._memory
            while memory and memory[0].id <= last_id:
                entry = memory.popleft()
                self._memory_bytes -= len(entry.key) + len(entry.value)
            self._memory_from = max(self._memory_from, last_id + 1)
            if count < len(rows):
                break
        if not dropped_now:
            return
        self._dropped += dropped_now
        self._episode_dropped = self._episode_dropped + dropped_now if self._dropping else dropped_now
        if not self._dropping:
            self._dropping = True
            logger.warning(
                "outbox %s full (%s): dropping the oldest records; %d dropped", self.path, reason, dropped_now
            )
