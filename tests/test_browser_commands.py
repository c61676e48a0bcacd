"""The Commands panel in Chromium: a user with the permission sets a limit and sees it pending, then
applied (or failed) live; with the socket's update missing, the page asks the server itself; a
user without the permission sees no controls.

The server is the demo's web process (daphne with the consumer on its loop: telemetry, command
results and the sweeper), on a SQLite database of its own and the session's Kafka broker. No
poller runs: the test answers each command as a poller would, by publishing its result to
evdash.command-results, which the server's consumer stores and pushes to the page. The whole
chain (poller, simulator, bridge) is tested in tests/test_commands_end_to_end.py.
"""

import asyncio
import os
import re
import signal
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from django.conf import settings

from gateway.commands.messages import CommandMessage, CommandResult
from gateway.kafka.config import producer_options
from gateway.kafka.topics import command_results_topic, commands_topic
from tests.browser import launch_chromium, serving
from tests.conftest import free_port
from tests.kafka_read import read_all
from tests.processes import Service, manage, process_env, wait_until

pytestmark = pytest.mark.browser

PASSWORD = "browser-commands-pw-4821"
SLUG = "cp-1"
LIMIT_MIN_A, LIMIT_MAX_A = 6, 16
RESUME_UNSUPPORTED = "this test charger has no resume"
# Short, so that the page's fallback (a GET after the expiry) is seen within the test; long
# enough for a result published at once to beat the server's sweeper (expiry + 5 s).
EXPIRY_S = 8
SCREENSHOTS = Path(os.environ.get("EVDASH_SCREENSHOT_DIR") or Path(settings.BASE_DIR) / "test-results" / "screenshots")
WAIT_MS = 20_000

SETUP = f"""
from dataclasses import replace
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from gateway.models import ChargePoint, DeviceProfile, Register, Site, StatusRule
from gateway.profiles.spec import CommandSpec
from gateway.profiles.store import SHIPPED_DIR, read_spec_file, save_spec
spec = read_spec_file(SHIPPED_DIR / "generic-ev-charger.json")
commands = (
    CommandSpec("set_current_limit", register="max_current", min_value={LIMIT_MIN_A}, max_value={LIMIT_MAX_A}),
    CommandSpec("pause", register="max_current", value=0),
    CommandSpec("resume", unsupported="{RESUME_UNSUPPORTED}"),
)
profile = save_spec(replace(spec, slug="browser-commands", name="Browser commands", commands=commands),
                    DeviceProfile, Register, StatusRule)
site = Site.objects.create(slug="depot", name="Depot")
ChargePoint.objects.create(slug="{SLUG}", name="CP 1", site=site, host="127.0.0.1", port={{port}}, profile=profile)
users = get_user_model().objects
operator = users.create_user("operator", password="{PASSWORD}")
operator.user_permissions.add(Permission.objects.get(codename="send_command"))
users.create_user("viewer", password="{PASSWORD}")
"""
SERVE = "from gateway.demo import serve_web_with_consumer; serve_web_with_consumer('127.0.0.1', {port})"
# Completes a command on its row only: no push, so only the page's fallback GET can show it.
COMPLETE_SILENTLY = """
from datetime import UTC, datetime
from gateway.models import Command
Command.objects.filter(id="{id}").update(status="applied", read_back={read_back}, completed_at=datetime.now(UTC))
"""


def run_async(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine on a loop of its own thread (Playwright's sync API owns this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, make()).result()


@pytest.fixture
def server(kafka: dict, tmp_path: Path) -> Iterator[dict]:
    """The web server with its consumer, on its own database, the test's topics and a short expiry."""
    env = process_env(
        tmp_path,
        KAFKA_BOOTSTRAP_SERVERS=kafka["KAFKA_BOOTSTRAP_SERVERS"],
        KAFKA_ENABLE_IDEMPOTENCE="0",
        EVDASH_TELEMETRY_TOPIC=kafka["TELEMETRY_TOPIC"],
        EVDASH_COMMANDS_TOPIC=kafka["COMMANDS_TOPIC"],
        EVDASH_COMMAND_RESULTS_TOPIC=kafka["COMMAND_RESULTS_TOPIC"],
        EVDASH_CONSUMER_GROUP=kafka["CONSUMER_GROUP"],
        EVDASH_TOPIC_PARTITIONS=str(kafka["TOPIC_PARTITIONS"]),
        EVDASH_COMMAND_EXPIRY_S=str(EXPIRY_S),
    )
    env.pop("REDIS_URL", None)  # the in-memory channel layer: the consumer pushes in the web process
    manage(["migrate", "-v", "0"], env)
    manage(["shell", "-c", SETUP.format(port=free_port())], env)
    port = free_port()
    web = Service("shell", env, tmp_path / "web.log", "-c", SERVE.format(port=port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: serving(url), 60, "the web server", web)
        # Results published before the consumer joins its group would still be read (it starts from
        # the earliest offset), but a slow first join could outlast a wait of the test.
        consuming = f"consuming {kafka['COMMAND_RESULTS_TOPIC']} as group"
        wait_until(lambda: consuming in web.output(), 60, "the results consumer", web)
        yield {"url": url, "env": env, "web": web}
        web.stop(signal.SIGINT)
    finally:
        web.kill()


@pytest.fixture
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


def open_page(browser, url: str, username: str):
    """A new browser session logged in as `username`, on the charge point page, its socket live."""
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}/chargepoints/{SLUG}/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/chargepoints/{SLUG}/")
    page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=WAIT_MS)
    return page, errors


def sent_commands() -> list[CommandMessage]:
    """What the server has published to the pollers so far."""
    return [CommandMessage.from_json(m.value) for m in run_async(lambda: read_all(commands_topic()))]


def answer(result: CommandResult) -> None:
    """Publish a command's result as the poller that owns the charge point would."""

    async def publish() -> None:
        producer = AIOKafkaProducer(**producer_options())
        await producer.start()
        try:
            await producer.send_and_wait(command_results_topic(), result.to_json(), key=result.key)
        finally:
            await producer.stop()

    run_async(publish)


def status_is(page, server: dict, state: str, text: str) -> None:
    """Wait until the panel's status line is in `state` and reads `text`."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            """([state, text]) => { const el = document.querySelector('[data-command-status]');
                  return !el.hidden && el.dataset.state === state && el.textContent.trim() === text; }""",
            arg=[state, text],
            timeout=WAIT_MS,
        )
    except PlaywrightTimeout:
        shown = page.eval_on_selector("[data-command-status]", "el => [el.dataset.state, el.textContent]")
        raise AssertionError(
            f"status {shown}, not {[state, text]}; server:\n{server['web'].output()[-3000:]}"
        ) from None


def listed(page) -> list[tuple[str, str, str]]:
    """The recent commands list: (state, what, result) of each item, newest first."""
    return page.eval_on_selector_all(
        "[data-command-list] li",
        """items => items.map(li => [li.dataset.state, li.querySelector('.command-what').textContent,
                                     li.querySelector('.command-result').textContent])""",
    )


def test_an_operator_sets_a_limit_and_sees_it_pending_then_applied_live(server: dict, browser) -> None:
    page, errors = open_page(browser, server["url"], "operator")
    page.evaluate("window.notReloaded = true")
    asked: list[str] = []  # the page's GET /commands/<id>/ (its fallback when no update came)
    page.on(
        "request", lambda request: "/commands/" in request.url and request.method == "GET" and asked.append(request.url)
    )
    limit = page.locator("#command-limit-value")
    assert (limit.get_attribute("min"), limit.get_attribute("max"), limit.get_attribute("step")) == ("6", "16", "1")
    assert page.locator('[data-action="resume"]').is_disabled()
    assert page.locator('[data-unsupported="resume"]').inner_text() == f"unsupported: {RESUME_UNSUPPORTED}"

    # Out of the profile's range: the browser refuses to submit, nothing reaches the server.
    limit.fill("40")
    page.click('[data-action="set_current_limit"]')
    assert page.evaluate("document.querySelector('#command-limit-value').validity.rangeOverflow")
    assert page.locator("[data-command-status]").is_hidden()

    limit.fill("10")
    page.click('[data-action="set_current_limit"]')
    status_is(page, server, "pending", "Set limit 10 A: pending")
    assert listed(page) == [["pending", "Set limit 10 A", "pending"]]
    [command] = sent_commands()
    assert (command.charge_point, command.action, command.value, command.user) == (
        SLUG,
        "set_current_limit",
        10.0,
        "operator",
    )
    answer(CommandResult.applied(command, 10.0, poller="browser-test"))
    status_is(page, server, "applied", "Set limit 10 A: applied — read back 10 A")
    assert listed(page) == [["applied", "Set limit 10 A", "applied — read back 10 A"]]

    page.click('[data-action="pause"]')
    status_is(page, server, "pending", "Pause charging: pending")
    pause = sent_commands()[-1]
    assert pause.action == "pause"
    answer(CommandResult.failed(pause, "readback_mismatch", "expected 0 A, read 16 A", poller="browser-test"))
    status_is(page, server, "failed", "Pause charging: failed — expected 0 A, read 16 A")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "charge-point-commands.png"), full_page=True)

    # Both outcomes came over the socket: the page never had to ask.
    assert asked == []

    # A result that is stored but never pushed (here: written to the row directly) still reaches
    # the page: when no update came by the command's expiry, the page asks GET /commands/<id>/.
    limit.fill("12")
    page.click('[data-action="set_current_limit"]')
    status_is(page, server, "pending", "Set limit 12 A: pending")
    silent = sent_commands()[-1]
    manage(["shell", "-c", COMPLETE_SILENTLY.format(id=silent.id, read_back=12.0)], server["env"])
    status_is(page, server, "applied", "Set limit 12 A: applied — read back 12 A")
    assert [state for state, _, _ in listed(page)] == ["applied", "failed", "applied"]
    assert set(asked) == {f"{server['url']}/commands/{silent.id}/"}
    assert page.evaluate("window.notReloaded === true")
    assert errors == []


def test_a_user_without_the_permission_sees_no_controls(server: dict, browser) -> None:
    page, errors = open_page(browser, server["url"], "viewer")
    assert page.locator("[data-commands]").count() == 0
    assert page.locator("form[data-command-form], #command-limit-value, .command-button").count() == 0
    assert page.locator("h2", has_text=re.compile("^Recent commands$")).count() == 1
    assert errors == []
