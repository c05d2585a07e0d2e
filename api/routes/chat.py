"""POST /v1/chat/completions: OpenAI-compatible, so existing OpenAI clients can use ctxqa.

- The last user message is the question (earlier turns and system prompts are not used: ctxqa's prompt is
  the context-obedient template of the configured model).
- The reply's content is the answer followed by a "Sources:" list; the resolved citations also come back in
  an extra `citations` field (and `answer_id` for GET /v1/answers/{id}).
- `stream: true` follows OpenAI's chunk format (`data: {chat.completion.chunk}` lines, then `data: [DONE]`);
  the last chunk before [DONE] carries `citations` and the `ctxqa` final answer object.
- ctxqa extensions in the request: `collection`, `top_k`, `filters`, `mode`.
"""

from __future__ import annotations

import logging
import re
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
from ctxqa.rag.types import Answer
from ctxqa.rag.views import AnswerView, CitationView, UsageView, sources_text

log = logging.getLogger("ctxqa.api")
router = APIRouter(tags=["openai"], route_class=JSONRoute)

# A line that opens the model's own sources section: hidden from the streamed content, because the resolved
# "Sources:" list follows (the same heuristic the citation parser's headings use, kept deliberately simple).
_SOURCES_HEADING = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?:[-*+]\s+)?(?:\*\*|__)?\s*(?:sources?|references?|reference\(s\)|citations?)\s*"
    r"(?:\d+\s*)?(?:\*\*|__)?\s*:", re.IGNORECASE)


def content_of(answer: Answer) -> str:
    src = sources_text(answer.citations)
    return answer.answer + (f"\n\n{src}" if src else "")


class _HideSourcesSection:
    """Passes streamed text through until a line opens a sources section, and hides everything from there.

    Text at the start of a line is held back only while it could still grow into such a heading."""

    def __init__(self) -> None:
        self.buf = ""
        self.line_start = True  # does `buf` begin at the start of a line?
        self.hidden = False

    def feed(self, text: str) -> str:
        if self.hidden:
            return ""
        self.buf += text
        out: list[str] = []
        while self.buf:
            nl = self.buf.find("\n")
            head = self.buf if nl < 0 else self.buf[: nl + 1]
            if self.line_start and _SOURCES_HEADING.match(head):
                self.hidden = True
                self.buf = ""
                break
            if nl < 0:
                if self.line_start and _could_be_heading(head):
                    break  # wait for more of this line
                out.append(head)
                self.buf = ""
                self.line_start = False
                break
            out.append(head)
            self.buf = self.buf[nl + 1:]
            self.line_start = True
        return "".join(out)

    def flush(self) -> str:
        rest, self.buf = ("" if self.hidden else self.buf), ""
        return rest


def _could_be_heading(partial: str) -> bool:
    s = partial.lstrip(" \t#-*+_").lower()
    return len(s) < 24 and any(w.startswith(s) or s.startswith(w) for w in ("source", "reference", "citation"))


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
        state, principal, [question], collection=body.collection, top_k=body.top_k, mode=body.mode,
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

    if not body.stream:
        answer = await collect(request, state, job, events)
        answer_id = await finalize(state, answer, coll, principal)
        return ChatResponse(
            id=cid, created=created, model=answer.model,
            choices=[ChatChoice(message=ChatResponseMessage(content=content_of(answer)),
                                finish_reason="stop" if not _truncated(answer, max_new, state) else "length")],
            usage=UsageView(prompt_tokens=answer.usage.prompt_tokens, completion_tokens=answer.usage.completion_tokens,
                           total_tokens=answer.usage.prompt_tokens + answer.usage.completion_tokens),
            citations=[CitationView.from_citation(c) for c in answer.citations], answer_id=answer_id)

    gen = state.services.loaded_generator()
    model_name = f"{state.settings.llm_backend}:{gen.name}" if gen is not None else "ctxqa"

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return sse(None, {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

    async def stream() -> AsyncIterator[str]:
        hide = _HideSourcesSection()
        finished = False
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for ev in events:
                if ev.kind == "delta" and ev.text:
                    text = hide.feed(ev.text)
                    if text:
                        yield chunk({"content": text})
                elif ev.kind == "final" and ev.answer is not None:
                    a = ev.answer
                    tail = hide.flush()
                    if tail:
                        yield chunk({"content": tail})
                    src = sources_text(a.citations)
                    if src:
                        yield chunk({"content": f"\n\n{src}"})
                    answer_id = await finalize(state, a, coll, principal)
                    finished = True
                    yield chunk({}, "length" if _truncated(a, max_new, state) else "stop",
                                usage={"prompt_tokens": a.usage.prompt_tokens,
                                       "completion_tokens": a.usage.completion_tokens,
                                       "total_tokens": a.usage.prompt_tokens + a.usage.completion_tokens},
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
