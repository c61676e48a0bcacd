"""Operators' overrides of a charger's share of the site limit: create and cancel, checked and audited.

The one write path of the site page (via "web"), the API ("api") and any command-line tool ("cli").
An override is an AllocationOverride row (the audit): who, when, what, until when, why, and who
ended it. The controller reads the rows in force itself (DESIGN12, "Overrides"); nothing is sent
from here, so a row is all it takes.

The rules, checked here whoever asks:
- the permission gateway.override_allocation, before anything else (a refusal stores nothing);
- the site has load management (without a limit there is nothing to override);
- the current is 0 (pause the charger) or within the charger's range: its profile's
  set_current_limit minimum (6 A, IEC 61851, when the profile names none) to its maximum, capped
  by the installation maximum (ChargePoint.max_current_a);
- the expiry is 1 minute to 24 hours away: an override outlives no shift by accident;
- the reason is optional, at most 300 characters.
A new override of a charger ends the one in force before it (ended_by names who replaced it):
one charger has at most one override in force, so the controller never has to choose.
Cancelling sets ended_at/ended_by; an override already ended (cancelled or expired) is left as it is.
"""

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from gateway.choices import CommandAction
from gateway.models import AllocationOverride, ChargePoint, Site
from gateway.profiles.spec import ProfileFormatError
from gateway.profiles.store import load_spec
from gateway.telemetry import format_ts

logger = logging.getLogger(__name__)

PERMISSION = "gateway.override_allocation"
DURATION_MIN = timedelta(minutes=1)
DURATION_MAX = timedelta(hours=24)
# IEC 61851-1: the least PWM duty cycle a car must accept means 6 A.
DEFAULT_MIN_A = 6.0
# ChargePoint.max_current_a's own bound, when neither the profile nor the installation names a maximum.
DEFAULT_MAX_A = 80.0
REASON_MAX_CHARS = AllocationOverride._meta.get_field("reason").max_length
VIA = ("web", "api", "cli")


class OverrideRefused(Exception):
    """The override was not stored: why, and which field was wrong (None: not a field's fault)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # not_permitted, not_found, not_load_managed, invalid, out_of_range
        self.message = message
        self.field = field


@dataclass(frozen=True)
class ChargerRange:
    """What an override of one charger may ask: 0, or min_a..max_a."""

    min_a: float
    max_a: float

    def allows(self, current_a: float) -> bool:
        return current_a == 0 or self.min_a <= current_a <= self.max_a

    def text(self) -> str:
        return f"0 A (pause) or {self.min_a:g} to {self.max_a:g} A"


def charger_range(charge_point: ChargePoint) -> ChargerRange:
    """The charger's range from its profile's set_current_limit, capped by its installation maximum."""
    low, high = None, None
    try:
        command = load_spec(charge_point.profile).command(CommandAction.SET_CURRENT_LIMIT)
    except ProfileFormatError:
        command = None
    if command is not None and command.supported:
        low, high = command.min_value, command.max_value
    min_a = DEFAULT_MIN_A if low is None else max(float(low), 0.0)
    max_a = DEFAULT_MAX_A if high is None else float(high)
    if charge_point.max_current_a is not None:
        max_a = min(max_a, charge_point.max_current_a)
    return ChargerRange(min_a=min_a, max_a=max(max_a, min_a))


def check_permission(user: Any, what: str, where: str, via: str) -> None:
    """Refuse (and log who tried) unless `user` holds gateway.override_allocation."""
    if user is not None and user.has_perm(PERMISSION):
        return
    name = user.get_username() if user is not None else "anonymous"
    logger.warning("user %s may not override allocations: %s at %r refused (%s)", name, what, where, via)
    raise OverrideRefused("not_permitted", f"{name or 'anonymous'} may not override allocations")


def create_override(
    site: Site | str,
    charge_point: str,
    current_a: Any,
    *,
    duration_s: Any = None,
    expires_at: datetime | None = None,
    reason: str = "",
    user: Any,
    via: str,
    now: datetime | None = None,
) -> AllocationOverride:
    """Store an override of `charge_point` at `site` until now + duration_s (or `expires_at`).

    Raises OverrideRefused (nothing stored) on any broken rule of the module doc.
    """
    site_slug = site.slug if isinstance(site, Site) else site
    check_permission(user, f"an override of {charge_point!r}", site_slug, via)
    now = now or timezone.now()
    site_row = site if isinstance(site, Site) else Site.objects.filter(slug=site_slug).first()
    if site_row is None:
        raise OverrideRefused("not_found", f"no site {site_slug!r}")
    if not site_row.load_managed:
        raise OverrideRefused(
            "not_load_managed", f"{site_row.name} has no load management (no connection limit): nothing to override"
        )
    cp = ChargePoint.objects.select_related("profile").filter(slug=charge_point, site=site_row).first()
    if cp is None:
        raise OverrideRefused("invalid", f"no charge point {charge_point!r} at {site_row.name}", "charge_point")
    current = _current(current_a)
    allowed = charger_range(cp)
    if not allowed.allows(current):
        raise OverrideRefused(
            "out_of_range", f"{current:g} A is not allowed for {cp.slug}: {allowed.text()}", "current_a"
        )
    until = _expiry(now, duration_s, expires_at)
    reason = (reason or "").strip()
    if len(reason) > REASON_MAX_CHARS:
        raise OverrideRefused(
            "invalid", f"the reason is {len(reason)} characters, at most {REASON_MAX_CHARS}", "reason"
        )
    username = user.get_username()
    with transaction.atomic():
        # One override in force per charger: the new one replaces it (and says so in the audit).
        replaced = AllocationOverride.objects.filter(
            charge_point_slug=cp.slug, ended_at__isnull=True, expires_at__gt=now
        ).update(ended_at=now, ended_by=username)
        override = AllocationOverride.objects.create(
            charge_point=cp,
            charge_point_slug=cp.slug,
            site_slug=site_row.slug,
            current_a=current,
            reason=reason,
            user=user,
            username=username,
            via=via,
            created_at=now,
            expires_at=until,
        )
    logger.info(
        "override %s: %s A for %s at %s until %s by %s (%s)%s",
        override.id,
        f"{current:g}",
        cp.slug,
        site_row.slug,
        format_ts(until),
        username,
        via,
        f", replacing {replaced}" if replaced else "",
    )
    return override


def cancel_override(site: Site | str, override_id: uuid.UUID | str, *, user: Any, via: str) -> AllocationOverride:
    """End an override now (ended_at, ended_by); one already ended or expired is returned unchanged."""
    site_slug = site.slug if isinstance(site, Site) else site
    check_permission(user, f"cancelling override {override_id}", site_slug, via)
    now = timezone.now()
    with transaction.atomic():
        override = AllocationOverride.objects.select_for_update().filter(id=override_id, site_slug=site_slug).first()
        if override is None:
            raise OverrideRefused("not_found", f"no override {override_id} at {site_slug}")
        if override.ended_at is None and override.expires_at > now:
            override.ended_at = now
            override.ended_by = user.get_username()
            override.save(update_fields=["ended_at", "ended_by"])
            logger.info("override %s of %s cancelled by %s (%s)", override.id, override.charge_point_slug, user, via)
    return override


def overrides_in_force(site_slug: str, now: datetime | None = None) -> list[AllocationOverride]:
    """The site's overrides in force, newest first (what the controller honours)."""
    now = now or timezone.now()
    return list(
        AllocationOverride.objects.filter(
            site_slug=site_slug, ended_at__isnull=True, created_at__lte=now, expires_at__gt=now
        )
    )


def override_json(override: AllocationOverride, now: datetime | None = None) -> dict[str, Any]:
    """One override as the page and the API show it."""
    now = now or timezone.now()
    return {
        "id": str(override.id),
        "charge_point": override.charge_point_slug,
        "site": override.site_slug,
        "current_a": override.current_a,
        "reason": override.reason,
        "username": override.username,
        "via": override.via,
        "created_at": format_ts(override.created_at),
        "expires_at": format_ts(override.expires_at),
        "ended_at": format_ts(override.ended_at) if override.ended_at else None,
        "ended_by": override.ended_by,
        "in_force": override.in_force(now),
    }


def _current(value: Any) -> float:
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise OverrideRefused("invalid", "a current in A is required", "current_a")
    if isinstance(value, bool) or value is None:
        raise OverrideRefused("invalid", "a current in A is required", "current_a")
    try:
        current = float(value)
    except (TypeError, ValueError):
        raise OverrideRefused("invalid", f"{str(value)[:40]!r} is not a current in A", "current_a") from None
    if not math.isfinite(current):
        raise OverrideRefused("invalid", f"{str(value)[:40]!r} is not a current in A", "current_a")
    return current


def _expiry(now: datetime, duration_s: Any, expires_at: datetime | None) -> datetime:
    """now + duration_s (or expires_at), refused outside 1 min..24 h."""
    if expires_at is None:
        if isinstance(duration_s, str):
            duration_s = duration_s.strip() or None
        if duration_s is None or isinstance(duration_s, bool):
            raise OverrideRefused("invalid", "a duration is required (1 min to 24 h)", "duration_s")
        try:
            seconds = float(duration_s)
        except (TypeError, ValueError):
            raise OverrideRefused("invalid", f"{str(duration_s)[:40]!r} is not a duration", "duration_s") from None
        if not math.isfinite(seconds):
            raise OverrideRefused("invalid", f"{str(duration_s)[:40]!r} is not a duration", "duration_s")
        expires_at = now + timedelta(seconds=seconds)
        field = "duration_s"
    else:
        if timezone.is_naive(expires_at):
            raise OverrideRefused("invalid", "the expiry needs a time zone", "expires_at")
        field = "expires_at"
    if not DURATION_MIN <= expires_at - now <= DURATION_MAX:
        raise OverrideRefused("out_of_range", "an override lasts 1 minute to 24 hours", field)
    return expires_at
