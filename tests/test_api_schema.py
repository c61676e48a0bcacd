"""The OpenAPI schema validates, and its docs pages load only our own static files (air-gapped, CSP)."""

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
import yaml
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from tests.browser import launch_chromium

API = "/api/v1/"
FLEET_PATHS = {
    "/api/v1/sites/",
    "/api/v1/sites/{slug}/",
    "/api/v1/profiles/",
    "/api/v1/profiles/{slug}/",
    "/api/v1/charge-points/",
    "/api/v1/charge-points/{slug}/",
    "/api/v1/telemetry/latest/",
    "/api/v1/charge-points/{slug}/telemetry/latest/",
}


class References(HTMLParser):
    """Every URL a page makes the browser load (scripts, styles, icons, images), and inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name) and (tag != "a"):
                self.urls.append(attributes[name] or "")
        self._in_script = tag == "script" and not attributes.get("src")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def test_the_schema_validates_without_warnings(tmp_path) -> None:
    # The same check CI can run: `manage.py spectacular --validate --fail-on-warn`, over every lane's views.
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    schema = yaml.safe_load(target.read_text())
    assert set(schema["paths"]) >= FLEET_PATHS
    assert schema["components"]["securitySchemes"]["apiToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["apiToken"]["description"],
    }
    charge_points = schema["paths"]["/api/v1/charge-points/"]
    assert set(charge_points) == {"get", "post"}
    assert set(schema["paths"]["/api/v1/charge-points/{slug}/"]) == {"get", "patch", "delete"}
    assert {p["name"] for p in charge_points["get"]["parameters"]} >= {"cursor", "limit", "site", "enabled"}
    assert {"apiToken": []} in charge_points["post"]["security"]


@pytest.mark.django_db
def test_the_schema_is_served(admin_client) -> None:
    response = admin_client.get(API + "schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert response.status_code == 200
    assert set(response.json()["paths"]) >= FLEET_PATHS


@pytest.mark.django_db
def test_the_schema_and_its_docs_need_a_token_or_a_login(client) -> None:
    for page in ("schema/", "docs/"):
        response = client.get(API + page)
        assert response.status_code == 401, page
        assert response["WWW-Authenticate"].startswith("Bearer"), page


def fetched_references(client: Client, page_url: str) -> tuple[References, dict[str, bytes]]:
    """A page's references and each one's body, fetched through the same client (static files too)."""
    response = client.get(page_url)
    assert response.status_code == 200
    references = References()
    references.feed(response.content.decode())
    bodies = {}
    for url in references.urls:
        absolute = urljoin(page_url, url)
        fetched = client.get(absolute)
        assert fetched.status_code == 200, absolute
        bodies[absolute] = b"".join(fetched) if fetched.streaming else fetched.content
    return references, bodies


@pytest.mark.django_db
def test_the_docs_load_only_our_own_files(admin_client) -> None:
    page = "docs/"
    references, bodies = fetched_references(admin_client, API + page)
    assert references.inline_scripts == []  # the CSP would block them
    assert references.urls
    for url in bodies:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url  # nothing from a CDN
        assert parts.path.startswith(("/static/", API + page)), url
    # Our start-up script (Swagger's split view) names no other origin. (The vendor bundles mention
    # some, e.g. Swagger's online validator, unused in the layout we run: the browser test watches.)
    for url, body in bodies.items():
        if url.endswith("?script="):
            assert not re.search(rb"https?://", body), url


@pytest.fixture
def docs_page(live_server) -> Iterator:
    """Chromium with a logged-in session, recording every request it makes and every complaint."""
    from playwright.sync_api import sync_playwright

    logged_in = Client()
    logged_in.force_login(get_user_model().objects.create_user("integrator"))
    session = logged_in.cookies[settings.SESSION_COOKIE_NAME].value
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context()
        context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}])
        page = context.new_page()
        page.requests = []  # type: ignore[attr-defined]
        page.complaints = []  # type: ignore[attr-defined]
        page.on("request", lambda request: page.requests.append(request.url))
        page.on("pageerror", lambda exc: page.complaints.append(str(exc)))
        page.on(
            "console",
            lambda message: page.complaints.append(message.text) if message.type == "error" else None,
        )
        yield page
        browser.close()


def foreign_requests(page, live_server) -> list[str]:
    return [url for url in page.requests if not url.startswith((live_server.url, "data:", "blob:"))]


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_swagger_ui_draws_the_api_under_the_csp_from_our_own_files(docs_page, live_server) -> None:
    docs_page.goto(live_server.url + API + "docs/")
    docs_page.wait_for_selector("text=/api/v1/telemetry/latest/", timeout=15_000)
    assert docs_page.locator(".opblock").count() >= len(FLEET_PATHS)
    assert docs_page.locator("button.authorize").count() == 1  # the bearer token scheme
    assert docs_page.complaints == []
    assert foreign_requests(docs_page, live_server) == []
