"""FastAPI dependencies: the process's Context, a database session, the caller (auth) and request limits.

Everything heavy lives on `app.state` (built once by the lifespan in api/app.py); dependencies only hand it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import json

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from ctxqa.api.keys import LOCAL_PRINCIPAL, Principal, verify_key
from ctxqa.api.state import AppState, Services
from ctxqa.rag.config import Settings

class StrictJSONRequest(Request):
    """A request whose JSON body must be valid UTF-8 without lone surrogates (``"\\udcff"``): such strings
    cannot be encoded again (responses, logs, the database) and would surface as 500s deep inside."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise json.JSONDecodeError(f"the body is not valid UTF-8 ({e.reason})", "", e.start) from None
            data = json.loads(text, parse_constant=reject_json_constant)
            bad = first_lone_surrogate(data)
            if bad is not None:
                raise json.JSONDecodeError("lone UTF-16 surrogate in a string", text, 0)
            self._json = data
        return self._json


def reject_json_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


def first_lone_surrogate(value: Any) -> str | None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return v
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


class JSONRoute(APIRoute):
    """The route class of every router: parses JSON bodies with `StrictJSONRequest`."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Any:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


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


def get_state(request: Request) -> AppState:
    return request.app.state.ctxqa  # type: ignore[no-any-return]


def get_settings(state: Annotated[AppState, Depends(get_state)]) -> Settings:
    return state.settings


def get_services(state: Annotated[AppState, Depends(get_state)]) -> Services:
    return state.services


def get_session(services: Annotated[Services, Depends(get_services)]) -> Iterator[Session]:
    """A transaction scope for one request (commits on success, rolls back on error)."""
    with services.db.session() as s:
        yield s


bearer = HTTPBearer(auto_error=False, description="An API key from `ctxqa keys create`.")


def get_principal(
    request: Request,
    state: Annotated[AppState, Depends(get_state)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller. A plain `def`: FastAPI runs it in the thread pool, so the key lookup never blocks the loop."""
    if state.settings.auth_disabled:
        principal = LOCAL_PRINCIPAL
    else:
        if creds is None or not creds.credentials:
            state.metrics.auth_failures.inc()
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                           field="Authorization", headers={"WWW-Authenticate": "Bearer"})
        with state.services.db.session() as s:
            found = verify_key(s, creds.credentials.strip())
        if found is None:
            state.metrics.auth_failures.inc()
            raise ApiError(401, "unauthorized", "invalid or revoked API key", field="Authorization",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        principal = found
    request.state.principal = principal
    return principal


StateDep = Annotated[AppState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[Session, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


# ---------------------------------------------------------------------------------------------------------------
# Scoping and limits
# ---------------------------------------------------------------------------------------------------------------


def resolve_collection(name: str | None, settings: Settings, principal: Principal, field: str = "collection") -> str:
    """The collection a request targets (default applied), refused with 403 when the key may not use it."""
    coll = (name if name is not None else settings.default_collection).strip()
    if not coll:
        raise bad_input(field, "must not be empty")
    if len(coll) > 200 or any(ord(c) < 32 for c in coll):
        raise bad_input(field, "invalid collection name (1-200 printable characters)")
    if not principal.allows(coll):
        raise ApiError(403, "forbidden", f"this API key may not use collection {coll!r}", field=field)
    return coll


def check_question(text: Any, settings: Settings, field: str) -> str:
    if not isinstance(text, str):
        raise bad_input(field, "must be a string")
    if not text.strip():
        raise bad_input(field, "must not be empty")
    if len(text) > settings.max_question_chars:
        raise bad_input(field, f"is {len(text)} characters long; the limit is {settings.max_question_chars} "
                               f"(max_question_chars)")
    if "\x00" in text:
        raise bad_input(field, "must not contain NUL characters")
    return text


def check_top_k(k: int | None, settings: Settings, field: str = "top_k") -> int | None:
    if k is not None and not 1 <= k <= settings.max_top_k:
        raise bad_input(field, f"must be between 1 and {settings.max_top_k} (max_top_k)")
    return k


def check_max_new_tokens(n: int | None, settings: Settings, field: str = "max_new_tokens") -> int | None:
    if n is not None and not 1 <= n <= settings.max_new_tokens_limit:
        raise bad_input(field, f"must be between 1 and {settings.max_new_tokens_limit} (max_new_tokens_limit)")
    return n


def library_error(exc: BaseException, field: str | None = None) -> ApiError:
    """Map an exception from the library to an ApiError (status, code, the field at fault)."""
    from pydantic import ValidationError

    from ctxqa.api.queue import QueueClosed, QueueFull
    from ctxqa.rag.db import repo
    from ctxqa.rag.generate.base import ContextOverflowError, GeneratorError

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFull):
        return ApiError(503, "queue_full", str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, QueueClosed):
        return ApiError(503, "shutting_down", str(exc), headers={"Retry-After": "5"})
    if isinstance(exc, repo.NotFound):
        return ApiError(404, "not_found", str(exc), field="collection" if "collection" in str(exc) else field)
    if isinstance(exc, repo.EmbeddingMismatch):
        return ApiError(409, "embedding_mismatch", str(exc), field="collection")
    if isinstance(exc, ContextOverflowError):
        return ApiError(422, "context_overflow", str(exc), field="max_new_tokens")
    if isinstance(exc, GeneratorError):
        return ApiError(503, "model_unavailable", f"the language model is not available: {exc}",
                        headers={"Retry-After": "30"})
    if isinstance(exc, ValidationError):  # e.g. a filters object the retrieval layer rejects
        where = field or "body"
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or where}: {e['msg']}" for e in exc.errors())
        return ApiError(422, "validation_error", f"{where}: {details}", field=where)
    if isinstance(exc, ValueError):  # bad question, bad filter, unknown mode...
        msg = str(exc)
        if "filter" in msg.lower():
            field = "filters"
        elif "mode" in msg.lower() and field in (None, "question", "query"):
            field = "mode"
        return ApiError(422, "validation_error", f"{field + ': ' if field else ''}{msg}", field=field)
    return ApiError(500, "internal_error", "internal server error")
