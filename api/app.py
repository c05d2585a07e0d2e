"""The FastAPI application: `create_app(services)`.

The API is handed the process's services (`ctxqa.context.Context`, built by the wiring above this layer: the
`ctxqa serve` command or `ctxqa.server:factory`). The lifespan loads everything heavy before the first request: the
embedder, every collection's index, and the language model; then it starts the generation queue. Loading the
model may fail (backend not installed, file missing): the server still starts, /readyz says why, and /v1/ask
answers 503 until a restart with a working model.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from ctxqa.api.errors import install_error_handlers
from ctxqa.api.metrics import Metrics, MetricsMiddleware
from ctxqa.api.page_cache import ByteLRU
from ctxqa.api.queue import GenerationQueue
from ctxqa.api.routes import all_routers
from ctxqa.api.routes.web import static_files
from ctxqa.api.state import AppState, Services
from ctxqa.rag.config import Settings
from ctxqa.rag.db import repo

log = logging.getLogger("ctxqa.api")

API_VERSION = "1"

DESCRIPTION = """Citation-backed answers over your own documents.

Every route except `/healthz` and `/readyz` needs `Authorization: Bearer <key>` (create keys with
`ctxqa keys create`). Errors are JSON: `{"error": {"code", "message", "field", "fields"}}`.
"""

def _limit(prop: dict[str, Any] | None, *, maximum: int | None = None, max_length: int | None = None,
           max_items: int | None = None) -> None:
    """Set a limit on a property schema (or on the matching variants of its anyOf)."""
    if not prop:
        return
    for v in prop.get("anyOf", [prop]):
        kind = v.get("type")
        if maximum is not None and kind in ("integer", "number"):
            v["maximum"] = maximum
        if max_length is not None and kind == "string":
            v["maxLength"] = max_length
            v.setdefault("minLength", 1)
        if kind == "array":
            if max_items is not None:
                v["maxItems"] = max_items
                v.setdefault("minItems", 1)
            if max_length is not None and isinstance(v.get("items"), dict):
                _limit(v["items"], max_length=max_length)


def apply_limits(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Publish the configured input limits in the OpenAPI schema (the handlers enforce them either way)."""
    from ctxqa.api.schemas import MAX_QUESTIONS

    schemas = spec.get("components", {}).get("schemas", {})

    def props(name: str) -> dict[str, Any]:
        return schemas.get(name, {}).get("properties", {})

    _limit(props("AskRequest").get("question"), max_length=settings.max_question_chars, max_items=MAX_QUESTIONS)
    _limit(props("SearchRequest").get("query"), max_length=settings.max_question_chars)
    for model in ("AskRequest", "SearchRequest", "ChatRequest"):
        _limit(props(model).get("top_k"), maximum=settings.max_top_k)
    _limit(props("AskRequest").get("max_new_tokens"), maximum=settings.max_new_tokens_limit)
    for key in ("max_tokens", "max_completion_tokens"):
        _limit(props("ChatRequest").get(key), maximum=settings.max_new_tokens_limit)
    messages = props("ChatRequest").get("messages")
    if messages is not None:  # the last user message is the question: there must be one
        messages["contains"] = {"type": "object", "required": ["role", "content"], "properties": {
            "role": {"const": "user"},
            "content": {"type": "string", "minLength": 1, "maxLength": settings.max_question_chars}}}
    upload = (spec.get("paths", {}).get("/v1/documents", {}).get("post", {}).get("requestBody", {})
              .get("content", {}).get("multipart/form-data", {}).get("schema", {}).get("properties", {}))
    if "files" in upload:
        upload["files"]["maxItems"] = settings.max_files_per_upload
        upload["files"]["minItems"] = 1
        upload["files"]["description"] += (f" At most {settings.max_files_per_upload} files of "
                                           f"{settings.max_upload_bytes} bytes each.")
    return spec


def _banner(lines: list[str]) -> str:
    width = max(len(s) for s in lines) + 4
    bar = "!" * width
    return "\n".join([bar, *[f"! {s.ljust(width - 4)} !" for s in lines], bar])


def warn_auth_disabled(settings: Settings) -> None:
    msg = _banner([
        "WARNING: AUTHENTICATION IS DISABLED (auth_disabled=true / CTXQA_AUTH_DISABLED=1)",
        f"Anyone who can reach {settings.host}:{settings.port} can read, change and delete every",
        "collection. Use this only for local development; never expose this server.",
    ])
    print(msg, file=sys.stderr, flush=True)


def _load(state: AppState) -> None:
    """Load the heavy parts (in a worker thread, so start-up never blocks the loop)."""
    ctx = state.services
    _ = ctx.embedder
    _ = ctx.ingestor
    _ = ctx.retriever
    try:
        with ctx.db.session() as s:
            colls = [c for c, _, _ in repo.list_collections(s)]
        for c in colls:
            ctx.store.get(c, on_rebuild=lambda name: log.warning("index of %r was stale: rebuilding", name))
        state.index_error = None
    except Exception as e:  # noqa: BLE001 - reported by /readyz
        state.index_error = f"{type(e).__name__}: {e}"
        log.error("could not load the indexes: %s", state.index_error)
    if state.settings.llm_backend == "quote":
        state.model_error = None
        log.info("no language model: llm_backend=quote answers with quotes from the documents")
        return
    try:
        gen = ctx.generator
        state.model_error = None
        log.info("model loaded: %s (context %d)", getattr(gen, "name", "?"), getattr(gen, "context_length", 0))
    except Exception as e:  # noqa: BLE001 - reported by /readyz; /v1/ask answers 503
        state.model_error = f"{type(e).__name__}: {e}"
        log.error("could not load the language model: %s", state.model_error)


def create_app(services: Services, *, load_model: bool = True, owns_services: bool = False) -> FastAPI:
    """Build the app over `services`. With `owns_services` the app closes them at shutdown (the server
    factory's case); otherwise the caller keeps them (tests that share loaded parts)."""
    settings = services.settings
    metrics = Metrics()
    state = AppState(settings=settings, services=services, metrics=metrics,
                     page_images=ByteLRU(settings.page_cache_mb * 1024 * 1024))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auth_disabled:
            warn_auth_disabled(settings)
        if load_model:
            await run_in_threadpool(_load, state)
        gen = services.loaded_generator()
        workers = gen.max_concurrency if gen is not None else 1
        state.queue = GenerationQueue(settings.queue_size, workers=workers, metrics=metrics)
        log.info("ctxqa API ready: %d generation worker(s), queue of %d", workers, settings.queue_size)
        try:
            yield
        finally:
            q, state.queue = state.queue, None
            if q is not None:
                await run_in_threadpool(q.close)
            if owns_services:
                services.close()

    app = FastAPI(title="ctxqa", version=f"{API_VERSION}.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs", redoc_url="/redoc", openapi_url="/openapi.json")
    app.state.ctxqa = state
    install_error_handlers(app)
    for router in all_routers():
        app.include_router(router)
    app.mount("/static", static_files(), name="static")  # the web page's modules and styles (api/routes/web.py)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = apply_limits(FastAPI.openapi(app), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
