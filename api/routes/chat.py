"""POST /v1/chat/completions: OpenAI-compatible, so existing OpenAI clients can use ctxqa.

- The last user message is the question (earlier turns and system prompts are not used: ctxqa's prompt is
  the context-obedient template of the configured model).
- The reply's content is the answer, each unsupported sentence followed by a visible "[unsupported]", then a
  "Sources:" list and, when the documents do not support the answer, the passages that answer the question. The
  verdict comes back in an extra `grounding` field, the resolved citations in `citations` (and `answer_id` for
  GET /v1/answers/{id}).
- `stream: true` follows OpenAI's chunk format (`data: {chat.completion.chunk}` lines, then `data: [DONE]`):
  each sentence is sent once it is complete and checked, so the joined deltas equal the non-streamed content
  (both are built by `ChatContent` from the same answer events). The last chunk before [DONE] carries
  `grounding`, `citations` and the `ctxqa` final answer object.
- ctxqa extensions in the request: `collection`, `top_k`, `filters`, `retrieval` (dense | lexical | hybrid) and
  `mode` (generate | quote).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from ctxqa.api.deps import PrincipalDep, StateDep
from ctxqa.api.errors import ERRORS, ApiError, bad_input, library_error
from ctxqa.api.jobs import build_options, collect, finalize, first_event, submit
from ctxqa.api.jsonbody import JSONRoute
from ctxqa.api.schemas import ChatChoice, ChatRequest, ChatResponse, ChatResponseMessage
from ctxqa.api.sse import EventStreamResponse, error_payload, sse
from ctxqa.rag.answer import AnswerEvent
from ctxqa.rag.types import Answer, SentenceCheck
from ctxqa.rag.views import (
    UNSUPPORTED_MARK,
    AnswerView,
    CitationView,
    UsageView,
    evidence_text,
    marked_answer,
    sources_text,
)

log = logging.getLogger("ctxqa.api")
router = APIRouter(tags=["openai"], route_class=JSONRoute)

class ChatContent:
    """The reply's content, built from the answer job's events the same way for both forms.

    Each checked sentence is appended as it arrives, with "[unsupported]" after it when no passage supports it
    (the raw model text, its inline citations and its own sources section never reach the client). At the end
    comes whatever followed the last sentence, the resolved sources list, and the passages that answer the
    question when the answer is not supported. When the unsupported-answer policy may replace the answer
    (abstain / quote), nothing is sent before the verdict is known."""

    def __init__(self, hold: bool) -> None:
        self.hold = hold
        self.sent: list[str] = []

    def sentence(self, text: str, check: SentenceCheck) -> str:
        if self.hold:
            return ""
        mark = {"unsupported": f" {UNSUPPORTED_MARK}", "partial": " [partly supported]"}.get(check.label, "")
        piece = text + mark
        self.sent.append(piece)
        return piece

    def final(self, answer: Answer) -> str:
        full = content_of(answer)
        done = "".join(self.sent)
        if full.startswith(done):
            return full[len(done):]
        # The sentences sent so far are not how the final answer reads (its parse changed earlier text): say so
        # and give the answer as it stands, rather than leave the client with text that is not the answer.
        log.warning("chat stream: streamed sentences differ from the final answer; sending it in full")
        return "\n\n(corrected answer)\n" + full


def content_of(answer: Answer) -> str:
    parts = [marked_answer(answer)]
    for extra in (sources_text(answer.citations), evidence_text(answer)):
        if extra:
            parts.append(extra)
    return "\n\n".join(parts)


@router.post("/v1/chat/completions", response_model=ChatResponse, responses={
    **ERRORS, 200: {"description": "A chat.completion, or with `stream: true` chat.completion.chunk events.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def chat_completions(body: ChatRequest, request: Request, state: StateDep,
                           principal: PrincipalDep) -> Any:
    """OpenAI-compatible chat completion answered from the documents (the last user message is the question)."""
    users = [i for i, m in enumerate(body.messages) if m.role == "user"]
    if not users:
        raise bad_input("messages", "needs at least one message with role 'user' (the question)")
    question = body.messages[users[-1]].text()
    field = f"messages.{users[-1]}.content"
    max_new = body.max_completion_tokens or body.max_tokens
    tokens_field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    questions, opts, coll = build_options(
        state, principal, [question], collection=body.collection, top_k=body.top_k, retrieval=body.retrieval, mode=body.mode,
        filters=body.filters, max_new_tokens=max_new, temperature=body.temperature, question_field=field,
        tokens_field=tokens_field)
    job = submit(state, questions, opts)
    events = job.events()
    try:
        await first_event(request, state, job, events, field=field)
    except ApiError as e:
        if e.field == "max_new_tokens":
            e.field = tokens_field
        raise
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    hold = state.settings.unsupported != "flag"
    if not body.stream:
        content = ChatContent(hold)
        pieces: list[str] = []

        def on_event(ev: AnswerEvent) -> None:  # the same events, through the same builder, as a stream
            if ev.kind == "sentence" and ev.sentence is not None:
                pieces.append(content.sentence(ev.text or "", ev.sentence))

        answer = await collect(request, state, job, events, on_event)
        pieces.append(content.final(answer))
        answer_id = await finalize(state, answer, coll, principal)
        return ChatResponse(
            id=cid, created=created, model=answer.model,
            choices=[ChatChoice(message=ChatResponseMessage(content="".join(pieces)),
                                finish_reason="stop" if not _truncated(answer, max_new, state) else "length")],
            usage=UsageView(prompt_tokens=answer.usage.prompt_tokens, completion_tokens=answer.usage.completion_tokens,
                            total_tokens=answer.usage.prompt_tokens + answer.usage.completion_tokens),
            citations=[CitationView.from_citation(c) for c in answer.citations], answer_id=answer_id,
            grounding=answer.grounding)

    gen = state.services.loaded_generator()
    model_name = f"{state.settings.llm_backend}:{gen.name}" if gen is not None else "ctxqa"

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return sse(None, {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

    async def stream() -> AsyncIterator[str]:
        content = ChatContent(hold)
        finished = False
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for ev in events:
                if ev.kind == "sentence" and ev.sentence is not None:
                    piece = content.sentence(ev.text or "", ev.sentence)
                    if piece:
                        yield chunk({"content": piece})
                elif ev.kind == "final" and ev.answer is not None:
                    a = ev.answer
                    tail = content.final(a)
                    if tail:
                        yield chunk({"content": tail})
                    answer_id = await finalize(state, a, coll, principal)
                    finished = True
                    yield chunk({}, "length" if _truncated(a, max_new, state) else "stop",
                                usage={"prompt_tokens": a.usage.prompt_tokens,
                                       "completion_tokens": a.usage.completion_tokens,
                                       "total_tokens": a.usage.prompt_tokens + a.usage.completion_tokens},
                                grounding=a.grounding,
                                citations=[CitationView.from_citation(c).model_dump(mode="json") for c in a.citations],
                                answer_id=answer_id,
                                ctxqa=AnswerView.from_answer(a, coll, answer_id).model_dump(mode="json"))
            if not finished:
                yield sse(None, error_payload(ApiError(503, "cancelled", "the generation job was cancelled")))
        except Exception as exc:  # noqa: BLE001 - report in-band, as OpenAI streams do
            err = library_error(exc)
            if err.code == "internal_error":
                log.error("chat generation failed mid-stream", exc_info=exc)
            yield sse(None, error_payload(err))
        yield "data: [DONE]\n\n"

    def on_close() -> None:
        if state.queue is not None:
            state.queue.cancel(job)

    return EventStreamResponse(stream(), on_close)


def _truncated(answer: Answer, max_new: int | None, state: Any) -> bool:
    limit = max_new or state.settings.max_new_tokens
    return not answer.abstained and answer.usage.completion_tokens >= limit
