"""What a site controller works from, read from the database: the site's limit, its chargers, its
meter and the overrides in force (sync; the poller calls it through sync_to_async)."""

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from django.db import close_old_connections

from gateway.choices import CommandAction, Wiring
from gateway.profiles.encode import WriteRangeError, check_write_range
from gateway.profiles.spec import ProfileSpec
from gateway.sitecontrol.failsafe import failsafe_timeout_s

logger = logging.getLogger(__name__)

# IEC 61851-1: a charger cannot signal less than 6 A; a profile that names no minimum gets this.
DEFAULT_MIN_A = 6.0
# A profile that names no maximum: 32 A, the largest common AC charger rating (22 kW).
DEFAULT_MAX_A = 32.0


@dataclass(frozen=True)
class ChargerConfig:
    """One load-managed charger: how it shares the site and which commands its profile has."""

    slug: str
    wiring: str  # a choices.Wiring value
    priority: int
    min_a: float  # the per-session minimum, else the profile's set_current_limit minimum
    max_a: float  # the profile's maximum, capped by the installation's
    profile: str  # the profile's slug (for the log)
    can_limit: bool  # the profile has a supported set_current_limit
    can_pause: bool
    # The profile pauses through another register than the limit's (KEBA's enable): a paused
    # charger needs RESUME before a new limit gives it current again.
    resume_first: bool
    failsafe_current: bool  # the profile has a supported set_failsafe_current
    # What its set_failsafe_timeout writes: the site's timeout within the profile's range (None: none to set).
    failsafe_timeout_s: int | None
    # Its set_failsafe_current takes 0 A (KEBA, ABB: 0 or 6..32 A). Webasto, Vestel and Schneider
    # take 6..32 A only: a 0 is refused and the charger keeps its own failsafe current, so the
    # failsafe arithmetic must give it at least failsafe_min_a.
    can_pause_on_failsafe: bool = True
    failsafe_min_a: float = 0.0  # the least above 0 A its set_failsafe_current takes (0: no bound known)

    @property
    def phases(self) -> tuple[bool, bool, bool]:
        """The site phases it is wired to."""
        if self.wiring == Wiring.THREE_PHASE:
            return (True, True, True)
        return tuple(self.wiring == phase for phase in (Wiring.L1, Wiring.L2, Wiring.L3))  # type: ignore[return-value]


@dataclass(frozen=True)
class MeterConfig:
    """The site meter: read through its profile like a charger."""

    profile: ProfileSpec
    host: str
    port: int
    unit_id: int
    stale_s: float


@dataclass(frozen=True)
class OverrideConfig:
    """An operator's override in force."""

    charge_point: str
    current_a: float
    expires_at: datetime


@dataclass(frozen=True)
class SiteControlConfig:
    """One load-managed site as its controller sees it; reloaded every RELOAD_INTERVAL_S."""

    site: str
    site_id: int
    limit_a: float
    period_s: float
    margin_a: float
    base_load_a: float
    failsafe_timeout_s: int
    chargers: tuple[ChargerConfig, ...]
    limit_kw: float | None = None
    failsafe_current_a: float | None = None
    meter: MeterConfig | None = None
    overrides: tuple[OverrideConfig, ...] = ()

    def without_overrides(self) -> "SiteControlConfig":
        """The config with the overrides left out: what a change of re-does the failsafe set-up."""
        return replace(self, overrides=())


def charger_config(charge_point, spec: ProfileSpec, site_timeout_s: float) -> ChargerConfig:
    """A charge point's load-management settings with its profile's command ranges."""
    limit = spec.command(CommandAction.SET_CURRENT_LIMIT)
    pause = spec.command(CommandAction.PAUSE)
    can_limit = limit is not None and limit.supported
    can_pause = pause is not None and pause.supported
    profile_min = limit.min_value if can_limit and limit.min_value is not None else DEFAULT_MIN_A
    profile_max = limit.max_value if can_limit and limit.max_value is not None else DEFAULT_MAX_A
    min_a = max(profile_min, charge_point.min_session_current_a or 0.0)
    max_a = min(profile_max, charge_point.max_current_a) if charge_point.max_current_a else profile_max

    def supported(action: str) -> bool:
        command = spec.command(action)
        return command is not None and command.supported

    return ChargerConfig(
        slug=charge_point.slug,
        wiring=charge_point.wiring,
        priority=charge_point.priority,
        min_a=min_a,
        max_a=max(min_a, max_a),
        profile=spec.slug,
        can_limit=can_limit,
        can_pause=can_pause,
        resume_first=bool(can_limit and can_pause and pause.register != limit.register),
        failsafe_current=supported(CommandAction.SET_FAILSAFE_CURRENT),
        failsafe_timeout_s=failsafe_timeout_s(site_timeout_s, spec),
        can_pause_on_failsafe=failsafe_takes(spec, 0.0),
        failsafe_min_a=failsafe_min_a(spec),
    )


def failsafe_takes(spec: ProfileSpec, current_a: float) -> bool:
    """Whether the profile's set_failsafe_current takes current_a: within the command's range and
    the register's write range (what execute's range checks refuse otherwise). A profile without
    the command takes anything (nothing is written to it)."""
    command = spec.command(CommandAction.SET_FAILSAFE_CURRENT)
    if command is None or not command.supported:
        return True
    if (command.min_value is not None and current_a < command.min_value) or (
        command.max_value is not None and current_a > command.max_value
    ):
        return False
    try:
        check_write_range(spec.register(command.register), current_a)
    except (KeyError, WriteRangeError):
        return False
    return True


def failsafe_min_a(spec: ProfileSpec) -> float:
    """The least current above 0 A the profile's set_failsafe_current takes (0.0: none to honour)."""
    command = spec.command(CommandAction.SET_FAILSAFE_CURRENT)
    if command is None or not command.supported:
        return 0.0
    register = next((r for r in spec.registers if r.name == command.register), None)
    return max(0.0, command.min_value or 0.0, (register.write_min or 0.0) if register is not None else 0.0)


def load_site_controls(
    site: str | None, poller_slugs: set[str], now: datetime | None = None
) -> list[SiteControlConfig]:
    """The load-managed sites (optionally one) with enabled chargers this poller polls, each with
    those chargers, its meter and the overrides in force at `now`.

    A charger whose profile cannot be loaded is not polled, so not in poller_slugs: with a meter its
    draw is part of the base load; without one it is not seen (the poller logs it as unloadable).
    """
    from gateway.models import AllocationOverride, ChargePoint, Site
    from gateway.profiles.store import load_spec

    close_old_connections()
    now = now or datetime.now(UTC)
    sites = Site.objects.filter(limit_a__isnull=False).select_related("meter_profile")
    if site:
        sites = sites.filter(slug=site)
    specs: dict[int, ProfileSpec] = {}
    configs = []
    for row in sites.order_by("slug"):
        charge_points = [
            cp
            for cp in ChargePoint.objects.filter(site=row, enabled=True).select_related("profile").order_by("slug")
            if cp.slug in poller_slugs
        ]
        if not charge_points:
            continue
        chargers = []
        for cp in charge_points:
            if cp.profile_id not in specs:
                specs[cp.profile_id] = load_spec(cp.profile)
            chargers.append(charger_config(cp, specs[cp.profile_id], row.failsafe_timeout_s))
        meter = None
        if row.meter_profile is not None and row.meter_host:
            try:
                meter = MeterConfig(
                    profile=load_spec(row.meter_profile),
                    host=row.meter_host,
                    port=row.meter_port,
                    unit_id=row.meter_unit_id,
                    stale_s=row.meter_stale_s,
                )
            except Exception:
                # A broken meter profile: controlled without a meter (stale: the fallback), said loudly.
                logger.exception("%s: the meter profile %s cannot be loaded", row.slug, row.meter_profile.slug)
        overrides = tuple(
            OverrideConfig(o.charge_point_slug, o.current_a, o.expires_at)
            for o in AllocationOverride.objects.filter(
                site_slug=row.slug, ended_at__isnull=True, created_at__lte=now, expires_at__gt=now
            ).order_by("created_at")
        )
        configs.append(
            SiteControlConfig(
                site=row.slug,
                site_id=row.pk,
                limit_a=row.limit_a,
                limit_kw=row.limit_kw,
                period_s=row.control_period_s,
                margin_a=row.margin_a,
                base_load_a=row.base_load_a,
                failsafe_current_a=row.failsafe_current_a,
                failsafe_timeout_s=row.failsafe_timeout_s,
                chargers=tuple(chargers),
                meter=meter,
                overrides=overrides,
            )
        )
    return configs
