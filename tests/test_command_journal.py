"""The command journal: a claim once per id, on disk across reopens, results kept, one process at a time."""

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings

from gateway.choices import FailureReason
from gateway.commands.journal import CommandJournal, journal_path
from gateway.commands.messages import CommandMessage, CommandResult
from gateway.publish.outbox import OutboxLocked


def command(**changes: object) -> CommandMessage:
    now = datetime.now(UTC)
    fields = {
        "id": str(uuid.uuid4()),
        "charge_point": "cp-1",
        "site": "depot",
        "action": "set_current_limit",
        "value": 10.0,
        "user": "operator",
        "created_at": now,
        "expires_at": now + timedelta(seconds=30),
    } | changes
    return CommandMessage(**fields)


def run_python(script: str, path: Path) -> subprocess.CompletedProcess:
    """Run a script in a process of its own (Django set up), with the journal's path as argument."""
    prologue = "import django\ndjango.setup()\n"
    return subprocess.run(
        [sys.executable, "-c", prologue + script, str(path)],
        cwd=settings.BASE_DIR,
        env=os.environ | {"DJANGO_SETTINGS_MODULE": "evdash.settings"},
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "commands-p1.sqlite3"


def test_the_path_is_in_the_outbox_directory(outbox_dir: str) -> None:
    assert journal_path("p1") == Path(outbox_dir) / "commands-p1.sqlite3"


def test_an_id_is_claimed_once(path: Path) -> None:
    journal = CommandJournal(path)
    first, second = command(), command()
    assert journal.claim(first)
    assert not journal.claim(first)
    assert not journal.claim(command(id=first.id, value=16.0))  # the id decides, not the content
    assert journal.claim(second)
    assert journal.is_claimed(first.id) and journal.is_claimed(second.id)
    assert not journal.is_claimed("never-seen")
    journal.close()


def test_a_claim_survives_a_reopen(path: Path) -> None:
    journal = CommandJournal(path)
    claimed = command()
    assert journal.claim(claimed)
    journal.close()
    reopened = CommandJournal(path)
    assert reopened.is_claimed(claimed.id)
    assert reopened.result_of(claimed.id) is None
    assert not reopened.claim(claimed)
    reopened.close()


def test_a_claim_is_on_disk_when_the_process_is_killed(path: Path) -> None:
    """kill -9 right after claim() returned: the claim is there for the next process."""
    command_id = str(uuid.uuid4())
    script = (
        "import os, signal, sys, uuid\n"
        "from datetime import UTC, datetime, timedelta\n"
        "from gateway.commands.journal import CommandJournal\n"
        "from gateway.commands.messages import CommandMessage\n"
        "now = datetime.now(UTC)\n"
        f"cmd = CommandMessage({command_id!r}, 'cp-1', 'depot', 'pause', None, 'op', now, now + timedelta(0, 30))\n"
        "assert CommandJournal(sys.argv[1]).claim(cmd)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = run_python(script, path)
    assert done.returncode == -9, done.stderr.decode()
    journal = CommandJournal(path)
    assert journal.is_claimed(command_id)
    journal.close()


def test_finish_keeps_the_first_result(path: Path) -> None:
    journal = CommandJournal(path)
    claimed = command()
    journal.claim(claimed)
    applied = CommandResult.applied(claimed, 10.0, poller="p1")
    assert journal.finish(applied)
    assert not journal.finish(CommandResult.failed(claimed, FailureReason.INTERRUPTED, "late", poller="p1"))
    journal.close()
    reopened = CommandJournal(path)
    assert reopened.result_of(claimed.id).to_json() == applied.to_json()
    reopened.close()


def test_a_result_without_a_claim_blocks_a_later_claim(path: Path) -> None:
    """A command refused before its write (offline, say) must not be written when it comes again."""
    journal = CommandJournal(path)
    refused = command()
    assert journal.finish(CommandResult.failed(refused, FailureReason.OFFLINE, "no answer", poller="p1"))
    assert not journal.is_claimed(refused.id)
    assert journal.result_of(refused.id).reason_code == FailureReason.OFFLINE
    assert not journal.claim(refused)
    journal.close()


def test_a_second_opener_is_refused_until_the_first_closes(path: Path) -> None:
    journal = CommandJournal(path)
    script = "import sys\nfrom gateway.commands.journal import CommandJournal\nCommandJournal(sys.argv[1])\n"
    other = run_python(script, path)
    assert other.returncode == 1
    assert b"command journal" in other.stderr and b"in use by another process" in other.stderr
    journal.close()
    reopened = CommandJournal(path)  # the lock went with the close
    reopened.close()


def test_a_second_opener_in_the_same_process_is_refused(path: Path) -> None:
    journal = CommandJournal(path)
    with pytest.raises(OutboxLocked, match="command journal"):
        CommandJournal(path)
    journal.close()


def test_entries_older_than_a_day_are_pruned_at_opening_and_now_and_then(path: Path) -> None:
    now = [1_000_000.0]
    journal = CommandJournal(path, clock=lambda: now[0])
    old, recent = command(), command()
    journal.claim(old)
    journal.finish(CommandResult.applied(old, 10.0, poller="p1"))
    now[0] += 23 * 3600
    journal.claim(recent)
    now[0] += 2 * 3600  # old is 25 h old, recent 2 h; an hour passed since the last prune
    journal.claim(command())  # prunes on the way
    assert not journal.is_claimed(old.id) and journal.result_of(old.id) is None
    assert journal.is_claimed(recent.id)
    journal.close()
    now[0] += 23 * 3600  # recent is 25 h old
    reopened = CommandJournal(path, clock=lambda: now[0])
    assert not reopened.is_claimed(recent.id)
    reopened.close()
