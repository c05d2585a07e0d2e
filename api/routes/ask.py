"""POST /v1/ask: an answer with resolved citations, as one JSON object or as Server-Sent Events.

Both forms run the very same job, `Answerer.stream` in a generation-queue worker thread: the JSON form keeps
only the final event, the SSE form forwards every event. So the `final` event carries exactly the answer and
citations the JSON form returns for the same (greedy) request.

SSE wire format (one JSON object per `data:` line):

    event: sources   data: {"collection": ..., "chunks": [HitOut, ...]}
    event: delta     data: {"text": "..."}            (zero or more)
    event: final     data: AskResponse                 (same object as the non-streaming response)
    event: error     data: {"error": {...}}            (instead of final, if generation fails mid-way)

A client that disconnects cancels its job: dropped from the queue if it has not started, stopped at the next
token if it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from ctxqa.api.deps import (
    ApiError,
    AppState,
    JSONRoute,
    PrincipalDep,
    StateDep,
    bad_input,
    check_max_new_tokens,
    check_question,
    check_top_k,
    library_error,
    resolve_collection,
)
from ctxqa.api.keys import Principal
from ctxqa.api.queue import Job
from ctxqa.api.schemas import (
    MAX_QUESTIONS,
    AskRequest,
    AskResponse,
    CitationOut,
    DeltaEvent,
    ErrorResponse,
    HitOut,
    SourcesEvent,
)
from ctxqa.rag.answer import AnswerEvent, AskOptions
from ctxqa.rag.db.models import AnswerLog
from ctxqa.rag.retrieve.filters import Filters
from ctxqa.rag.types import Answer

log = logging.getLogger("ctxqa.api")
router = APIRouter(tags=["ask"], route_class=JSONRoute)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in ((401, "Missing or invalid API key"), (403, "Collection not allowed for this key"),
                       (404, "Collection not found"), (409, "Embedding model mismatch"),
                       (422, "Invalid input (the error names the field)"),
                       (503, "Generation queue full (see Retry-After) or model unavailable"))
}


# ---------------------------------------------------------------------------------------------------------------
# Shared by /v1/ask and /v1/chat/completions
# ---------------------------------------------------------------------------------------------------------------


def build_options(state: AppState, principal: Principal, questions: list[str], *, collection: str | None,
                  top_k: int | None, mode: str | None, filters: Filters | None,
                  max_new_tokens: int | None, temperature: float | None, question_field: str = "question",
                  tokens_field: str = "max_new_tokens") -> tuple[list[str], AskOptions, str]:
    settings = state.settings
    if not questions:
        raise bad_input(question_field, "ask at least one question")
    if len(questions) > MAX_QUESTIONS:
        raise bad_input(question_field, f"at most {MAX_QUESTIONS} questions per request")
    for i, q in enumerate(questions):
        check_question(q, settings, question_field if len(questions) == 1 else f"{question_field}.{i}")
    check_top_k(top_k, settings)
    check_max_new_tokens(max_new_tokens, settings, tokens_field)
    coll = resolve_collection(collection, settings, principal)
    opts = AskOptions(collection=coll, k=top_k, mode=mode, filters=filters, max_new_tokens=max_new_tokens,
                      temperature=temperature)
    return questions, opts, coll


def submit(state: AppState, questions: list[str], opts: AskOptions) -> Job:
    if state.queue is None:
        raise ApiError(503, "model_unavailable", "the generation queue is not running", headers={"Retry-After": "5"})
    answerer = state.services.answerer
    try:
        return state.queue.submit(lambda cancel: answerer.stream(questions, opts, cancel), label=questions[0][:80])
    except Exception as exc:  # QueueFull, QueueClosed
        raise library_error(exc) from None


@contextlib.asynccontextmanager
async def cancel_on_disconnect(request: Request, state: AppState, job: Job,
                               every: float = 0.2) -> AsyncIterator[None]:
    """While the body runs, poll the connection and cancel `job` if the client goes away."""

    async def watch() -> None:
        while True:
            await asyncio.sleep(every)
            if await request.is_disconnected():
                if state.queue is not None:
                    state.queue.cancel(job)
                return

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _save_log(state: AppState, answer: Answer, collection: str, principal: Principal) -> int | None:
    cits = [CitationOut.from_citation(c).model_dump(mode="json") for c in answer.citations]
    try:
        with state.services.db.session() as s:
            row = AnswerLog(collection=collection, question=answer.question, answer=answer.answer, citations=cits,
                            model=answer.model[:500], timings={k: round(float(v), 6) for k, v in answer.timings.items()},
                            usage={"prompt_tokens": answer.usage.prompt_tokens,
                                   "completion_tokens": answer.usage.completion_tokens},
                            key_name=principal.name[:200], abstained=answer.abstained)
            s.add(row)
            s.flush()
            return int(row.id)
    except Exception:  # noqa: BLE001 - an audit-log failure must not lose the user's answer
        log.exception("could not store the answer log")
        return None


async def finalize(state: AppState, answer: Answer, collection: str, principal: Principal) -> int | None:
    """Metrics + answer log for a finished answer; returns the answer log id."""
    m = state.metrics
    m.tokens_generated.inc(answer.usage.completion_tokens)
    m.prompt_tokens.inc(answer.usage.prompt_tokens)
    m.answers.labels("abstained" if answer.abstained else "answered").inc()
    return await run_in_threadpool(_save_log, state, answer, collection, principal)


async def first_event(request: Request, state: AppState, job: Job, events: AsyncIterator[AnswerEvent],
                      field: str = "question") -> AnswerEvent:
    """The job's first event (the retrieved sources), or the error that preparing the answer raised."""
    try:
        async with cancel_on_disconnect(request, state, job):
            return await events.__anext__()
    except StopAsyncIteration:
        raise ApiError(503, "cancelled", "the request was cancelled before it started") from None
    except ApiError:
        raise
    except Exception as exc:  # raised by the job itself, which has ended
        err = library_error(exc, field)
        if err.status >= 500 and err.code == "internal_error":
            log.error("answer preparation failed", exc_info=exc)
        raise err from None


async def collect(request: Request, state: AppState, job: Job, events: AsyncIterator[AnswerEvent]) -> Answer:
    final: Answer | None = None
    try:
        async with cancel_on_disconnect(request, state, job):
            async for ev in events:
                if ev.kind == "final":
                    final = ev.answer
    except Exception as exc:
        err = library_error(exc)
        if err.code == "internal_error":
            log.error("generation failed", exc_info=exc)
        raise err from None
    if final is None:
        raise ApiError(503, "cancelled", "the generation job was cancelled")
    return final


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse that always closes its iterator and runs `on_close` (cancel the job) when the
    response ends for any reason: finished, client gone, server shutting down."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Any] | None = None) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose: Callable[[], Awaitable[None]] | None = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(BaseException):
                    await aclose()
            if self._on_close is not None:
                self._on_close()


def sse(event: str | None, data: Any) -> str:
    if hasattr(data, "model_dump_json"):
        payload = data.model_dump_json()
    else:
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def error_payload(err: ApiError) -> dict[str, Any]:
    return {"error": {"code": err.code, "message": err.message, "field": err.field, "fields": []}}


# ---------------------------------------------------------------------------------------------------------------
# The route
# ---------------------------------------------------------------------------------------------------------------


@router.post("/v1/ask", response_model=AskResponse, responses={
    **ERRORS, 200: {"description": "The answer (JSON), or with `stream: true` a text/event-stream of "
                                   "`sources`, `delta`... and `final` events.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def ask(body: AskRequest, request: Request, state: StateDep, principal: PrincipalDep) -> Any:
    """Answer question(s) from a collection, with citations resolved to documents, pages and chunks."""
    questions, opts, coll = build_options(
        state, principal, body.question_list(), collection=body.collection, top_k=body.top_k, mode=body.mode,
        filters=body.filters, max_new_tokens=body.max_new_tokens, temperature=body.temperature)
    job = submit(state, questions, opts)
    events = job.events()
    first = await first_event(request, state, job, events)

    if not body.stream:
        answer = await collect(request, state, job, events)
        answer_id = await finalize(state, answer, coll, principal)
        return AskResponse.from_answer(answer, coll, answer_id)

    async def stream() -> AsyncIterator[str]:
        finished = False
        try:
            yield sse("sources", SourcesEvent(collection=coll, chunks=[HitOut.from_hit(h) for h in first.hits or []]))
            async for ev in events:
                if ev.kind == "delta" and ev.text:
                    yield sse("delta", DeltaEvent(text=ev.text))
                elif ev.kind == "final" and ev.answer is not None:
                    answer_id = await finalize(state, ev.answer, coll, principal)
                    finished = True
                    yield sse("final", AskResponse.from_answer(ev.answer, coll, answer_id))
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
