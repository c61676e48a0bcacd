"""Logging out ends the session's live sockets too, not only its HTTP pages."""

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from gateway.live.push import close_session_sockets

logger = logging.getLogger(__name__)


@receiver(user_logged_out, dispatch_uid="gateway.live.close_sockets_on_logout")
def close_sockets_on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Runs before Django flushes the session, so the key is still the one the sockets joined with."""
    session = getattr(request, "session", None)
    session_key = getattr(session, "session_key", None)
    if not session_key:
        return
    try:
        async_to_sync(close_session_sockets)(session_key)
    except Exception:
        # The logout itself must still succeed; open sockets then last until they next drop, and
        # their reconnect is refused (the session is gone).
        logger.exception("could not close the live sockets of a logged-out session")
