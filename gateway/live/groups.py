"""Channel-layer group names for the live dashboard."""

FLEET_GROUP = "fleet"


def charge_point_group(slug: str) -> str:
    """Group of one charge point's page (ASCII letters, digits, hyphens, periods, underscores)."""
    return f"cp.{slug}"
