"""The poller's command journal: the commands it claimed (before writing them) and their results.

"At most once" rests on this file. A command id is claimed, durably, before its write goes on the
wire; an id that was ever claimed is never claimed again, so a redelivery (a restart, a replayed
Kafka offset, an MQTT resend) is never written twice. Results are kept too: a redelivered command
that finished gets its stored result published again instead of being executed.

Durability: SQLite WAL with synchronous=FULL: claim() returns only once its commit is fsynced,
so a claim survives kill -9 and a power loss. That costs an fsync (about a millisecond on an SSD)
on the event loop per claim and per result: commands are operator clicks, not telemetry.

One process at a time (an flock, as for the outbox): two pollers sharing a journal could each
claim what the other claimed. Entries older than KEEP_S are pruned: by then every command
expired long ago (COMMAND_EXPIRY_S, 30 s by default), and an expired command is never written.
"""

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from gateway.commands.messages import CommandMessage, CommandResult
from gateway.conf import setting
from gateway.publish.outbox import lock_exclusively

logger = logging.getLogger(__name__)

KEEP_S = 24 * 3600.0  # a day
PRUNE_EVERY_S = 3600.0  # besides at opening

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    seen_s REAL NOT NULL,
    claimed INTEGER NOT NULL,
    result BLOB
) WITHOUT ROWID
"""


def journal_path(poller_id: str) -> Path:
    """Where the journal of poller `poller_id` lives: OUTBOX_DIR / commands-<id>.sqlite3."""
    return Path(setting("OUTBOX_DIR")) / f"commands-{poller_id}.sqlite3"


class CommandJournal:
    """Claims and results of command ids, on disk.

    A row per command id: `claimed` once it was claimed for a write, `result` (the result's JSON)
    once it finished. A result may come without a claim (a command refused before its write:
    expired, out of range, offline...); such an id cannot be claimed afterwards either.
    """

    def __init__(self, path: Path, *, keep_s: float = KEEP_S, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.keep_s = keep_s
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_exclusively(self.path, "command journal")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit (NORMAL would leave the last commits to a
            # checkpoint, and a power loss could forget a claim whose write went out).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(SCHEMA)
            self._pruned_at = float("-inf")
            self.prune()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._closed = False

    def claim(self, command: CommandMessage) -> bool:
        """Note the command as being written, durably; False if its id was ever claimed or finished."""
        self._prune_now_and_then()
        cursor = self._db.execute(
            "INSERT INTO commands (id, seen_s, claimed) VALUES (?, ?, 1) ON CONFLICT (id) DO NOTHING",
            (command.id, self.clock()),
        )
        return cursor.rowcount == 1

    def finish(self, result: CommandResult) -> bool:
        """Store the command's result; False (and nothing stored) if it already has one: the first stays."""
        self._prune_now_and_then()
        cursor = self._db.execute(
            "INSERT INTO commands (id, seen_s, claimed, result) VALUES (?, ?, 0, ?) "
            "ON CONFLICT (id) DO UPDATE SET result = excluded.result WHERE result IS NULL",
            (result.id, self.clock(), result.to_json()),
        )
        return cursor.rowcount == 1

    def result_of(self, command_id: str) -> CommandResult | None:
        """The stored result of a command, None if it has none (yet)."""
        row = self._db.execute("SELECT result FROM commands WHERE id = ?", (command_id,)).fetchone()
        return None if row is None or row[0] is None else CommandResult.from_json(row[0])

    def is_claimed(self, command_id: str) -> bool:
        """Whether the command was claimed for a write (finished or not)."""
        row = self._db.execute("SELECT claimed FROM commands WHERE id = ?", (command_id,)).fetchone()
        return bool(row and row[0])

    def prune(self) -> int:
        """Forget entries older than keep_s; returns how many."""
        now = self.clock()
        self._pruned_at = now
        removed = self._db.execute("DELETE FROM commands WHERE seen_s < ?", (now - self.keep_s,)).rowcount
        if removed:
            logger.info("command journal %s: pruned %d entries older than %.0f s", self.path, removed, self.keep_s)
        return removed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._db.close()
        os.close(self._lock_fd)  # releases the flock

    def _prune_now_and_then(self) -> None:
        if self.clock() - self._pruned_at >= PRUNE_EVERY_S:
            self.prune()
