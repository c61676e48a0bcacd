"""The last warning or error of this process, for its row on the pipeline-health page.

A logging handler on the "gateway" logger keeps the newest WARNING-or-worse message of the
product's own loggers: the message only (no traceback, no arguments' reprs beyond what the message
formats), shortened, with any URL's user:password@ removed. The code already keeps secrets out of
its log lines (the MQTT URL is logged without its password); this is the second belt.
"""

import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

MESSAGE_MAX_CHARS = 500
LOGGER = "gateway"
# scheme://user:password@host -> scheme://user:***@host (and a bare scheme://secret@host too).
_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^\s/@:]*)(?::[^\s/@]*)?@", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class LastError:
    message: str
    level: str  # "WARNING", "ERROR", "CRITICAL"
    logger: str
    at: datetime


def scrub(message: str) -> str:
    """The message without URL credentials, at most MESSAGE_MAX_CHARS long."""
    message = _CREDENTIALS.sub(_hide_password, message)
    if len(message) > MESSAGE_MAX_CHARS:
        message = message[: MESSAGE_MAX_CHARS - 3] + "..."
    return message


def _hide_password(match: re.Match) -> str:
    return f"{match['scheme']}{match['user']}:***@" if match["user"] else f"{match['scheme']}***@"


class LastErrorHandler(logging.Handler):
    """Keeps the newest WARNING-or-worse record it sees (`last`) and the newest ERROR-or-worse
    (`last_severe`: a warning after an error must not hide that the stage is failing)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.last: LastError | None = None
        self.last_severe: LastError | None = None
        self._lock_last = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = scrub(record.getMessage())
        except Exception:  # a bad format string: logging reports those itself, we keep nothing
            return
        error = LastError(message, record.levelname, record.name, datetime.fromtimestamp(record.created, UTC))
        with self._lock_last:
            self.last = error
            if record.levelno >= logging.ERROR:
                self.last_severe = error

    def take(self) -> tuple[LastError | None, LastError | None]:
        """(the newest warning or error, the newest error)."""
        with self._lock_last:
            return self.last, self.last_severe


def install(logger_name: str = LOGGER) -> LastErrorHandler:
    """A new handler on the product's logger; remove it with `uninstall` when the process stops."""
    handler = LastErrorHandler()
    logging.getLogger(logger_name).addHandler(handler)
    return handler


def uninstall(handler: LastErrorHandler, logger_name: str = LOGGER) -> None:
    logging.getLogger(logger_name).removeHandler(handler)
