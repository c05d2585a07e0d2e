"""The server process's entry point: `uvicorn --factory ctxqa.server:factory` (what `ctxqa serve` runs, once per
worker process). Settings come from the environment and ctxqa.toml."""

from __future__ import annotations

from fastapi import FastAPI

from ctxqa.api.app import create_app
from ctxqa.context import Context, apply_process_defaults
from ctxqa.rag.config import Settings


def factory() -> FastAPI:
    apply_process_defaults()
    return create_app(Context(Settings()), owns_services=True)
