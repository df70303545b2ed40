"""Prometheus metrics of ``w2s serve`` (text format at ``GET /metrics``), one registry per app."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ENDPOINTS = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics")


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("w2s_requests", "HTTP requests by endpoint, w2s method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("w2s_request_latency_seconds", "time from request to the last byte sent",
                                 ["endpoint"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.first_chunk = Histogram("w2s_time_to_first_chunk_seconds", "streaming: time to the first text",
                                     ["method"], registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.tokens = Counter("w2s_generated_tokens", "tokens generated (large-model tokens of the answers)",
                              ["method"], registry=r)
        self.queue_depth = Gauge("w2s_queue_depth", "requests waiting for the worker", registry=r)
        self.batches = Counter("w2s_batches", "generate calls run by the worker", ["method"], registry=r)
        self.batch_prompts = Histogram("w2s_batch_prompts", "prompts per batch", ["method"], registry=r,
                                       buckets=(1, 2, 4, 8, 16, 32, 64))
        self.cancelled = Counter("w2s_cancelled_requests", "requests whose client went away: 'queued' ones "
                                 "were dropped, 'running' ones stopped their batch early", ["stage"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts every request and times it to its last byte (streams included).

    The handler names the w2s method in ``scope["w2s_method"]`` (and a streamed error's status in
    ``scope["w2s_status"]``).
    """

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            # a stream that ended with an error event counts with that error's status, not as its 200
            status = scope.get("w2s_status", status[0])
            self.metrics.requests.labels(endpoint=endpoint, method=scope.get("w2s_method", ""),
                                         status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)
