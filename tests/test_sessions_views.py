"""The sessions pages: login, filters, totals, daily energy per site, the streamed CSV and a session's power curve."""

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client
from django.urls import reverse

from gateway.history.store import save_history
from gateway.models import ChargingSession, Site
from gateway.telemetry import build_record, format_ts
from tests.conftest import make_charge_point

DAY = datetime(2026, 3, 2, tzinfo=UTC)


def add_session(
    cp_slug: str, site_slug: str, start: datetime, minutes: float, energy_wh: float, **extra
) -> ChargingSession:
    end = start + timedelta(minutes=minutes)
    fields = {"ended_at": end, "end_reason": "finished", "peak_power_w": 11000.0} | extra
    return ChargingSession.objects.create(
        charge_point_slug=cp_slug,
        site_slug=site_slug,
        started_at=start,
        energy_wh=energy_wh,
        last_ts=end,
        last_seq=1,
        last_online_at=end,
        **fields,
    )


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("operator", password="pw-sessions-1")


@pytest.fixture
def client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def fleet(site, generic_profile):
    """Two sites, three sessions over two days (one still open)."""
    other = Site.objects.create(slug="harbour", name="Harbour")
    make_charge_point(site, generic_profile, "cp-a", 1601)
    make_charge_point(other, generic_profile, "cp-b", 1602)
    return [
        add_session("cp-a", site.slug, DAY + timedelta(hours=8), 60, 7000.0),
        add_session("cp-b", "harbour", DAY + timedelta(hours=9), 30, 3500.0),
        add_session("cp-a", site.slug, DAY + timedelta(days=1, hours=7), 90, 12250.0, peak_power_w=None),
        add_session("cp-b", "harbour", DAY + timedelta(days=1, hours=10), 15, 800.0, ended_at=None, end_reason=""),
    ]


def page_config(response) -> dict:
    html = response.content.decode()
    start = html.index('<script id="page-config" type="application/json">') + len(
        '<script id="page-config" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


@pytest.mark.parametrize("name", ["gateway:sessions", "gateway:sessions_csv"])
def test_the_pages_need_a_login(db, name: str) -> None:
    response = Client().get(reverse(name))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_detail_page_needs_a_login(fleet) -> None:
    response = Client().get(reverse("gateway:session_detail", args=[fleet[0].pk]))
    assert response.status_code == 302


def test_the_list_shows_every_session_with_totals_and_daily_energy_per_site(client, fleet) -> None:
    response = client.get(reverse("gateway:sessions"))
    assert response.status_code == 200
    body = response.content.decode()
    assert body.count("<tr data-session=") == 4
    totals = response.context["totals"]
    assert totals["count"] == 4
    assert totals["energy_kwh"] == pytest.approx((7000 + 3500 + 12250 + 800) / 1000)
    assert totals["duration"] == timedelta(minutes=60 + 30 + 90 + 15)  # the open one: so far
    assert "3 h 15 min" in body
    daily = {
        trace["site"]: dict(zip(trace["days"], trace["kwh"], strict=True)) for trace in page_config(response)["daily"]
    }
    assert daily == {
        "test-site": {"2026-03-02": 7.0, "2026-03-03": 12.25},
        "harbour": {"2026-03-02": 3.5, "2026-03-03": 0.8},
    }
    assert page_config(response)["daily"][0]["name"] in ("Harbour", "Test site")


def test_filters_select_by_site_charge_point_and_days(client, fleet) -> None:
    response = client.get(reverse("gateway:sessions"), {"site": "harbour"})
    assert response.context["totals"]["count"] == 2
    response = client.get(reverse("gateway:sessions"), {"charge_point": "cp-a", "date_from": "2026-03-03"})
    assert [row["session"].pk for row in response.context["rows"]] == [fleet[2].pk]
    assert response.context["totals"]["energy_kwh"] == pytest.approx(12.25)
    response = client.get(reverse("gateway:sessions"), {"date_from": "2026-03-02", "date_to": "2026-03-02"})
    assert {row["session"].pk for row in response.context["rows"]} == {fleet[0].pk, fleet[1].pk}
    # The CSV link carries the filters.
    assert 'href="/sessions/export.csv?date_from=2026-03-02&amp;date_to=2026-03-02"' in response.content.decode()


def test_bad_filters_are_a_400_with_the_reason(client, fleet) -> None:
    response = client.get(reverse("gateway:sessions"), {"date_from": "2026-03-05", "date_to": "2026-03-01"})
    assert response.status_code == 400
    assert "The range ends before it starts." in response.content.decode()
    response = client.get(reverse("gateway:sessions_csv"), {"date_from": "yesterday"})
    assert response.status_code == 400
    assert "date_from" in response.content.decode()


def test_the_list_is_paginated_newest_first(client, site) -> None:
    for i in range(55):
        add_session("cp-x", site.slug, DAY + timedelta(minutes=10 * i), 5, 100.0)
    first = client.get(reverse("gateway:sessions"))
    second = client.get(reverse("gateway:sessions"), {"page": 2})
    assert len(first.context["rows"]) == 50 and len(second.context["rows"]) == 5
    assert first.context["rows"][0]["session"].started_at == DAY + timedelta(minutes=540)
    assert first.context["totals"]["count"] == 55  # the totals are over every page


def expected_csv(sessions: list[ChargingSession]) -> list[list[str]]:
    rows = [
        [
            "session_id",
            "charge_point",
            "site",
            "started_at",
            "ended_at",
            "duration_s",
            "energy_kwh",
            "peak_power_kw",
            "end_reason",
        ]
    ]
    for s in sorted(sessions, key=lambda s: s.started_at):
        end = s.ended_at or s.last_ts
        rows.append(
            [
                str(s.pk),
                s.charge_point_slug,
                s.site_slug,
                format_ts(s.started_at),
                format_ts(s.ended_at) if s.ended_at else "",
                str(int((end - s.started_at).total_seconds())),
                f"{s.energy_wh / 1000:.3f}",
                "" if s.peak_power_w is None else f"{s.peak_power_w / 1000:.2f}",
                s.end_reason or "open",
            ]
        )
    return rows


def test_the_csv_has_every_filtered_session_oldest_first(client, fleet) -> None:
    response = client.get(reverse("gateway:sessions_csv"), {"site": "test-site"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="evdash-sessions-')
    text = b"".join(response.streaming_content).decode()
    assert list(csv.reader(io.StringIO(text))) == expected_csv(fleet[0:3:2])


@pytest.mark.django_db(transaction=True)
async def test_the_csv_streams_under_asgi_in_chunks(user, site) -> None:
    """Under ASGI (daphne) the CSV is an async iterator: Django would read a sync one whole first."""
    from asgiref.sync import sync_to_async

    def create() -> list[ChargingSession]:
        # Three sessions start in each minute: rows 2000 and 2001 (either side of a chunk) tie.
        return [add_session("cp-x", site.slug, DAY + timedelta(minutes=i // 3), 1, 10.0 * i) for i in range(2500)]

    sessions = await sync_to_async(create)()
    client = AsyncClient()
    await sync_to_async(client.force_login)(user)
    response = await client.get(reverse("gateway:sessions_csv"))
    assert response.status_code == 200 and response.is_async
    text = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert list(csv.reader(io.StringIO(text))) == expected_csv(sessions)


def test_the_detail_page_shows_the_power_curve_of_the_session_from_the_history(client, site, generic_profile) -> None:
    make_charge_point(site, generic_profile, "cp-a", 1601)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    powers = [0.0, 7400.0, 11000.0, 10800.0, 3000.0, 0.0]
    records = [
        build_record(
            charge_point="cp-a",
            site=site.slug,
            profile="generic-ev-charger",
            seq=i,
            fields=None,
            moment=start + timedelta(seconds=10 * i),
        )
        | {"status": "charging", "values": {"power_w": power}}
        for i, power in enumerate(powers)
    ]
    save_history(records)
    session = add_session("cp-a", site.slug, start + timedelta(seconds=10), 40 / 60, 60.0)
    response = client.get(reverse("gateway:session_detail", args=[session.pk]))
    assert response.status_code == 200
    curve = page_config(response)["curve"]
    # The session's span with 30 s either side: every stored record, raw.
    assert curve["t"] == [r["ts"] for r in records] and curve["power_w"] == powers
    assert (curve["source"], curve["points"]) == ("raw", 6)
    assert "0.06</span> kWh" in response.content.decode()
    assert client.get(reverse("gateway:session_detail", args=[session.pk + 1000])).status_code == 404


def test_a_session_outlives_its_charge_point(client, site, generic_profile) -> None:
    cp = make_charge_point(site, generic_profile, "cp-gone", 1603)
    session = add_session("cp-gone", site.slug, DAY, 10, 1000.0, charge_point=cp)
    cp.delete()
    response = client.get(reverse("gateway:session_detail", args=[session.pk]))
    assert response.status_code == 200 and page_config(response)["curve"] is None
    assert "cp-gone" in client.get(reverse("gateway:sessions")).content.decode()
