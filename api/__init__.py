"""ctxqa HTTP API: a thin FastAPI layer over the same ingestion and answering code the CLI uses.

`create_app(settings)` builds the application; `ctxqa serve` runs it under uvicorn.
"""

from __future__ import annotations

__all__ = ["create_app"]


def create_app(*args, **kwargs):  # type: ignore[no-untyped-def]
    from ctxqa.api.app import create_app as _create

    return _create(*args, **kwargs)
