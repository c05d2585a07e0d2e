"""Retrieval: query → ranked chunks (Hits) from one collection."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from rag.config import Settings
from rag.db import repo
from rag.db.session import Database
from rag.embed import Embedder
from rag.store import IndexStore
from rag.types import Hit


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)


class Retriever:
    def __init__(self, settings: Settings, db: Database, store: IndexStore, embedder: Embedder) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.embedder = embedder

    def search(self, query: str, *, collection: str | None = None, k: int | None = None) -> SearchResult:
        k = k or self.settings.top_k
        name = collection or self.settings.default_collection
        timings: dict[str, float] = {}
        with self.db.session() as s:
            coll = repo.require_collection(s, name)
            repo.check_embedder(coll, self.embedder.name, self.embedder.dim)
        t = time.perf_counter()
        qv = self.embedder.encode_query(query)
        timings["embed"] = time.perf_counter() - t
        t = time.perf_counter()
        index = self.store.get(coll)
        scores, ids = index.search(qv[None, :], k)
        timings["search"] = time.perf_counter() - t
        scored = [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0]) if i >= 0 and np.isfinite(sc)]
        t = time.perf_counter()
        with self.db.session() as s:
            hits = repo.hits_for(s, scored, name, {cid: {"dense": sc} for cid, sc in scored})
        timings["fetch"] = time.perf_counter() - t
        return SearchResult(hits, timings)
