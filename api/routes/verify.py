"""POST /v1/verify: check any answer, sentence by sentence, with the scorer the answer pipeline uses.

Against given passages (`{"answer", "passages": [...]}`) or against what a question retrieves from a collection
(`{"answer", "question", "collection"}`, with the same auth and collection scoping as /v1/ask). It runs on the
CPU beside the generation queue, never in it.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ctxqa.api.deps import PrincipalDep, StateDep
from ctxqa.api.errors import ERRORS, ApiError, bad_input, library_error
from ctxqa.api.jsonbody import JSONRoute
from ctxqa.api.schemas import VerifyRequest, VerifyResponse
from ctxqa.api.validation import check_question, check_top_k, resolve_collection
from ctxqa.rag.answer import AskOptions
from ctxqa.rag.views import HitView, SentenceView

log = logging.getLogger("ctxqa.api")
router = APIRouter(tags=["verify"], route_class=JSONRoute)


def too_large(field: str, n: int, limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"{field}: is {n} characters long; the limit is {limit} "
                                               f"(max_verify_chars)", field=field)


@router.post("/v1/verify", response_model=VerifyResponse, responses={
    k: v for k, v in ERRORS.items() if k != 503})
async def verify(body: VerifyRequest, state: StateDep, principal: PrincipalDep) -> VerifyResponse:
    """Label every sentence of an answer (supported / partial / unsupported / neutral), with its evidence."""
    s = state.settings
    if not body.answer.strip():
        raise bad_input("answer", "must not be empty")
    if len(body.answer) > s.max_verify_chars:
        raise too_large("answer", len(body.answer), s.max_verify_chars)
    if "\x00" in body.answer:
        raise bad_input("answer", "must not contain NUL characters")
    if (body.passages is None) == (body.question is None):
        raise bad_input("passages", "give either passages to check against, or a question (and a collection) "
                                    "whose retrieved passages to check against")
    opts = None
    if body.passages is not None:
        if not body.passages or not any(p.strip() for p in body.passages):
            raise bad_input("passages", "give at least one non-empty passage")
        for i, p in enumerate(body.passages):
            if len(p) > s.max_verify_chars:
                raise too_large(f"passages.{i}", len(p), s.max_verify_chars)
            if "\x00" in p:
                raise bad_input(f"passages.{i}", "must not contain NUL characters")
    else:
        assert body.question is not None
        check_question(body.question, s, "question")
        check_top_k(body.top_k, s)
        opts = AskOptions(collection=resolve_collection(body.collection, s, principal), k=body.top_k,
                          filters=body.filters)
    answerer = state.services.answerer
    try:
        check, hits = await run_in_threadpool(
            lambda: answerer.verify(body.answer, passages=body.passages, question=body.question, opts=opts))
    except Exception as exc:
        err = library_error(exc, "answer")
        if err.code == "internal_error":
            log.error("verify failed", exc_info=exc)
        raise err from None
    return VerifyResponse(grounding=check.grounding, sentences=[SentenceView.from_check(c) for c in check.sentences],
                          chunks=[HitView.from_hit(h) for h in hits],
                          collection=opts.collection if opts is not None else None)
