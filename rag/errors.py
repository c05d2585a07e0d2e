"""Errors the core raises about its input, each naming the request field it concerns.

The API maps them to 422 (or 404) with that field, and the CLI prints the message; neither matches message text.
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """Input a caller can fix. `field` is the option or request field at fault ("mode", "k", "filters"...)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
