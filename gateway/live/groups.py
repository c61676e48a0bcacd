"""Channel-layer group names for the live dashboard.

Channels accepts group names of ASCII letters, digits, hyphens, underscores and periods, shorter
than 100 characters; slugs are letters, digits, hyphens and underscores.
"""

import hashlib

FLEET_GROUP = "fleet"
GROUP_NAME_MAX_CHARS = 99


def site_group(slug: str) -> str:
    """Group of one site's sockets: a fleet page filtered to the site, a charge point page of it."""
    return _bounded(f"site.{slug}")


def site_control_group(slug: str) -> str:
    """Group of one site's load management page sockets (ws/sites/<slug>/): its SiteStatus every period."""
    return _bounded(f"site-control.{slug}")


def session_group(session_key: str) -> str:
    """Group of every socket opened with one login session (logout closes them).

    Hashed: group names end up as Redis keys, and a session key there would be a usable cookie.
    """
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def _bounded(name: str) -> str:
    """`name`, or a shortened name with a hash of it: a record's site slug has no length limit in the schema."""
    if len(name) <= GROUP_NAME_MAX_CHARS:
        return name
    return name[:50] + "." + hashlib.sha256(name.encode()).hexdigest()[:40]
