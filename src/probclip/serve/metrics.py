"""A small thread-safe metrics registry that renders the Prometheus text exposition format (version 0.0.4).

Only what the service needs: counters and histograms with labels. Series are created on first use.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence

__all__ = ["Counter", "Histogram", "MetricsRegistry", "ServiceMetrics", "PROMETHEUS_CONTENT_TYPE"]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency buckets in seconds (upper bounds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Batch-size buckets (queries per model/index call): exact up to 8, the usual number of concurrent clients.
BATCH_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0) to the series of ``label_values``."""
        if amount < 0:
            raise ValueError(f"a counter only goes up; got amount {amount}")
        key = tuple(str(v) for v in label_values)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *label_values: str) -> float:
        """The current count of one series (0 when never incremented)."""
        with self._lock:
            return self._values.get(tuple(str(v) for v in label_values), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels_text(self.labels, k)} {_number(v)}" for k, v in items]


class Histogram:
    """Observations counted into cumulative buckets, with their sum and count, per label set."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS):
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., +Inf count, sum
        self._lock = threading.Lock()

    def observe(self, value: float, *label_values: str) -> None:
        """Record one observation ``value`` in the series of ``label_values``."""
        key = tuple(str(v) for v in label_values)
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            series[index] += 1  # index == len(buckets) is the +Inf-only slot
            series[-1] += value

    def count(self, *label_values: str) -> int:
        """How many observations one series holds."""
        with self._lock:
            series = self._series.get(tuple(str(v) for v in label_values))
            return 0 if series is None else int(sum(series[:-1]))

    def render(self) -> list[str]:
        lines = []
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for key, series in items:
            cumulative = 0.0
            for bound, n in zip(self.buckets + (math.inf,), series[:-1], strict=True):
                cumulative += n
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels_text(self.labels, key, le)} {_number(cumulative)}")
            lines.append(f"{self.name}_sum{_labels_text(self.labels, key)} {_number(series[-1])}")
            lines.append(f"{self.name}_count{_labels_text(self.labels, key)} {_number(cumulative)}")
        return lines


class MetricsRegistry:
    """Holds metrics and renders them all as Prometheus text."""

    def __init__(self):
        self._metrics: list[Counter | Histogram] = []

    def register(self, metric: Counter | Histogram) -> Counter | Histogram:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"a metric named {metric.name!r} is already registered")
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format, ending with a newline."""
        lines = []
        for metric in self._metrics:
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


class ServiceMetrics:
    """The service's metrics: requests, latency, errors, search batches."""

    def __init__(self):
        self.registry = MetricsRegistry()
        self.requests = self.registry.register(Counter(
            "probclip_http_requests_total", "HTTP requests answered, by method, route and status code.",
            ("method", "route", "status")))
        self.latency = self.registry.register(Histogram(
            "probclip_http_request_duration_seconds", "Time to answer an HTTP request, in seconds, by route.",
            ("route",)))
        self.errors = self.registry.register(Counter(
            "probclip_http_errors_total", "HTTP requests answered with a 4xx or 5xx status, by route and status.",
            ("route", "status")))
        self.search_queries = self.registry.register(Counter(
            "probclip_search_queries_total", "Search queries run, by index and query kind.", ("index", "query")))
        self.batch_size = self.registry.register(Histogram(
            "probclip_search_batch_size", "Queries grouped into one model/index call.", ("index",),
            buckets=BATCH_BUCKETS))
        self.batch_seconds = self.registry.register(Histogram(
            "probclip_search_batch_seconds", "Time of one grouped model/index call, in seconds.", ("index",)))

    def render(self) -> str:
        return self.registry.render()
