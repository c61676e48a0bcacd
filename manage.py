#!/usr/bin/env python
"""Django's command-line utility for evdash.

With no environment variables it runs in the embedded mode (README, "Modes"); production is
EVDASH_MODE=production. A configuration error is one line on stderr and exit status 1.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evdash.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line
    from django.db import OperationalError, ProgrammingError

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # Settings that Django or a library finds wrong (evdash's own checks exit by themselves):
        # the operator fixes a variable, a traceback would only hide the message.
        sys.exit(f"evdash: configuration error: {exc}")
    except (OperationalError, ProgrammingError) as exc:
        if not is_missing_table(exc):
            raise
        # A fresh checkout, or a new EVDASH_VAR_DIR: the database exists but was never migrated.
        sys.exit(f"evdash: the database has no evdash tables yet ({exc}): run `make install` or `manage.py migrate`.")


def is_missing_table(exc: Exception) -> bool:
    """True for 'no such table' (SQLite) and 'relation ... does not exist' (PostgreSQL)."""
    message = str(exc)
    return message.startswith("no such table") or ("relation" in message and "does not exist" in message)


if __name__ == "__main__":
    main()
