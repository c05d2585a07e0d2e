"""The long-lived parts of a ctxqa process, built lazily from one Settings: the process wiring.

It sits above every layer it assembles (core, ingestion, API services): the CLI builds one per command, and
`ctxqa.server:factory` one per server process, handed to `ctxqa.api.create_app`. Heavy parts (embedder, generator)
load on first use so `ctxqa docs list` never pays for a model.
"""

from __future__ import annotations

import os
import threading
from functools import cached_property
from typing import TYPE_CHECKING

from ctxqa.rag.config import Settings
from ctxqa.rag.db.session import Database
from ctxqa.rag.index.store import IndexStore

if TYPE_CHECKING:
    from ctxqa.ingest.pipeline import Ingestor
    from ctxqa.rag.answer import Answerer
    from ctxqa.rag.embed.embedder import Embedder
    from ctxqa.rag.generate.base import Generator
    from ctxqa.rag.retrieve.retriever import Retriever


def apply_process_defaults() -> None:
    """Environment defaults for a ctxqa process, set once by each entry point (CLI, server, Context) rather than at
    import time by library modules: models come from local packages only, never from a hub, and the Rust
    tokenizers stay single-threaded inside our own worker threads (their pool deadlocks after fork)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Context:
    def __init__(self, settings: Settings | None = None) -> None:
        apply_process_defaults()
        self.settings = settings or Settings()
        self._lock = threading.Lock()

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.db_url)

    @cached_property
    def store(self) -> IndexStore:
        return IndexStore(self.settings, self.db)

    @cached_property
    def embedder(self) -> Embedder:
        from ctxqa.rag.embed.embedder import Embedder

        with self._lock:
            return Embedder.from_settings(self.settings)

    @cached_property
    def ingestor(self) -> Ingestor:
        from ctxqa.ingest.pipeline import Ingestor

        return Ingestor(self.settings, self.db, self.store, self.embedder)

    @cached_property
    def retriever(self) -> Retriever:
        from ctxqa.rag.retrieve.retriever import Retriever

        return Retriever(self.settings, self.db, self.store, self.embedder)

    @cached_property
    def generator(self) -> Generator:
        with self._lock:
            return self.generator_factory()

    @cached_property
    def answerer(self) -> Answerer:
        from ctxqa.rag.answer import Answerer

        # The generator is fetched lazily: an abstention never loads the model.
        return Answerer(self.settings, self.retriever, lambda: self.generator)

    def loaded_generator(self) -> Generator | None:
        """The generator if it was loaded already (cached_property keeps it in __dict__), without loading it."""
        return self.__dict__.get("generator")

    def generator_factory(self) -> Generator:
        from ctxqa.rag.generate import load_generator

        return load_generator(self.settings)

    def close(self) -> None:
        gen = self.loaded_generator()
        if gen is not None:
            gen.close()
        db = self.__dict__.get("db")
        if db is not None:
            db.dispose()
