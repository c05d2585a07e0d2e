"""Prometheus metrics, one registry per app (so tests can run several apps in one process).

`MetricsMiddleware` is a pure ASGI middleware (no BaseHTTPMiddleware: that would buffer streamed responses) that
counts requests and their latency per *route template* ("/v1/documents/{doc_id}"), so ids never explode the
label space; unmatched paths are counted under "unmatched".
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_STATIC_PATHS = frozenset({"/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("ctxqa_http_requests", "HTTP requests by route, method and status code.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("ctxqa_http_request_duration_seconds",
                                 "Time from request start to the end of the response, by route.",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("ctxqa_http_requests_in_flight", "Requests being served now.", registry=r)
        self.tokens_generated = Counter("ctxqa_tokens_generated", "Completion tokens sampled by the model.",
                                        registry=r)
        self.prompt_tokens = Counter("ctxqa_prompt_tokens", "Prompt tokens fed to the model.", registry=r)
        self.answers = Counter("ctxqa_answers", "Answers produced, by outcome.", ["outcome"], registry=r)
        self.grounding = Counter("ctxqa_answer_grounding", "Answers by verdict: supported, partial, unsupported, "
                                 "abstained.", ["grounding"], registry=r)
        self.queue_depth = Gauge("ctxqa_generation_queue_depth", "Generation jobs waiting for a worker.",
                                 registry=r)
        self.queue_active = Gauge("ctxqa_generation_active", "Generation jobs running now.", registry=r)
        self.queue_capacity = Gauge("ctxqa_generation_queue_capacity", "Maximum waiting generation jobs.",
                                    registry=r)
        self.queue_workers = Gauge("ctxqa_generation_workers", "Generation jobs that may run at once.",
                                   registry=r)
        self.rejected = Counter("ctxqa_generation_rejected", "Generation jobs refused because the queue was full.",
                                registry=r)
        self.cancelled = Counter("ctxqa_generation_cancelled",
                                 "Generation jobs cancelled (client disconnected) before they finished.",
                                 registry=r)
        self.generation_seconds = Histogram("ctxqa_generation_duration_seconds",
                                            "Worker time per generation job (retrieval included).",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("ctxqa_generation_queue_wait_seconds",
                                    "Time a generation job waited for a worker.", buckets=LATENCY_BUCKETS,
                                    registry=r)
        self.ingest_files = Counter("ctxqa_ingest_files", "Uploaded files by ingestion result.", ["status"],
                                    registry=r)
        self.ingest_chunks = Counter("ctxqa_ingest_chunks", "Chunks stored by uploads.", registry=r)
        self.ingest_bytes = Counter("ctxqa_ingest_bytes", "Bytes received in uploaded files.", registry=r)
        self.ingest_seconds = Histogram("ctxqa_ingest_duration_seconds", "Ingestion time per upload request.",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.auth_failures = Counter("ctxqa_auth_failures", "Requests refused for a missing or bad key.",
                                     registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                scope.get("path") if scope.get("path") in _STATIC_PATHS else "unmatched")
            method = scope.get("method", "GET")
            self.metrics.requests.labels(template, method, str(status["code"])).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - start)
