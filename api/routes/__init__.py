"""HTTP routes: thin handlers over the library (ingestion, retrieval, answering). One module per resource."""

from __future__ import annotations

from fastapi import APIRouter

from ctxqa.api.routes import answers, ask, chat, collections, documents, health, pages, search, verify, web

__all__ = ["all_routers"]


def all_routers() -> list[APIRouter]:
    return [health.router, ask.router, search.router, documents.router, collections.router, chat.router,
            answers.router, verify.router, pages.router, web.router]
