"""Request scoping and limits: the collection a request may use, and the bounds on questions, top_k and
max_new_tokens (all configured in Settings, all reported with the field at fault)."""

from __future__ import annotations

from typing import Any

from ctxqa.api.errors import ApiError, bad_input
from ctxqa.api.keys import Principal
from ctxqa.rag.config import Settings


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
