"""Prometheus metrics of one server app, in a registry of its own (no process-global state).

With ``--workers N`` every worker process records into files in one directory per server
(prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR``, made and removed by
:func:`.serve.run`), and ``/metrics`` and the status page of any worker show the sum over all of
them: one view of the server, whichever worker a scrape reaches.
"""

from __future__ import annotations

import os
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: the environment variable prometheus_client reads (at import) to record into shared files
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Requests, latency, bytes in and out, errors by kind, memory in flight.

    ``multiprocess_dir``: the directory the worker processes of one server share (default: the
    ``PROMETHEUS_MULTIPROC_DIR`` environment variable, which must be set before
    prometheus_client is first imported); None: this process alone."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir or os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("activestorage_requests", "HTTP requests served",
                                ["api", "operation", "status"], registry=r)
        self.latency = Histogram(
            "activestorage_request_seconds", "request latency", ["api", "operation"], registry=r,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.bytes_in = Counter("activestorage_upstream_bytes",
                                "bytes read from upstream stores", registry=r)
        self.upstream_requests = Counter("activestorage_upstream_requests",
                                         "range GETs sent to upstream stores", registry=r)
        self.bytes_out = Counter("activestorage_response_bytes", "response body bytes sent",
                                 registry=r)
        self.reduction_bytes_out = Counter(
            "activestorage_reduction_response_bytes",
            "response body bytes sent by the reduction routes (v1, v2, batch)", registry=r)
        self.errors = Counter("activestorage_errors", "error responses by kind", ["kind"],
                              registry=r)
        # the sum over the live worker processes (one process: its value)
        self.in_flight = Gauge("activestorage_bytes_in_flight",
                               "bytes reserved by requests being served", registry=r,
                               multiprocess_mode="livesum")
        self._view = r
        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            self._view = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._view, path=self.multiprocess_dir)

    def close(self) -> None:
        """At a worker's exit: drop its share of the live-summed gauges (in-flight bytes) from
        the shared view; its counters stay counted."""
        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    def collect(self) -> Iterator[Metric]:
        """The metrics as every worker of this server together has them."""
        return self._view.collect()

    def render(self) -> bytes:
        return generate_latest(self._view)
