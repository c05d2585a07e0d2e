"""/healthz (process up), /readyz (database, indexes, model), /metrics (Prometheus; needs a key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ctxqa.api.deps import PrincipalDep, StateDep
from ctxqa.api.errors import ERRORS
from ctxqa.api.jsonbody import JSONRoute
from ctxqa.api.schemas import Health, Readiness
from ctxqa.api.state import AppState
from ctxqa.rag.db import repo

router = APIRouter(tags=["health"], route_class=JSONRoute)


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (no dependencies checked; no key needed)."""
    return Health()


def readiness(state: AppState) -> Readiness:
    checks: dict[str, bool] = {}
    detail: dict[str, str] = {}
    try:
        with state.services.db.session() as s:
            repo.ping(s)
            colls = [c for c, _, _ in repo.list_collections(s)]
        checks["database"] = True
    except Exception as e:  # noqa: BLE001
        checks["database"] = False
        detail["database"] = f"{type(e).__name__}: {str(e)[:200]}"
        colls = []
    try:
        _ = state.services.embedder
        for c in colls:
            state.services.store.get(c)  # cached after start-up: cheap; rebuilt here if another process wrote
        checks["index"] = checks["database"]
    except Exception as e:  # noqa: BLE001
        checks["index"] = False
        detail["index"] = f"{type(e).__name__}: {str(e)[:200]}"
    # The quote backend answers from the documents alone: no model to wait for.
    loaded = state.settings.llm_backend == "quote" or state.services.loaded_generator() is not None
    checks["model"] = loaded and state.queue is not None
    if not checks["model"]:
        detail["model"] = state.model_error or "the language model is not loaded"
    return Readiness(ready=all(checks.values()), checks=checks, detail=detail)


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness,
                                                                   "description": "Not ready"}})
def readyz(state: StateDep) -> Any:
    """Ready to serve: database reachable, every collection's index loaded, model loaded (no key needed)."""
    r = readiness(state)
    return JSONResponse(r.model_dump(), status_code=200 if r.ready else 503)


@router.get("/metrics", response_class=Response, responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"},
    401: ERRORS[401]})
def metrics(state: StateDep, principal: PrincipalDep) -> Response:
    """Prometheus metrics: requests and latency per route, tokens, queue depth, cancellations, ingestion."""
    if state.queue is not None:
        state.metrics.queue_depth.set(state.queue.depth)
        state.metrics.queue_active.set(state.queue.active)
    body, ctype = state.metrics.render()
    return Response(body, media_type=ctype)
