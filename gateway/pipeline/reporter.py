"""Each process writes its StageStatus row (stub: the pipeline lane fills it in)."""

import asyncio
from typing import Any


async def report_status(observed: Any, stop: asyncio.Event) -> None:
    """Write `observed`'s status row every few seconds until stop is set or cancelled."""
    await stop.wait()
