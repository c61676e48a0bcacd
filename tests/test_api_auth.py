"""API tokens: issued in the admin and shown once, stored hashed, revoked and expired; rate limits per token."""

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from gateway.models import ApiToken
from gateway.models.tokens import digest_of
from tests.api import bearer, fresh_throttle  # noqa: F401 (fresh_throttle: an autouse fixture)

pytestmark = pytest.mark.django_db
SITES = "/api/v1/sites/"
TOKEN_IN_MESSAGE = re.compile(r"is (evd_[A-Za-z0-9_-]{43})")


def staff_with_token_permissions(username: str) -> User:
    user = User.objects.create_user(username, password="unused-password-1", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__model="apitoken"))
    return user


def issue_in_admin(client: Client, user: User, name: str = "billing export", **extra: object):
    return client.post(reverse("admin:gateway_apitoken_add"), {"user": user.pk, "name": name, **extra}, follow=True)


def test_the_admin_shows_a_new_token_once_and_stores_only_its_hash(admin_client, admin_user) -> None:
    response = issue_in_admin(admin_client, admin_user)
    assert response.status_code == 200
    shown = TOKEN_IN_MESSAGE.search(response.content.decode())
    assert shown, response.content.decode()
    raw = shown.group(1)
    token = ApiToken.objects.get()
    assert (token.user, token.name, token.prefix) == (admin_user, "billing export", raw[:12])
    assert token.digest == digest_of(raw) and raw not in token.digest
    # It works, and nothing shows it (or its digest) again: not the list, not the token's page.
    assert admin_client.get(SITES, headers=bearer(raw)).status_code == 200
    for url in (
        reverse("admin:gateway_apitoken_changelist"),
        reverse("admin:gateway_apitoken_change", args=[token.pk]),
    ):
        page = admin_client.get(url).content.decode()
        assert token.prefix in page
        assert raw not in page and token.digest not in page


def test_an_expiry_in_the_past_is_refused(admin_client, admin_user) -> None:
    response = issue_in_admin(admin_client, admin_user, expires_at_0="2001-01-01", expires_at_1="00:00:00")
    assert "The expiry must be in the future." in response.content.decode()
    assert not ApiToken.objects.exists()


def test_staff_issue_and_see_only_their_own_tokens(client, admin_user) -> None:
    staff = staff_with_token_permissions("ops")
    theirs, _ = ApiToken.issue(admin_user, "admin's")
    client.force_login(staff)
    # A token for an administrator would carry the administrator's permissions: refused.
    refused = issue_in_admin(client, admin_user)
    assert "Select a valid choice" in refused.content.decode()
    assert not ApiToken.objects.filter(user=admin_user, name="billing export").exists()
    assert TOKEN_IN_MESSAGE.search(issue_in_admin(client, staff).content.decode())
    listed = client.get(reverse("admin:gateway_apitoken_changelist")).content.decode()
    assert "billing export" in listed and theirs.prefix not in listed
    assert client.get(reverse("admin:gateway_apitoken_change", args=[theirs.pk])).status_code == 302  # not found


def test_the_revoke_action_ends_a_token(admin_client, admin_user) -> None:
    token, raw = ApiToken.issue(admin_user, "grafana")
    _, kept_raw = ApiToken.issue(admin_user, "billing")
    assert admin_client.get(SITES, headers=bearer(raw)).status_code == 200
    response = admin_client.post(
        reverse("admin:gateway_apitoken_changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
        follow=True,
    )
    assert "Revoked 1 token(s)." in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None
    client = Client()
    refused = client.get(SITES, headers=bearer(raw))
    assert refused.status_code == 401
    assert refused.json()["error"] == {
        "status": 401,
        "code": "authentication_failed",
        "message": "Token revoked or expired.",
    }
    assert client.get(SITES, headers=bearer(kept_raw)).status_code == 200


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "Invalid token."),
        ("expired", "Token revoked or expired."),
        ("revoked", "Token revoked or expired."),
        ("inactive user", "User inactive."),
    ],
)
def test_a_token_that_is_not_valid_is_a_401(client, admin_user, case, message) -> None:
    token, raw = ApiToken.issue(admin_user, "x", expires_at=timezone.now() + timedelta(days=1))
    if case == "unknown":
        raw = raw[:-2] + ("AA" if not raw.endswith("AA") else "BB")
    elif case == "expired":
        ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    elif case == "revoked":
        token.revoke()
    else:
        User.objects.filter(pk=admin_user.pk).update(is_active=False)
    response = client.get(SITES, headers=bearer(raw))
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.json()["error"]["message"] == message


def test_other_schemes_and_no_credentials_are_a_401(client) -> None:
    for headers in ({}, {"Authorization": "Basic YWRtaW46YWRtaW4="}, {"Authorization": "Bearer"}):
        response = client.get(SITES, headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "not_authenticated"


def test_use_is_recorded_at_most_once_a_minute(client, admin_user) -> None:
    token, raw = ApiToken.issue(admin_user, "x")
    assert token.last_used_at is None
    client.get(SITES, headers=bearer(raw))
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    client.get(SITES, headers=bearer(raw))
    token.refresh_from_db()
    assert token.last_used_at == first  # not a write per request


def test_the_rate_limit_is_per_token(client, admin_user, monkeypatch) -> None:
    monkeypatch.setitem(settings.EVDASH, "API_RATE_LIMIT", "3/minute")
    _, busy = ApiToken.issue(admin_user, "busy integration")
    _, other = ApiToken.issue(admin_user, "another integration")
    for _ in range(3):
        assert client.get(SITES, headers=bearer(busy)).status_code == 200
    throttled = client.get(SITES, headers=bearer(busy))
    assert throttled.status_code == 429
    assert 0 < int(throttled["Retry-After"]) <= 60
    assert throttled.json()["error"]["code"] == "throttled"
    # The same user's other token has a budget of its own, and so does their browser session.
    assert client.get(SITES, headers=bearer(other)).status_code == 200
    client.force_login(admin_user)
    assert client.get(SITES).status_code == 200
