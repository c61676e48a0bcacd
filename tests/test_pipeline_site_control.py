"""Site load management on the pipeline page and in the workers' readiness, from a real chain:
simulated chargers and site meter, runpoller's services.run_poller controlling the site, runconsumer's
services.run_consumer consuming the statuses, both on the embedded Kafka broker, each with its
metrics port (/readyz).

The poller's row lists its site (controlling, its rounds, its commands, its last round) and the
consumer's row the site-status consumer (assigned, statuses handled); the page's JSON and its HTML
carry both. A controller whose rounds keep failing turns the poller red (page and readiness) with a
reason naming the site, and green again once its rounds go through.

Ground truth: the chargers' limits the simulators hold (the commands reached them), the SiteSample
rows the consumer stored, and the defect this test injects, not the counters the page reads.
"""

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

from gateway import services
from gateway.health.sites import FAILED_IN_A_ROW
from gateway.models import SiteSample
from gateway.sitecontrol import controller as controller_module
from tests.conftest import free_port, wait_for
from tests.site_chain import create_site, site_fleet
from tests.test_pipeline import fast_status, stage_of, wait_for_report  # noqa: F401 (fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180), pytest.mark.usefixtures("fast_status")]

SITE = "car-park"  # tests/site_chain.create_site
PERIOD_S = 1.0  # a control round a second: three failed rounds in a row within seconds
SIMULATOR_START_A = 32.0  # the limit each simulated charger holds until a command changes it


def site_of(body: dict, slug: str = SITE) -> dict | None:
    poller = next((s for s in body["stages"] if s["kind"] == "poller"), None)
    sites = (poller or {}).get("site_controllers") or []
    return next((site for site in sites if site["site"] == slug), None)


def site_status_consumer(body: dict) -> dict | None:
    consumer = next((s for s in body["stages"] if s["kind"] == "consumer"), None)
    others = (consumer or {}).get("other_consumers") or []
    return next((c for c in others if c["key"] == "site_status"), None)


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}  # not listening yet


async def wait_for_readyz(port: int, accept: Callable[[int, dict], bool], what: str, timeout_s: float = 30.0) -> dict:
    latest: tuple[int, dict] = (0, {})

    def ready() -> bool:
        nonlocal latest
        return accept(*latest)

    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        latest = await asyncio.to_thread(readyz, port)
        if ready():
            return latest[1]
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}; last: {latest}"
        await asyncio.sleep(0.2)


def check(body: dict, name: str) -> dict:
    return next(item for item in body["checks"] if item["name"] == name)


async def test_the_pipeline_page_and_readiness_show_site_control(kafka, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = site_fleet(count=2)
    poller_port, consumer_port = free_port(), free_port()
    stop_poller, stop_consumer = asyncio.Event(), asyncio.Event()
    async with fleet:
        await sync_to_async(create_site)(fleet, control_period_s=PERIOD_S)
        consumer_task = asyncio.create_task(services.run_consumer(stop_consumer, metrics_port=consumer_port))
        poller_task = asyncio.create_task(
            services.run_poller(stop_poller, poller_id="lm-page", metrics_port=poller_port)
        )
        try:
            # The poller controls the site (its meter read) and the chargers took the limits it sent;
            # the consumer consumed its statuses; both stages green.
            await wait_for(
                lambda: any(sim.behaviour.max_current_a != SIMULATOR_START_A for sim in fleet.charge_points),
                60,
                "a limit of the controller's on a charger",
            )
            body = await wait_for_report(
                lambda body: (
                    (site := site_of(body)) is not None
                    and site["state"] == "controlling"
                    and site["draw_source"] == "meter"
                    and site["rounds"] >= 2
                    and (consumer := site_status_consumer(body)) is not None
                    and consumer["handled"] > 0
                    and all(stage["state"] == "ok" for stage in body["stages"])
                ),
                "the site controlling on the poller's row, the statuses consumed on the consumer's",
                timeout_s=60,
            )
            site = site_of(body)
            assert site["problem"] is None and site["errors"] == 0 and site["failed_in_a_row"] == 0
            assert site["holder"] is None and site["period_s"] == PERIOD_S and site["limit_a"] == 63.0
            assert site["last_round_at"] and site["last_round_ms"] >= 0
            # The limits the chargers hold came as commands the page counts.
            limited = [sim for sim in fleet.charge_points if sim.behaviour.max_current_a != SIMULATOR_START_A]
            assert site["commands"].get("set_current_limit", 0) >= len(limited) > 0
            poller = stage_of(body, "poller")
            assert poller["site_control"]["sites"] == 1 and poller["site_control"]["refused"] == 0
            consumer = site_status_consumer(body)
            assert consumer["name"] == "site status" and consumer["assigned"] is True
            assert consumer["group_id"].endswith("-sites") and consumer["dead_lettered"] == 0
            stored = await SiteSample.objects.filter(site_slug=SITE).acount()
            assert stored > 0
            names = [c["key"] for c in stage_of(body, "consumer")["other_consumers"]]
            assert names == ["results", "site_status"]

            # The page's JSON and its HTML (the script's initial report; the noscript list) carry both.
            client = Client()
            user = await get_user_model().objects.acreate_user("operator", password="pw-1234567")
            await sync_to_async(client.force_login)(user)
            served = (await sync_to_async(client.get)("/pipeline/?format=json")).json()
            assert site_of(served)["state"] == "controlling" and site_status_consumer(served)["handled"] > 0
            html = (await sync_to_async(client.get)("/pipeline/")).content.decode()
            config = json.loads(
                html.split('<script id="page-config" type="application/json">')[1].split("</script>")[0]
            )
            assert site_of(config["report"])["site"] == SITE and site_status_consumer(config["report"])
            assert f"site {SITE}: <strong>controlling</strong>" in html

            # Readiness: the site-status consumer and the site controllers are checked.
            ready = await wait_for_readyz(consumer_port, lambda status, body: status == 200, "the consumer ready")
            assert check(ready, "kafka (site status)")["ok"] is True
            ready = await wait_for_readyz(poller_port, lambda status, body: status == 200, "the poller ready")
            assert check(ready, "site control") == {
                "name": "site control",
                "ok": True,
                "detail": "1 site controlled",
                "duration_ms": 0.0,
            }

            # A defect in the controller: every round fails. The poller turns red on the page and in
            # readiness, naming the site; the chargers keep their limits.
            def broken(site, chargers, memory):
                raise ZeroDivisionError("a defect")

            allocate = controller_module.allocation.allocate
            monkeypatch.setattr(controller_module.allocation, "allocate", broken)
            body = await wait_for_report(
                lambda body: (site_of(body) or {}).get("problem") is not None, "the site's rounds failing", 30
            )
            poller = stage_of(body, "poller")
            reason = f"site {SITE}: its last "
            assert poller["state"] == "failing"
            assert any(why.startswith(reason) and "control rounds failed" in why for why in poller["why"])
            site = site_of(body)
            assert site["failed_in_a_row"] >= FAILED_IN_A_ROW and site["errors"] >= FAILED_IN_A_ROW
            assert "the controller failed this round (ZeroDivisionError: a defect)" in site["reason"]
            assert body["verdict"]["state"] == "failing" and "Poller lm-page" in body["verdict"]["why"]
            red = await wait_for_readyz(poller_port, lambda status, body: status == 503, "the poller unready")
            failed = check(red, "site control")
            assert failed["ok"] is False and failed["detail"].startswith(reason), failed
            assert [item["name"] for item in red["checks"] if not item["ok"]] == ["site control"]

            # Fixed: the next round goes through; the site's problem is gone and the poller ready again.
            monkeypatch.setattr(controller_module.allocation, "allocate", allocate)
            body = await wait_for_report(
                lambda body: (site := site_of(body)) is not None and site["problem"] is None and site["rounds"] > 0,
                "the site's rounds going through again",
                30,
            )
            assert not any(why.startswith(reason) for why in stage_of(body, "poller")["why"])
            await wait_for_readyz(poller_port, lambda status, body: status == 200, "the poller ready again")
        finally:
            stop_poller.set()
            stop_consumer.set()
            await asyncio.wait_for(asyncio.gather(poller_task, consumer_task, return_exceptions=True), 40)
    for task in (poller_task, consumer_task):
        assert task.exception() is None
