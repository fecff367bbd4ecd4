"""Prometheus metrics of one server app, in a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Requests, latency, bytes in and out, errors by kind, memory in flight."""

    def __init__(self) -> None:
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
        self.in_flight = Gauge("activestorage_bytes_in_flight",
                               "bytes reserved by requests being served", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
