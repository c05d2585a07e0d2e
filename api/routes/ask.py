"""POST /v1/ask: an answer with resolved citations, as one JSON object or as Server-Sent Events.

Both forms run the very same job, `Answerer.stream` in a generation-queue worker thread: the JSON form keeps
only the final event, the SSE form forwards every event. So the `final` event carries exactly the answer and
citations the JSON form returns for the same (greedy) request.

SSE wire format (one JSON object per `data:` line):

    event: sources   data: {"collection": ..., "chunks": [HitView, ...]}
    event: delta     data: {"text": "..."}            (zero or more: the model's raw text as generated)
    event: sentence  data: {"text": ..., "sentence": SentenceView}
                                                       (each sentence of the answer once it is complete and checked:
                                                        `text` is the answer text since the previous sentence)
    event: final     data: AnswerView                 (same object as the non-streaming response)
    event: error     data: {"error": {...}}            (instead of final, if generation fails mid-way)

A client that disconnects cancels its job: dropped from the queue if it has not started, stopped at the next
token if it has.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from ctxqa.api.deps import PrincipalDep, StateDep
from ctxqa.api.errors import ERRORS, ApiError, library_error
from ctxqa.api.jobs import build_options, collect, finalize, first_event, submit
from ctxqa.api.jsonbody import JSONRoute
from ctxqa.api.schemas import AskRequest, DeltaEvent, SentenceEvent, SourcesEvent
from ctxqa.api.sse import EventStreamResponse, error_payload, sse
from ctxqa.rag.views import AnswerView, HitView, SentenceView

log = logging.getLogger("ctxqa.api")
router = APIRouter(tags=["ask"], route_class=JSONRoute)

# ---------------------------------------------------------------------------------------------------------------
# The route
# ---------------------------------------------------------------------------------------------------------------


@router.post("/v1/ask", response_model=AnswerView, responses={
    **ERRORS, 200: {"description": "The answer (JSON), or with `stream: true` a text/event-stream of "
                                   "`sources`, `delta`... and `final` events.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def ask(body: AskRequest, request: Request, state: StateDep, principal: PrincipalDep) -> Any:
    """Answer question(s) from a collection, with citations resolved to documents, pages and chunks."""
    questions, opts, coll = build_options(
        state, principal, body.question_list(), collection=body.collection, top_k=body.top_k, retrieval=body.retrieval, mode=body.mode,
        filters=body.filters, max_new_tokens=body.max_new_tokens, temperature=body.temperature)
    job = submit(state, questions, opts)
    events = job.events()
    first = await first_event(request, state, job, events)

    if not body.stream:
        answer = await collect(request, state, job, events)
        answer_id = await finalize(state, answer, coll, principal)
        return AnswerView.from_answer(answer, coll, answer_id)

    async def stream() -> AsyncIterator[str]:
        finished = False
        try:
            yield sse("sources", SourcesEvent(collection=coll, chunks=[HitView.from_hit(h) for h in first.hits or []]))
            async for ev in events:
                if ev.kind == "delta" and ev.text:
                    yield sse("delta", DeltaEvent(text=ev.text))
                elif ev.kind == "sentence" and ev.sentence is not None:
                    yield sse("sentence", SentenceEvent(text=ev.text or "",
                                                        sentence=SentenceView.from_check(ev.sentence)))
                elif ev.kind == "final" and ev.answer is not None:
                    answer_id = await finalize(state, ev.answer, coll, principal)
                    finished = True
                    yield sse("final", AnswerView.from_answer(ev.answer, coll, answer_id))
            if not finished:
                yield sse("error", error_payload(ApiError(503, "cancelled", "the generation job was cancelled")))
        except Exception as exc:  # noqa: BLE001 - the status line is gone: report in-band
            err = library_error(exc)
            if err.code == "internal_error":
                log.error("generation failed mid-stream", exc_info=exc)
            yield sse("error", error_payload(err))

    def on_close() -> None:
        if state.queue is not None:
            state.queue.cancel(job)  # no-op when the job finished

    return EventStreamResponse(stream(), on_close)
