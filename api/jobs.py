"""Answer jobs shared by /v1/ask and /v1/chat/completions: options checked against the limits, submission to the
generation queue, cancellation when the client goes away, and what happens to a finished answer (metrics, the
answer log)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ctxqa.api.errors import ApiError, bad_input, library_error
from ctxqa.api.keys import Principal
from ctxqa.api.queue import Job
from ctxqa.api.schemas import MAX_QUESTIONS
from ctxqa.api.state import AppState
from ctxqa.api.validation import check_max_new_tokens, check_question, check_top_k, resolve_collection
from ctxqa.rag.answer import AnswerEvent, AskOptions
from ctxqa.rag.db.models import AnswerLog
from ctxqa.rag.retrieve.filters import Filters
from ctxqa.rag.types import Answer
from ctxqa.rag.views import CitationView, SentenceView

log = logging.getLogger("ctxqa.api")


def build_options(state: AppState, principal: Principal, questions: list[str], *, collection: str | None,
                  top_k: int | None, retrieval: str | None, filters: Filters | None, mode: str | None,
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
    opts = AskOptions(collection=coll, k=top_k, retrieval=retrieval, filters=filters, max_new_tokens=max_new_tokens,
                      temperature=temperature, mode=mode)  # type: ignore[arg-type]  # checked by the schema
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
    cits = [CitationView.from_citation(c).model_dump(mode="json") for c in answer.citations]
    sentences = [SentenceView.from_check(c).model_dump(mode="json") for c in answer.sentences]
    try:
        with state.services.db.session() as s:
            row = AnswerLog(collection=collection, question=answer.question, answer=answer.answer, citations=cits,
                            model=answer.model[:500], timings={k: round(float(v), 6) for k, v in answer.timings.items()},
                            usage={"prompt_tokens": answer.usage.prompt_tokens,
                                   "completion_tokens": answer.usage.completion_tokens},
                            key_name=principal.name[:200], abstained=answer.abstained,
                            grounding=answer.grounding, sentences=sentences, mode=answer.mode)
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
    m.grounding.labels(answer.grounding).inc()
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


async def collect(request: Request, state: AppState, job: Job, events: AsyncIterator[AnswerEvent],
                  on_event: Callable[[AnswerEvent], None] | None = None) -> Answer:
    """The job's final answer (each event passed to `on_event` on the way)."""
    final: Answer | None = None
    try:
        async with cancel_on_disconnect(request, state, job):
            async for ev in events:
                if on_event is not None:
                    on_event(ev)
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
