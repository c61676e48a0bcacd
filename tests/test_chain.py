"""End to end on the embedded default: SQLite, in-memory channel layer, the Tansu broker."""

import pytest
from django.conf import settings

from tests.chain import assert_decoded_correctly, value_arrives_on_websocket

pytestmark = pytest.mark.django_db(transaction=True)


async def test_value_set_on_a_charger_reaches_the_websocket(kafka, site, generic_profile) -> None:
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer"
    assert_decoded_correctly(await value_arrives_on_websocket(site, generic_profile))
