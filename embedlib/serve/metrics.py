"""Metrics of a served application, through Ray's own (`ray.util.metrics`).

Each gateway replica counts its requests (`embedlib_requests_total`: route, collection,
status) and times them (`embedlib_request_seconds`, a histogram); the application's
keeper counts writes and version switches (`embedlib_version_events_total`: event).
Ray's metrics agent on each node exports them, prefixed `ray_` and labelled with the
replica's worker, beside Ray Serve's own metrics: a Prometheus scraping every node (Ray
writes the nodes' endpoints to its service-discovery file) sees each request once,
whichever replica answered, and sums or aggregates buckets across replicas. `GET
/metrics` answers the same series gathered from every node, for a look without
Prometheus (README "Metrics").
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from typing import Any

PREFIX = "ray_embedlib_"  # what Ray's exporter calls our metrics
# request latency buckets (seconds): sub-millisecond searches to slow embeddings calls
SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0]  # fmt: skip
SCRAPE_TIMEOUT_S = 5.0


class RequestMetrics:
    """A gateway replica's request counts and latencies."""

    def __init__(self, app: str) -> None:
        from ray.util.metrics import Counter, Histogram

        self.requests = Counter(
            "embedlib_requests",
            description="Requests by application, route, collection and status.",
            tag_keys=("app", "route", "collection", "status"),
        )
        self.seconds = Histogram(
            "embedlib_request_seconds",
            description="Time spent answering requests, by application, route and collection.",
            boundaries=SECONDS_BUCKETS,
            tag_keys=("app", "route", "collection"),
        )
        self.requests.set_default_tags({"app": app})
        self.seconds.set_default_tags({"app": app})

    def observe(self, route: str, collection: str, status: int, seconds: float) -> None:
        tags = {"route": route, "collection": collection}
        self.requests.inc(1.0, tags={**tags, "status": str(status)})
        self.seconds.observe(seconds, tags=tags)


class VersionEvents:
    """The keeper's counts of writes and version switches (done, failed, ...)."""

    def __init__(self, keeper: str) -> None:
        from ray.util.metrics import Counter

        self.events = Counter(
            "embedlib_version_events",
            description="Writes and version switches of the application, by its keeper.",
            tag_keys=("keeper", "event"),
        )
        self.events.set_default_tags({"keeper": keeper})

    def count(self, event: str) -> None:
        self.events.inc(1.0, tags={"event": event})


def metrics_endpoints(nodes: Iterable[dict[str, Any]]) -> list[str]:
    """The metrics endpoint of each alive node (`ray.nodes()`)."""
    return [
        f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
        for n in nodes
        if n.get("Alive") and n.get("MetricsExportPort")
    ]


def scrape(endpoints: Iterable[str], prefix: str = PREFIX) -> str:
    """The metric families named `prefix...` of every endpoint, merged family by family
    in Prometheus' text format (each family's HELP and TYPE once, then its samples from
    every node). A node that does not answer is left out, and said so in a comment."""
    families: dict[str, list[str]] = {}  # name -> HELP, TYPE, samples
    notes: list[str] = []
    for url in endpoints:
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
                text = response.read().decode("utf-8", "replace")
        except OSError as e:
            notes.append(f"# {url} did not answer: {e}")
            continue
        family: str | None = None
        for line in text.splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                family = line.split(" ", 3)[2]
                if family.startswith(prefix):
                    lines = families.setdefault(family, [])
                    if line not in lines:
                        lines.insert(sum(x.startswith("#") for x in lines), line)
            elif family is not None and family.startswith(prefix) and line.startswith(family):
                families[family].append(line)
    return "\n".join([*notes, *(x for lines in families.values() for x in lines)]) + "\n"
