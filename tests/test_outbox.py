"""The durable outbox on a real SQLite file: order, restarts, limits, the lock, kill -9."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.publish.outbox import MEMORY_TAIL_MAX_BYTES, Outbox, OutboxLocked, id_ranges, outbox_path


class Clock:
    """A wall clock the test moves by hand (the age limit counts in days)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def messages(first: int, last: int, key: bytes = b"cp-a") -> list[tuple[str, bytes, bytes]]:
    return [("t", key, f"v{n:04d}".encode()) for n in range(first, last + 1)]


def values(outbox: Outbox, limit: int = 10_000) -> list[bytes]:
    return [entry.value for entry in outbox.oldest(limit)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "box" / "poller-test.sqlite3"


def test_appends_in_order_and_removes_what_was_delivered(path: Path) -> None:
    outbox = Outbox(path)
    try:
        first = outbox.append(messages(1, 3))
        second = outbox.append(messages(4, 6, key=b"cp-b"))
        assert first == [1, 2, 3] and second == [4, 5, 6]
        assert [(e.id, e.key, e.value) for e in outbox.oldest(4)] == [
            (1, b"cp-a", b"v0001"),
            (2, b"cp-a", b"v0002"),
            (3, b"cp-a", b"v0003"),
            (4, b"cp-b", b"v0004"),
        ]
        assert (outbox.count, outbox.size_bytes) == (6, 6 * (4 + 5))
        outbox.remove([1, 2, 4])  # a partial delivery: a prefix of each key's entries
        assert values(outbox) == [b"v0003", b"v0005", b"v0006"]
        assert (outbox.count, outbox.size_bytes) == (3, 3 * 9)
        outbox.remove([3, 5, 6, 99])  # an unknown id (dropped meanwhile) is ignored
        assert (outbox.oldest(10), outbox.count, outbox.size_bytes) == ([], 0, 0)
    finally:
        outbox.close()


def test_a_reopened_outbox_still_holds_its_messages_and_continues_the_ids(path: Path) -> None:
    outbox = Outbox(path)
    outbox.append(messages(1, 5))
    outbox.remove([1, 2])
    outbox.close()

    reopened = Outbox(path)
    try:
        assert values(reopened) == [b"v0003", b"v0004", b"v0005"]
        assert (reopened.count, reopened.size_bytes) == (3, 27)
        assert reopened.append(messages(6, 6)) == [6]
        # Read from disk (before the restart) and memory (after it), in one order.
        assert [e.id for e in reopened.oldest(2)] == [3, 4]
        assert [e.id for e in reopened.oldest(10)] == [3, 4, 5, 6]
        reopened.remove([3, 4, 5])
        assert (values(reopened), reopened.count, reopened.size_bytes) == ([b"v0006"], 1, 9)
    finally:
        reopened.close()


def test_an_outage_larger_than_the_memory_copy_is_read_back_from_disk_in_order(path: Path, monkeypatch) -> None:
    monkeypatch.setattr("gateway.publish.outbox.MEMORY_TAIL_MAX_BYTES", 5 * 9)
    outbox = Outbox(path)
    try:
        for first in range(1, 20, 3):
            outbox.append(messages(first, first + 2))
        assert outbox.count == 21 and len(outbox._memory) <= 5
        delivered = []
        while entries := outbox.oldest(4):
            delivered += [e.value for e in entries]
            outbox.remove([e.id for e in entries])
        assert delivered == [f"v{n:04d}".encode() for n in range(1, 22)]
        assert (outbox.count, outbox.size_bytes) == (0, 0)
    finally:
        outbox.close()
    assert MEMORY_TAIL_MAX_BYTES >= 1024 * 1024  # the real copy holds a busy poller's outage minutes


def test_id_ranges() -> None:
    assert id_ranges([]) == []
    assert id_ranges([5, 3, 4]) == [(3, 5)]
    assert id_ranges([1, 2, 4, 7, 8, 9]) == [(1, 2), (4, 4), (7, 9)]


def test_the_size_limit_drops_the_oldest_counts_them_and_warns_once_per_episode(path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="gateway.publish.outbox")
    outbox = Outbox(path, max_bytes=10 * 9, max_age_s=3600, clock=Clock())
    try:
        outbox.append(messages(1, 10))
        assert outbox.dropped == 0
        for n in range(11, 31):  # 20 more, one per round: each drops the oldest
            outbox.append(messages(n, n))
        assert outbox.dropped == 20 and outbox.count == 10 and outbox.size_bytes == 90
        assert values(outbox) == [f"v{n:04d}".encode() for n in range(21, 31)]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith(f"outbox {path} full (") and warnings[0].endswith("; 1 dropped")

        # Delivery drains it: the episode ends (once the age check runs again, a second later).
        outbox.remove([e.id for e in outbox.oldest(8)])
        outbox.clock.now += 2
        outbox.append(messages(31, 31))
        ended = [r.getMessage() for r in caplog.records if "no longer full" in r.getMessage()]
        assert ended == [f"outbox {path} no longer full: 20 records dropped in that episode"]
        # A second episode warns again.
        outbox.append(messages(32, 40))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2 and outbox.dropped == 22
    finally:
        outbox.close()


def test_the_age_limit_drops_what_is_older_once_a_second_at_most(path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.publish.outbox")
    clock = Clock()
    outbox = Outbox(path, max_bytes=10**9, max_age_s=100, clock=clock)
    try:
        outbox.append(messages(1, 3))
        clock.now += 60
        outbox.append(messages(4, 6))
        assert outbox.oldest_age_s() == 60
        clock.now += 50  # 1-3 are 110 s old, 4-6 50 s
        outbox.append(messages(7, 7))
        assert values(outbox) == [b"v0004", b"v0005", b"v0006", b"v0007"]
        assert outbox.dropped == 3 and outbox.count == 4
        clock.now += 55  # 4-6 are 105 s old
        outbox.append(messages(8, 8))
        assert values(outbox) == [b"v0007", b"v0008"] and outbox.dropped == 6
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "older than the 100 s limit" in warnings[0], warnings
    finally:
        outbox.close()


def test_an_outbox_held_by_another_process_is_refused_with_its_pid(path: Path) -> None:
    outbox = Outbox(path)
    try:
        with pytest.raises(OutboxLocked, match=rf"outbox {path} is in use by another process \(pid {os.getpid()}\)"):
            Outbox(path)  # a second opener in this process is refused just the same
    finally:
        outbox.close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(path) + '.lock'!r}, os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.ftruncate(fd, 0); os.pwrite(fd, b'%d' % os.getpid(), 0)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(OutboxLocked, match=rf"\(pid {holder.pid}\)"):
            Outbox(path)
    finally:
        holder.kill()
        holder.wait()
    Outbox(path).close()  # its death released the lock


def test_what_a_process_appended_survives_its_kill_9(path: Path) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, sys, django
                os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evdash.settings")
                django.setup()
                from pathlib import Path
                from gateway.publish.outbox import Outbox
                outbox = Outbox(Path({str(path)!r}))
                for first in range(1, 1000, 100):
                    outbox.append([("t", b"cp-a", b"v%04d" % n) for n in range(first, first + 100)])
                print("appended", flush=True)
                sys.stdin.read()  # hold the lock until killed
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert child.stdout.readline() == b"appended\n"
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
    outbox = Outbox(path)  # the lock died with the process
    try:
        assert values(outbox) == [b"v%04d" % n for n in range(1, 1001)]
        assert outbox.append(messages(1, 1)) == [1001]
    finally:
        outbox.close()


def test_outbox_path_is_in_the_outbox_dir(settings, tmp_path: Path) -> None:
    settings.EVDASH = settings.EVDASH | {"OUTBOX_DIR": str(tmp_path)}
    assert outbox_path("poller-a") == tmp_path / "poller-a.sqlite3"
