"""Commands: click → verified result on the page, over the direct and the edge path.

The layout is `manage.py demo` (simulator, poller, broker(s), the bridge on the edge path, the
consumer and the web server), once on the edge path (the demo's default) and once direct
(EVDASH_DEMO_DIRECT=1). The client is this process, logged in as a superuser (a session made with
Django's test client in `manage.py shell`): it opens the charge point page's WebSocket of each
charge point it commands, then, one command at a time, POSTs a current limit to the page's
command endpoint (with the CSRF token, as the page's script does) and waits for the socket's
"command" message that says applied or failed.

Latency = from just before the POST to that message, wall clock of this process. Commands go
round-robin to the fleet's charge points of one profile (the generic one: no vendor pacing),
alternating 10 A and 16 A so that every command changes the limit and is verified by read-back.
Each row: commands, applied, p50/p99/max, and the profile's declared settle time, which the
latency includes (the poller waits it before reading back): the issue's target is
p99 < 300 ms + settle.

    .venv/bin/python bench/commands.py [--quick] [--paths edge,direct] [--commands N]
"""

import argparse
import asyncio
import http.client
import json
import signal
import subprocess
import time
from http.cookies import SimpleCookie
from urllib.parse import urlencode

try:
    from bench import common
except ModuleNotFoundError:  # run as `python bench/commands.py`
    import common  # type: ignore[no-redef]

TITLE = "Commands: click → verified result on the page (p50/p99 ms)"
PATHS = ("edge", "direct")
PROFILE = "generic-ev-charger"
CLIENT_USER = "bench"
CHARGE_POINTS = 16  # the demo fleet: two of each shipped profile
COMMAND_TIMEOUT_S = 40.0  # longer than the command expiry: a lost result is a failed row, not a hang
LIMITS_A = (10.0, 16.0)

# In `manage.py shell` of the demo: a logged-in superuser session, the charge points of PROFILE
# and the settle time its set_current_limit declares.
SETUP_CLIENT = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from gateway.models import ChargePoint
from gateway.profiles.store import load_spec
user = get_user_model().objects.filter(username="{user}").first()
if user is None:
    user = get_user_model().objects.create_superuser("{user}", "bench@localhost", None)
client = Client()
client.force_login(user)
name = settings.SESSION_COOKIE_NAME
cps = list(ChargePoint.objects.filter(enabled=True, profile__slug="{profile}").select_related("profile"))
command = load_spec(cps[0].profile).command("set_current_limit")
print(json.dumps({{"cookie": f"{{name}}={{client.cookies[name].value}}", "slugs": [cp.slug for cp in cps],
                   "settle_s": command.settle_s}}))
"""


class PageClient:
    """An HTTP client of the demo's web server as a logged-in browser: cookies, CSRF token, Origin."""

    def __init__(self, port: int, session_cookie: str) -> None:
        self.port = port
        self.cookies = SimpleCookie(session_cookie)
        self.csrf_token = ""

    def _request(self, method: str, path: str, body: str | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Cookie": "; ".join(f"{k}={v.value}" for k, v in self.cookies.items())}
        if body is not None:
            origin = f"http://127.0.0.1:{self.port}"
            headers |= {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-CSRFToken": self.csrf_token,
                "Origin": origin,
                "Referer": origin + "/",
            }
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            for header in response.msg.get_all("Set-Cookie") or []:
                self.cookies.load(header)
            return response.status, payload
        finally:
            connection.close()

    def open_page(self, slug: str) -> None:
        """GET the charge point page: the server sets the CSRF cookie the POSTs need."""
        status, _ = self._request("GET", f"/chargepoints/{slug}/")
        if status != 200:
            raise RuntimeError(f"GET /chargepoints/{slug}/ answered {status}")
        self.csrf_token = self.cookies["csrftoken"].value

    def send_limit(self, slug: str, limit_a: float) -> dict:
        body = urlencode({"action": "set_current_limit", "value": f"{limit_a:g}"})
        status, payload = self._request("POST", f"/chargepoints/{slug}/commands/", body)
        if status != 201:
            raise RuntimeError(f"POST command to {slug} answered {status}: {payload[:300]!r}")
        return json.loads(payload)["command"]


class CommandWatch:
    """The charge point pages' sockets: resolves a future per command id when its outcome arrives."""

    def __init__(self) -> None:
        self.outcomes: dict[str, asyncio.Future] = {}
        self.early: dict[str, tuple[float, dict]] = {}  # outcomes that beat the POST's answer

    def expect(self, command_id: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if command_id in self.early:
            future.set_result(self.early.pop(command_id))
        else:
            self.outcomes[command_id] = future
        return future

    def on_frame(self, arrived_s: float, payload: bytes) -> None:
        message = json.loads(payload)
        if message.get("type") != "command" or message["command"]["status"] == "pending":
            return
        command = message["command"]
        future = self.outcomes.pop(command["id"], None)
        if future is None:
            self.early[command["id"]] = (arrived_s, command)
        elif not future.done():
            future.set_result((arrived_s, command))


async def open_page_socket(port: int, cookie: str, slug: str, watch: CommandWatch) -> object:
    """The charge point page's WebSocket, as the page opens it."""
    from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

    opened: asyncio.Future = asyncio.get_running_loop().create_future()

    class PageSocket(WebSocketClientProtocol):
        def onOpen(self) -> None:
            if not opened.done():
                opened.set_result(self)

        def onMessage(self, payload: bytes, is_binary: bool) -> None:
            watch.on_frame(time.time(), payload)

        def onClose(self, was_clean: bool, code: int | None, reason: str | None) -> None:
            if not opened.done():
                opened.set_exception(ConnectionError(f"socket closed: {code} {reason}"))

    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{port}/ws/chargepoints/{slug}/", origin=f"http://127.0.0.1:{port}", headers={"Cookie": cookie}
    )
    factory.protocol = PageSocket
    await asyncio.get_running_loop().create_connection(factory, "127.0.0.1", port)
    return await asyncio.wait_for(opened, 30)


async def measure(port: int, setup: dict, commands: int) -> dict:
    """Send `commands` limits one at a time; latency per command from the POST to its outcome."""
    slugs = setup["slugs"]
    client = PageClient(port, setup["cookie"])
    watch = CommandWatch()
    sockets = [await open_page_socket(port, setup["cookie"], slug, watch) for slug in slugs]
    for slug in slugs:
        await asyncio.to_thread(client.open_page, slug)
    latencies_ms: list[float] = []
    failures: list[str] = []
    try:
        # Warm-up: one command per charge point (first connections, JIT-free but cold caches).
        for index in range(commands + len(slugs)):
            slug = slugs[index % len(slugs)]
            limit_a = LIMITS_A[(index // len(slugs)) % len(LIMITS_A)]
            started_s = time.time()
            command = await asyncio.to_thread(client.send_limit, slug, limit_a)
            arrived_s, outcome = await asyncio.wait_for(watch.expect(command["id"]), COMMAND_TIMEOUT_S)
            if index < len(slugs):
                continue
            if outcome["status"] == "applied":
                latencies_ms.append((arrived_s - started_s) * 1000)
            else:
                failures.append(f"{slug}: {outcome['reason_code']}: {outcome['reason']}")
    finally:
        for socket in sockets:
            socket.sendClose()
    cuts = common.percentiles(latencies_ms, (50, 99))
    return {
        "commands": commands,
        "applied": len(latencies_ms),
        "failed": len(failures),
        "p50_ms": cuts["p50"],
        "p99_ms": cuts["p99"],
        "max_ms": max(latencies_ms, default=None),
        "settle_ms": setup["settle_s"] * 1000,
        "p99_minus_settle_ms": cuts["p99"] - setup["settle_s"] * 1000,
        "first_failures": "; ".join(failures[:3]),
    }


def run_path(path: str, commands: int) -> dict:
    """One demo on `path`, measured; the row names the path."""
    load = common.load_average()
    with common.scratch_var_dir() as var_dir:
        extra = {"EVDASH_ADMIN_PASSWORD": common.ADMIN_PASSWORD}
        if path == "direct":
            extra["EVDASH_DEMO_DIRECT"] = "1"
        env = common.embedded_env(var_dir, **extra)
        port = common.free_port()
        log = var_dir / "demo.log"
        args = ["demo", "--charge-points", str(CHARGE_POINTS), "--port", str(port)]
        args += ["--kafka-port", str(common.free_port()), "--mqtt-port", str(common.free_port())]
        args += ["--modbus-base-port", str(common.free_port_range(CHARGE_POINTS + 1))]  # + the site meter
        demo = common.spawn_manage(args, env, log)
        try:
            common.wait_until(
                lambda: demo.poll() is not None or common.port_open(port), 180, "demo serving HTTP", interval_s=0.5
            )
            if demo.poll() is not None:
                raise RuntimeError(f"demo exited {demo.returncode}:\n{common.log_tail(log)}")
            out = common.run_manage(["shell", "-c", SETUP_CLIENT.format(user=CLIENT_USER, profile=PROFILE)], env)
            setup = json.loads(out.strip().splitlines()[-1])
            row = asyncio.run(measure(port, setup, commands))
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- demo log ---\n{common.log_tail(log)}") from exc
        finally:
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
    return {"path": path, "profile": PROFILE} | common.rounded(row) | {"load_1m": load[0]}


def run(quick: bool, paths: tuple[str, ...] = PATHS, commands: int | None = None) -> list[dict]:
    count = commands or (100 if quick else 200)
    return [run_path(path, count) for path in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=common.quick_default())
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--commands", type=int)
    options = parser.parse_args()
    rows = run(options.quick, tuple(options.paths.split(",")), options.commands)
    common.print_rows(TITLE, rows)


if __name__ == "__main__":
    main()
