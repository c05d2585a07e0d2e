"""Server-Sent Events: the wire format (`event:` / `data:` lines, one JSON object each) and a streaming response
that always runs its clean-up (cancel the job) however the response ends."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ctxqa.api.errors import ApiError


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
