"""The SiteStatus contract between a poller's site controller and the server: the shape documented in
gateway/sitecontrol/messages.py, a hand-written message parsed, round trips, and what is refused."""

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from gateway.commands.messages import InvalidMessage
from gateway.sitecontrol.messages import ChargerShare, SiteStatus

T0 = datetime(2026, 3, 2, 8, 0, 0, tzinfo=UTC)
PINNED_KEYS = {
    "type",
    "schema_version",
    "site",
    "at",
    "poller",
    "state",
    "reason",
    "limit_a",
    "limit_kw",
    "margin_a",
    "draw_a",
    "draw_source",
    "meter_age_s",
    "base_load_a",
    "allocated_a",
    "headroom_a",
    "chargers",
}
CHARGER_KEYS = {
    "charge_point",
    "allocated_a",
    "actual_a",
    "state",
    "reason",
    "priority",
    "override_a",
    "override_until",
}


def site_status(
    seconds: float = 0.0,
    *,
    site: str = "depot",
    poller: str = "poller-a",
    state: str = "controlling",
    draw_a: tuple[float, float, float] = (40.0, 38.0, 35.0),
    draw_source: str = "meter",
    limit_a: float = 63.0,
    reason: str | None = None,
    meter_age_s: float | None = 0.4,
    chargers: tuple[ChargerShare, ...] = (),
) -> SiteStatus:
    """A status of `site` taken `seconds` after T0 (shared by the site tests)."""
    return SiteStatus(
        site=site,
        at=T0 + timedelta(seconds=seconds),
        poller=poller,
        state=state,
        reason=reason,
        limit_a=limit_a,
        margin_a=1.0,
        draw_a=draw_a,
        draw_source=draw_source,
        meter_age_s=meter_age_s,
        base_load_a=(10.0, 8.0, 5.0),
        allocated_a=(32.0, 32.0, 32.0),
        chargers=chargers,
    )


SHARES = (
    ChargerShare("cp-1", 16.0, (15.8, 15.9, 15.7), "charging", "", priority=10),
    ChargerShare(
        "cp-2",
        16.0,
        (0.0, 16.1, 0.0),
        "charging",
        "override until 09:00",
        override_a=16.0,
        override_until=T0 + timedelta(hours=1),
    ),
    ChargerShare("cp-3", 0.0, (0.0, 0.0, 0.0), "paused", "paused: not enough room for its minimum (6 A)"),
    ChargerShare("cp-4", None, (0.0, 0.0, 0.0), "offline", "offline: counted at its failsafe current"),
)


def test_a_status_has_the_documented_shape_and_comes_back_the_same() -> None:
    status = site_status(chargers=SHARES)
    data = orjson.loads(status.to_json())
    assert set(data) == PINNED_KEYS
    assert {frozenset(charger) for charger in data["chargers"]} == {frozenset(CHARGER_KEYS)}
    assert (data["type"], data["schema_version"], data["site"], data["at"]) == (
        "site_status",
        1,
        "depot",
        "2026-03-02T08:00:00.000Z",
    )
    # The limit less the draw of the most loaded phase (L1 at 40 A of 63 A).
    assert data["headroom_a"] == 23.0
    assert data["chargers"][1]["override_until"] == "2026-03-02T09:00:00.000Z"
    assert data["chargers"][1]["actual_a"] == [0.0, 16.1, 0.0]
    assert SiteStatus.from_json(status.to_json()) == status
    assert status.key == b"depot"  # one site's statuses on one partition, in order


def test_a_status_written_by_hand_as_documented_parses() -> None:
    """What another producer following the docstring would write: optional fields left out."""
    payload = b"""{"type": "site_status", "schema_version": 1, "site": "depot", "at": "2026-03-02T08:00:05.250Z",
        "poller": "edge-1", "state": "fallback", "reason": "meter stale for 12 s", "limit_a": 63,
        "limit_kw": null, "margin_a": 1, "draw_a": [63.5, 40, 40], "draw_source": "fallback",
        "meter_age_s": 12.0, "base_load_a": [10, 10, 10], "allocated_a": [48, 48, 48], "headroom_a": -0.5,
        "chargers": [{"charge_point": "cp-1", "allocated_a": 6, "actual_a": [6, 6, 6], "state": "charging",
                      "reason": "failsafe share", "priority": 0, "override_a": null, "override_until": null}]}"""
    status = SiteStatus.from_json(payload)
    assert status.at == T0 + timedelta(seconds=5.25)
    assert (status.state, status.draw_source, status.reason, status.meter_age_s) == (
        "fallback",
        "fallback",
        "meter stale for 12 s",
        12.0,
    )
    assert status.headroom_a == pytest.approx(-0.5)
    assert status.chargers[0] == ChargerShare("cp-1", 6.0, (6.0, 6.0, 6.0), "charging", "failsafe share")


def altered(**changes: Any) -> bytes:
    data = site_status(chargers=SHARES[:1]).to_dict()
    for name, value in changes.items():
        if value is KeyError:
            del data[name]
        else:
            data[name] = value
    return orjson.dumps(data)


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"not json", "not JSON"),
        (altered(type="command_result"), "type: expected 'site_status'"),
        (altered(state="sleeping"), "state: 'sleeping' is not one of"),
        (altered(draw_source="guess"), "draw_source: 'guess' is not one of"),
        (altered(limit_a=KeyError), "limit_a"),
        (altered(draw_a=[40.0, 38.0]), "draw_a: expected a list of 3 numbers"),
        (altered(draw_a=[40.0, None, 35.0]), "draw_a"),
        (altered(allocated_a="32"), "allocated_a: expected a list of 3 numbers"),
        (altered(site="a/b"), "site"),
        (altered(at="yesterday"), "at"),
        (altered(chargers={"cp-1": 16}), "chargers: expected a JSON list"),
        (altered(chargers=[{"charge_point": "cp-1", "state": "dancing"}]), "chargers.state"),
        (
            altered(chargers=[SHARES[0].to_dict() | {"priority": True}]),
            "chargers.priority: expected a whole number",
        ),
    ],
)
def test_what_is_not_a_site_status_is_refused_with_the_reason(payload: bytes, complaint: str) -> None:
    with pytest.raises(InvalidMessage, match=complaint.replace("(", r"\(").replace("[", r"\[")):
        SiteStatus.from_json(payload)
