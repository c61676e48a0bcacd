"""Channel-layer group names for the live dashboard."""

import hashlib

FLEET_GROUP = "fleet"


def charge_point_group(slug: str) -> str:
    """Group of one charge point's page (ASCII letters, digits, hyphens, periods, underscores)."""
    return f"cp.{slug}"


def session_group(session_key: str) -> str:
    """Group of every socket opened with one login session (logout closes them).

    Hashed: group names end up as Redis keys, and a session key there would be a usable cookie.
    """
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]
