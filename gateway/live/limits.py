"""How many live sockets each user holds open in this process, against a documented cap.

The count is per process: with several web processes behind the Redis channel layer, a user can
hold up to the cap in each of them (README, "Configuration"). It needs no shared state that a
crashed process could leave behind.
"""

from collections import Counter

from django.conf import settings

# The documented default of settings.EVDASH["WEBSOCKETS_PER_USER"] ($EVDASH_WEBSOCKETS_PER_USER): a
# few tabs per operator and a wall screen fit; a script opening sockets in a loop does not.
DEFAULT_SOCKETS_PER_USER = 20


def sockets_per_user_max() -> int:
    """How many live sockets one user may hold open in this process."""
    return int(settings.EVDASH.get("WEBSOCKETS_PER_USER", DEFAULT_SOCKETS_PER_USER))


class OpenSockets:
    """Open sockets per user id; the event loop is single-threaded, so check-and-count is atomic."""

    def __init__(self) -> None:
        self._counts: Counter[int] = Counter()

    def try_open(self, user_id: int, limit: int) -> bool:
        """Count one more socket for the user, unless that would exceed `limit`."""
        if self._counts[user_id] >= limit:
            return False
        self._counts[user_id] += 1
        return True

    def release(self, user_id: int) -> None:
        """One of the user's sockets closed."""
        self._counts[user_id] -= 1
        if self._counts[user_id] <= 0:
            del self._counts[user_id]

    def count(self, user_id: int) -> int:
        return self._counts[user_id]


open_sockets = OpenSockets()
