"""What the API is built on: the services it is handed (a Protocol, so the API never imports the process wiring
above it) and the per-process state the lifespan fills in."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ctxqa.api.page_cache import ByteLRU

if TYPE_CHECKING:
    from ctxqa.api.metrics import Metrics
    from ctxqa.api.queue import GenerationQueue
    from ctxqa.ingest.pipeline import Ingestor
    from ctxqa.rag.answer import Answerer
    from ctxqa.rag.config import Settings
    from ctxqa.rag.db.session import Database
    from ctxqa.rag.embed.embedder import Embedder
    from ctxqa.rag.generate.base import Generator
    from ctxqa.rag.index.store import IndexStore
    from ctxqa.rag.retrieve.retriever import Retriever


class Services(Protocol):
    """The long-lived parts of a process. `ctxqa.context.Context` is the implementation; heavy parts load on
    first access, so each may raise when it cannot load (the lifespan reports that through /readyz)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> Database: ...
    @property
    def store(self) -> IndexStore: ...
    @property
    def embedder(self) -> Embedder: ...
    @property
    def ingestor(self) -> Ingestor: ...
    @property
    def retriever(self) -> Retriever: ...
    @property
    def answerer(self) -> Answerer: ...
    @property
    def generator(self) -> Generator: ...

    def loaded_generator(self) -> Generator | None:
        """The generator if it is already loaded, without loading it."""

    def close(self) -> None: ...


@dataclass
class AppState:
    settings: Settings
    services: Services
    metrics: Metrics
    queue: GenerationQueue | None = None
    model_error: str | None = None
    index_error: str | None = None
    # Uploads through this process are ingested one request at a time (the database serialises across replicas).
    ingest_lock: threading.RLock = field(default_factory=threading.RLock)
    # Rendered page images for the evidence viewer (api/routes/pages.py); sized from settings.page_cache_mb.
    page_images: ByteLRU = field(default_factory=lambda: ByteLRU(0))
    # Page spans of PDFs ingested before they were stored with the document: read again once, by sha256.
    page_layouts: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
