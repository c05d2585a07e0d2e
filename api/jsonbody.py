"""Request bodies parsed strictly: valid UTF-8 JSON without NaN/Infinity constants or lone surrogates.

`JSONRoute` is the route class of every router."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute


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
