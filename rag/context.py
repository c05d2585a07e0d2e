"""The long-lived parts of a ctxqa process, built lazily from one Settings.

The CLI builds one per command; the API builds one per process at start-up. Heavy parts (embedder, generator)
load on first use so `ctxqa docs list` never pays for a model.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING

from rag.config import Settings
from rag.db.session import Database
from rag.store import IndexStore

if TYPE_CHECKING:
    from ingest.pipeline import Ingestor
    from rag.answer import Answerer
    from rag.embed import Embedder
    from rag.generate.base import Generator
    from rag.retrieve import Retriever


class Context:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._lock = threading.Lock()

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.db_url)

    @cached_property
    def store(self) -> IndexStore:
        return IndexStore(self.settings, self.db)

    @cached_property
    def embedder(self) -> "Embedder":
        from rag.embed import Embedder

        with self._lock:
            return Embedder.from_settings(self.settings)

    @cached_property
    def ingestor(self) -> "Ingestor":
        from ingest.pipeline import Ingestor

        return Ingestor(self.settings, self.db, self.store, self.embedder)

    @cached_property
    def retriever(self) -> "Retriever":
        from rag.retrieve import Retriever

        return Retriever(self.settings, self.db, self.store, self.embedder)

    @cached_property
    def generator(self) -> "Generator":
        with self._lock:
            return self.generator_factory()

    @cached_property
    def answerer(self) -> "Answerer":
        from rag.answer import Answerer

        # The generator is fetched lazily: an abstention never loads the model.
        return Answerer(self.settings, self.retriever, lambda: self.generator)

    def generator_factory(self) -> "Generator":
        from rag.generate import load_generator

        return load_generator(self.settings)

    def close(self) -> None:
        gen = self.__dict__.get("generator")
        if gen is not None:
            gen.close()
        db = self.__dict__.get("db")
        if db is not None:
            db.dispose()
