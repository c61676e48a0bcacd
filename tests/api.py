"""Shared by the API tests: a fresh rate-limit count per test, and the token header."""

from collections.abc import Iterator

import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def fresh_throttle() -> Iterator[None]:
    """Rate-limit counters live in the cache; token ids repeat across rolled-back tests."""
    cache.clear()
    yield
    cache.clear()


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}
