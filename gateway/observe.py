"""What a long-running process shows of itself: Prometheus metrics and readiness on its own port
(--metrics-port), and its row on the pipeline-health page.

The services hand over the parts they run (the poller, its publisher, the consumers, ...) in an
`Observed`; metrics, health and the pipeline page read counters those parts already keep. No part
learns about Prometheus or the page: the seam is this one call in each service.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.health.workers import readiness_for
from gateway.metrics.collectors import collectors_for
from gateway.metrics.server import start_metrics_server
from gateway.pipeline.reporter import report_status

logger = logging.getLogger(__name__)


@dataclass
class Observed:
    """One process as the observers see it.

    kind: "poller", "bridge" or "consumer" (models.StageKind); name: the poller id, the bridge's
    client id, the consumer group. parts, by kind:
      poller:   "poller" (modbus.poller.Poller), "publisher" (OutboxPublisher), "runner"
                (CommandRunner), "source" (the command source)
      bridge:   "bridge" (mqtt.bridge.Bridge), "commands" (mqtt.command_bridge.CommandBridge)
      consumer: "groups" (list[sinks.SinkGroup]), "results" (the results TelemetryConsumer),
                "alerts" (AlertEngine or None)
    """

    kind: str
    name: str
    parts: dict[str, Any] = field(default_factory=dict)
    metrics_port: int | None = None


@contextlib.asynccontextmanager
async def observing(observed: Observed, stop: asyncio.Event) -> AsyncIterator[None]:
    """Serve metrics and readiness (if a port is given) and report status while the body runs."""
    server = None
    if observed.metrics_port is not None:
        server = start_metrics_server(
            observed.metrics_port, collectors=collectors_for(observed), readiness=readiness_for(observed)
        )
    reporter = asyncio.create_task(report_status(observed, stop), name=f"{observed.kind}-status")
    try:
        yield
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        if server is not None:
            server.stop()
