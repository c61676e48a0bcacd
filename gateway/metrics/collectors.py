"""The collectors of one long-running process, by its kind (gateway.observe.Observed)."""

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.metrics.bridge import BridgeCollector
from gateway.metrics.consumer import ConsumerCollector
from gateway.metrics.poller import PollerCollector
from gateway.metrics.sitecontrol import SiteControlCollector

if TYPE_CHECKING:  # gateway.observe imports this module
    from gateway.observe import Observed


class WorkerInfo:
    """evdash_worker_info{kind, name} 1: which worker a scrape reached (join other series on it)."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("evdash_worker_info", "The worker: its kind and name.", labels=["kind", "name"])
        family.add_metric([self.kind, self.name], 1)
        yield family


def collectors_for(observed: "Observed") -> list[Collector]:
    """The collectors that expose `observed`'s counters at scrape time (the consumer's attach their
    batch observers now, so call this before the consumers run)."""
    parts = observed.parts
    collectors: list[Collector] = [WorkerInfo(observed.kind, observed.name)]
    if observed.kind == "poller":
        collectors.append(
            PollerCollector(parts["poller"], parts.get("publisher"), parts.get("runner"), parts.get("source"))
        )
        if parts.get("site_control") is not None:
            collectors.append(SiteControlCollector(parts["site_control"]))
    elif observed.kind == "bridge":
        collectors.append(BridgeCollector(parts["bridge"], parts.get("commands")))
    elif observed.kind == "consumer":
        collectors.append(
            ConsumerCollector(
                parts.get("groups", ()), parts.get("results"), parts.get("alerts"), site_status=parts.get("site_status")
            )
        )
    else:
        raise ValueError(f"no metrics for a process of kind {observed.kind!r}")
    return collectors
