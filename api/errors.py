"""Errors of the HTTP API: `ApiError` (status, machine-readable code, the field at fault), the mapping from the
library's exceptions, the JSON error handlers, and the error responses every route documents.

Every error body is `{"error": {"code", "message", "field", "fields"}}`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ctxqa.api.schemas import ErrorResponse

log = logging.getLogger("ctxqa.api")


class ApiError(Exception):
    """An error with an HTTP status, a machine-readable code and (when the input is at fault) the field."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def bad_input(field: str, message: str, status: int = 422) -> ApiError:
    return ApiError(status, "validation_error", f"{field}: {message}", field=field)


def library_error(exc: BaseException, field: str | None = None) -> ApiError:
    """Map an exception from the library to an ApiError (status, code, the field at fault)."""
    from pydantic import ValidationError

    from ctxqa.api.queue import QueueClosed, QueueFull
    from ctxqa.rag.db import repo
    from ctxqa.rag.errors import InvalidInput
    from ctxqa.rag.generate.base import ContextOverflowError, GeneratorError

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFull):
        return ApiError(503, "queue_full", str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, QueueClosed):
        return ApiError(503, "shutting_down", str(exc), headers={"Retry-After": "5"})
    if isinstance(exc, repo.NotFound):
        return ApiError(404, "not_found", str(exc), field=exc.field or field)
    if isinstance(exc, repo.EmbeddingMismatch):
        return ApiError(409, "embedding_mismatch", str(exc), field=exc.field)
    if isinstance(exc, ContextOverflowError):
        return ApiError(422, "context_overflow", str(exc), field="max_new_tokens")
    if isinstance(exc, GeneratorError):
        return ApiError(503, "model_unavailable", f"the language model is not available: {exc}",
                        headers={"Retry-After": "30"})
    if isinstance(exc, ValidationError):  # e.g. a filters object the retrieval layer rejects
        where = field or "body"
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or where}: {e['msg']}" for e in exc.errors())
        return ApiError(422, "validation_error", f"{where}: {details}", field=where)
    if isinstance(exc, InvalidInput):  # the core names the option at fault
        named = exc.field or field
        return ApiError(422, "validation_error", f"{named + ': ' if named else ''}{exc}", field=named)
    if isinstance(exc, ValueError):
        return ApiError(422, "validation_error", f"{field + ': ' if field else ''}{exc}", field=field)
    return ApiError(500, "internal_error", "internal server error")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in ((401, "Missing or invalid API key"), (403, "Collection not allowed for this key"),
                       (404, "Collection not found"), (409, "Embedding model mismatch"),
                       (422, "Invalid input (the error names the field)"),
                       (503, "Generation queue full (see Retry-After) or model unavailable"))
}


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 413: "payload_too_large",
                 415: "unsupported_media_type", 422: "validation_error", 429: "too_many_requests",
                 503: "unavailable"}
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "list[str]", "dict[str,any]", "none"}


def _error(status: int, code: str, message: str, *, field: str | None = None,
           fields: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "field": field, "fields": fields or []}},
                        status_code=status, headers=headers)


def _loc_to_field(loc: Any) -> str:
    parts = [str(p) for p in (loc or ())]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    parts = [p for p in parts if p.replace(" ", "").lower() not in _TYPE_TAGS and not p.startswith("function-")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for e in exc.errors():
            kind = str(e.get("type", ""))
            where = "body" if kind == "json_invalid" else _loc_to_field(e.get("loc"))
            msg = str(e.get("msg", "invalid"))
            if kind == "json_invalid" and isinstance(e.get("ctx"), dict) and e["ctx"].get("error"):
                msg = f"{msg}: {e['ctx']['error']}"
            fields.append({"field": where, "message": msg, "type": kind})
        # One entry per field (a union reports each alternative).
        seen: set[str] = set()
        fields = [f for f in fields if not (f["field"] in seen or seen.add(f["field"]))]  # type: ignore[func-returns-value]
        first = fields[0]["field"] if fields else None
        msg = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5]) or "invalid request"
        return _error(422, "validation_error", msg, field=first, fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return _error(exc.status_code, code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", "internal server error (details are in the server log)")
