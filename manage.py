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

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # Settings that Django or a library finds wrong (evdash's own checks exit by themselves):
        # the operator fixes a variable, a traceback would only hide the message.
        sys.exit(f"evdash: configuration error: {exc}")


if __name__ == "__main__":
    main()
