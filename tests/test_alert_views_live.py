"""The /alerts/ page made live, as its script relies on it: the filters it applies to each pushed
alert say what the database filter says, the page hands its script its alerts and where it is in
the pages, a page of the list reads again as JSON after a reconnect, and the page's socket
(/ws/alerts/) carries every alert update and no telemetry, for logged-in users only."""

import itertools
import json
import re
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client

from evdash.asgi import application
from gateway.alert_views import ALERTS_PER_PAGE, ALERTS_WS_PATH
from gateway.alerts.messages import alert_json
from gateway.alerts.report import STATES, AlertFilterForm
from gateway.live.consumers import CLOSE_RESYNC, CLOSE_UNAUTHENTICATED
from gateway.live.groups import FLEET_GROUP
from gateway.live.push import TELEMETRY_EVENT, push_alerts, push_telemetry
from gateway.models import Alert
from gateway.telemetry import build_record
from tests.conftest import CONNECT_TIMEOUT_S, session_cookie_headers
from tests.test_alert_views import ALERTS_URL, T0, alerts, make_alert, operator  # noqa: F401 (alerts: a fixture)
from tests.test_live_alerts import alert_message

PAGE_SCRIPT = "gateway/alerts_page.js"


def matches(live_filter: dict, alert: dict) -> bool:
    """The test alerts_page.js makes of a pushed alert (its `matches`), written again here as the contract."""
    if any(alert[field] != value for field, value in live_filter["equal"].items()):
        return False
    return not live_filter["any_unset"] or any(alert[field] is None for field in live_filter["any_unset"])


def page_config(html: str) -> dict | None:
    """The page's json_script settings for its script, or None when it has none."""
    found = re.search(r'<script id="page-config" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(found.group(1)) if found else None


@pytest.mark.django_db
def test_the_live_filter_says_what_the_database_filter_says(alerts: dict[str, Alert]) -> None:  # noqa: F811
    """Every state, severity, site and charge point: a pushed alert is shown iff the page would list it."""
    everything = [alert_json(alert) for alert in Alert.objects.all()]
    choices = itertools.product(
        [*STATES, ""], ["", "critical", "warning"], ["", "site-a", "site-b"], ["", "cp-active", "cp-done"]
    )
    checked = 0
    for state, severity, site, charge_point in choices:
        form = AlertFilterForm({"state": state, "severity": severity, "site": site, "charge_point": charge_point})
        assert form.is_valid(), form.errors
        listed = {str(alert_id) for alert_id in form.filter(Alert.objects.all()).values_list("id", flat=True)}
        live_filter = json.loads(json.dumps(form.live_filter()))  # as the page's script gets it
        assert {alert["id"] for alert in everything if matches(live_filter, alert)} == listed, (state, severity, site)
        checked += bool(listed)
    assert checked > 20  # the combinations that list something are not a handful of edge cases


@pytest.mark.django_db
def test_the_page_gives_its_script_its_alerts_filters_and_place(alerts: dict[str, Alert]) -> None:  # noqa: F811
    client = operator()
    html = client.get(ALERTS_URL, {"severity": "critical", "site": "site-a"}).content.decode()
    config = page_config(html)
    assert config is not None and PAGE_SCRIPT in html and "data-live-indicator" in html
    assert config["ws_path"] == ALERTS_WS_PATH == "/ws/alerts/"
    # The rows it rendered, in order, as the messages the socket sends.
    assert config["alerts"] == [alert_json(alerts["active"])]
    assert config["filter"] == {
        "any_unset": ["cleared_at", "acknowledged_at"],
        "equal": {"severity": "critical", "site": "site-a"},
    }
    assert (config["page"], config["per_page"], config["total"]) == (1, ALERTS_PER_PAGE, 1)
    assert config["severity_labels"]["critical"] == "Critical"
    assert config["ack_url"].replace(config["alert_id_placeholder"], str(alerts["active"].id)) in html
    # An empty result still has its table (hidden), for the first alert that arrives.
    html = client.get(ALERTS_URL, {"site": "site-b", "state": "unacknowledged"}).content.decode()
    assert page_config(html)["alerts"] == [] and "data-alert-table hidden" in html
    assert re.search(r"<p class=\"empty card\" data-alert-none>", html)
    # Bad filters: the errors, no script and no socket.
    html = client.get(ALERTS_URL, {"severity": "fatal"}).content.decode()
    assert page_config(html) is None and PAGE_SCRIPT not in html and "data-live-indicator" not in html


@pytest.mark.django_db
def test_a_page_reads_again_as_json_and_later_pages_know_the_newest() -> None:
    # Two pages and a bit, all needing attention; the newest is raised last.
    made = [make_alert(f"cp-{n:03d}", n) for n in range(ALERTS_PER_PAGE * 2 + 3)]
    newest = made[-1]
    client = operator()
    config = page_config(client.get(ALERTS_URL, {"page": "2"}).content.decode())
    assert config["page"] == 2 and len(config["alerts"]) == ALERTS_PER_PAGE
    assert config["newest"] == {"id": str(newest.id), "raised_at": alert_json(newest)["raised_at"]}
    assert page_config(client.get(ALERTS_URL).content.decode())["newest"] is None  # the first page shows it

    answer = client.get(ALERTS_URL, {"format": "json", "page": "2"}).json()
    assert answer["alerts"] == config["alerts"]
    assert (answer["total"], answer["page"], answer["num_pages"]) == (len(made), 2, 3)
    assert answer["newest"] == config["newest"] and answer["as_of"].endswith("Z")
    # Newest first throughout: page 1's last alert is older than none of page 2's.
    first = client.get(ALERTS_URL, {"format": "json", "page": "1"}).json()["alerts"]
    assert [a["charge_point"] for a in first + answer["alerts"]] == [f"cp-{n:03d}" for n in range(len(made) - 1, 2, -1)]
    # A page past the end is the last one, as on the HTML page; filters apply as there.
    assert client.get(ALERTS_URL, {"format": "json", "page": "9"}).json()["page"] == 3
    newest.acknowledged_at, newest.cleared_at = T0, T0 + timedelta(hours=1)
    newest.save()
    answer = client.get(ALERTS_URL, {"format": "json", "page": "1"}).json()
    assert answer["total"] == len(made) - 1 and answer["newest"]["id"] == str(made[-2].id)
    # Without a page: the fleet page's feed, as before.
    assert set(client.get(ALERTS_URL, {"format": "json"}).json()) == {"alerts", "total", "as_of"}


async def alerts_socket(headers: list) -> WebsocketCommunicator:
    """The /alerts/ page's socket, accepted; its snapshot is one empty frame (the page reads over HTTP)."""
    communicator = WebsocketCommunicator(application, ALERTS_WS_PATH, headers=headers)
    connected, _ = await communicator.connect(timeout=CONNECT_TIMEOUT_S)
    assert connected
    assert await communicator.receive_json_from() == {"type": "snapshot", "records": [], "more": False}
    return communicator


@pytest.mark.django_db(transaction=True)
async def test_the_alerts_socket_carries_every_alert_and_no_telemetry() -> None:
    user = await sync_to_async(get_user_model().objects.create_user)("operator", password="pw-1234567")
    headers = await sync_to_async(session_cookie_headers)(user)
    page = await alerts_socket(headers)

    # Telemetry goes to the fleet group it joined, but not to the browser.
    await push_telemetry([build_record(charge_point="cp-a", site="site-a", profile="generic", seq=1, fields=None)])
    raised, other_site = alert_message("cp-a", "site-a"), alert_message("cp-b", "site-b", "acknowledged")
    await push_alerts([raised, other_site])
    assert await page.receive_json_from(timeout=5) == {"type": "alerts", "alerts": [raised, other_site]}
    assert await page.receive_nothing(timeout=0.2)

    # A gap in the fleet group's numbers: alert updates may have been dropped too; reconnect and re-read.
    layer = get_channel_layer()
    for number in (1, 3):
        await layer.group_send(FLEET_GROUP, {"type": TELEMETRY_EVENT, "records": [], "sender": "gap-test", "n": number})
    assert await page.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_RESYNC}
    await page.disconnect()

    anonymous = WebsocketCommunicator(application, ALERTS_WS_PATH, headers=[h for h in headers if h[0] != b"cookie"])
    assert (await anonymous.connect(timeout=CONNECT_TIMEOUT_S))[0]
    assert await anonymous.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_UNAUTHENTICATED}
    await anonymous.wait()
    await sync_to_async(connections.close_all)()


@pytest.mark.django_db
def test_the_page_and_its_json_need_a_login() -> None:
    response = Client().get(ALERTS_URL, {"format": "json", "page": "1"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
