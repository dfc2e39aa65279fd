"""The service's Prometheus metrics (``prometheus_client``), each app with its own ``CollectorRegistry``.

A registry per app keeps several apps in one process (tests, an embedding host) from sharing or clashing series.
``prometheus_client``'s ``*_created`` timestamp series are turned off: ``/metrics`` exposes exactly the names below.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "PROMETHEUS_CONTENT_TYPE", "ServiceMetrics"]

#: The media type of what ``generate_latest`` writes: the text exposition format, version 0.0.4.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency buckets in seconds (upper bounds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Batch-size buckets (queries per model/index call): exact up to 8, the usual number of concurrent clients.
BATCH_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128)

prometheus_client.disable_created_metrics()


class ServiceMetrics:
    """The service's metrics: requests, latency, errors, search batches, in ``self.registry``."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "probclip_http_requests_total", "HTTP requests answered, by method, route and status code.",
            ("method", "route", "status"), registry=self.registry)
        self.latency = Histogram(
            "probclip_http_request_duration_seconds", "Time to answer an HTTP request, in seconds, by route.",
            ("route",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter(
            "probclip_http_errors_total", "HTTP requests answered with a 4xx or 5xx status, by route and status.",
            ("route", "status"), registry=self.registry)
        self.search_queries = Counter(
            "probclip_search_queries_total", "Search queries run, by index and query kind.", ("index", "query"),
            registry=self.registry)
        self.batch_size = Histogram(
            "probclip_search_batch_size", "Queries grouped into one model/index call.", ("index",),
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram(
            "probclip_search_batch_seconds", "Time of one grouped model/index call, in seconds.", ("index",),
            buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe_batch(self, index_name: str, size: int, seconds: float) -> None:
        """Record one grouped model/index call (``SearchBatcher``'s ``on_batch``)."""
        self.batch_size.labels(index_name).observe(size)
        self.batch_seconds.labels(index_name).observe(seconds)

    def render(self) -> bytes:
        """Every metric in the Prometheus text exposition format (version 0.0.4)."""
        return generate_latest(self.registry)
