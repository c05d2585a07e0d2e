"""POST /v1/search: retrieval only — the hits the answer pipeline would see, with scores and metadata."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ctxqa.api.deps import PrincipalDep, StateDep
from ctxqa.api.errors import ERRORS, library_error
from ctxqa.api.jsonbody import JSONRoute
from ctxqa.api.schemas import SearchRequest
from ctxqa.api.validation import check_question, check_top_k, resolve_collection
from ctxqa.rag.views import HitView, SearchView

log = logging.getLogger("ctxqa.api")
router = APIRouter(tags=["search"], route_class=JSONRoute)


@router.post("/v1/search", response_model=SearchView, responses={
    k: v for k, v in ERRORS.items() if k != 503})
async def search(body: SearchRequest, state: StateDep, principal: PrincipalDep) -> SearchView:
    """Search a collection: ranked chunks with scores, source, pages and document metadata."""
    settings = state.settings
    check_question(body.query, settings, "query")
    check_top_k(body.top_k, settings)
    coll = resolve_collection(body.collection, settings, principal)
    retriever = state.services.retriever
    k = body.top_k or settings.top_k
    try:
        res = await run_in_threadpool(lambda: retriever.search(body.query, collection=coll, k=k, mode=body.mode,
                                                               filters=body.filters))
    except Exception as exc:
        err = library_error(exc, "query")
        if err.code == "internal_error":
            log.error("search failed", exc_info=exc)
        raise err from None
    return SearchView(query=body.query, collection=coll, hits=[HitView.from_hit(h) for h in res.hits],
                          timings={k_: round(float(v), 6) for k_, v in res.timings.items()})
