"""End to end on production settings: PostgreSQL and the Redis channel layer (`make test` sets them)."""

import pytest
from django.conf import settings
from django.core.management import call_command

from tests.chain import assert_decoded_correctly, value_arrives_on_websocket

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]


def test_settings_are_production() -> None:
    # Fails loudly (never skips) if `make test` did not pass the production environment.
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert not settings.DEBUG


async def test_value_set_on_a_charger_reaches_the_websocket(kafka, site, generic_profile) -> None:
    assert_decoded_correctly(await value_arrives_on_websocket(site, generic_profile))


def test_check_deploy_is_clean(capsys) -> None:
    call_command("check", "--deploy", "--fail-level", "WARNING")
    assert "no issues" in capsys.readouterr().out
