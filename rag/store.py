"""Keeps each collection's derived indexes in step with the database.

Protocol of a write (ingest, delete): 1. one database transaction changes the chunks and bumps the collection's
`generation`; 2. after it commits, the in-memory index is updated and, at the end of the run, saved atomically
stamped with that generation. A reader compares the stamp with the database's generation and rebuilds from the
stored vectors when they differ, so a crash between 1 and 2, or a write by another process, can never leave a
searchable chunk missing or a deleted one findable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select

from rag.config import Settings
from rag.db import repo
from rag.db.models import Collection
from rag.db.session import Database
from rag.index import IndexParams, VectorIndex, choose_index_type


@dataclass
class IndexCheck:
    collection: str
    db_chunks: int
    index_vectors: int
    db_generation: int
    index_generation: int | None
    missing_in_index: list[int] = field(default_factory=list)
    stale_in_index: list[int] = field(default_factory=list)
    file_ok: bool = True

    @property
    def ok(self) -> bool:
        return (self.file_ok and not self.missing_in_index and not self.stale_in_index
                and self.index_generation == self.db_generation)


class IndexStore:
    """Per-process cache of collection indexes, reloaded whenever the database generation moves."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.params = IndexParams(hnsw_m=settings.hnsw_m, hnsw_ef_search=settings.hnsw_ef_search,
                                  ivf_nprobe=settings.ivf_nprobe)
        self._cache: dict[int, VectorIndex] = {}
        self._lock = threading.RLock()

    def path(self, collection_id: int) -> Path:
        return self.settings.index_dir / f"collection-{collection_id}.faiss"

    def _generation(self, collection_id: int) -> int | None:
        with self.db.session() as s:
            return s.scalar(select(Collection.generation).where(Collection.id == collection_id))

    def get(self, coll: Collection, *, on_rebuild=None) -> VectorIndex:  # type: ignore[no-untyped-def]
        """The collection's index, current with the database (loaded, or rebuilt when stale)."""
        with self._lock:
            gen = self._generation(coll.id)
            if gen is None:
                raise repo.NotFound(f"collection {coll.name!r} no longer exists")
            cached = self._cache.get(coll.id)
            if cached is not None and cached.generation == gen:
                return cached
            loaded = VectorIndex.load(self.path(coll.id), self.params)
            if loaded is not None and loaded.generation == gen:
                self._cache[coll.id] = loaded
                return loaded
            if on_rebuild:
                on_rebuild(coll.name)
            return self.rebuild(coll)

    def rebuild(self, coll: Collection) -> VectorIndex:
        """Rebuild from the vectors stored in the database and save it (`ctxqa reindex`)."""
        with self._lock:
            with self.db.session() as s:
                gen = s.scalar(select(Collection.generation).where(Collection.id == coll.id)) or 0
                ids, vecs = repo.collection_vectors(s, coll.id, coll.embedding_dim)
            kind = choose_index_type(coll.index_type if coll.index_type != "auto" else self.settings.index_type,
                                     len(ids), self.settings.index_auto_threshold)
            if kind == "ivf" and len(ids) < 1000:
                kind = "flat"  # too few points to train IVF; exact search is as fast at this size
            idx = VectorIndex.build(coll.embedding_dim, kind, ids, vecs, self.params)
            idx.save(self.path(coll.id), gen)
            self._cache[coll.id] = idx
            return idx

    def apply(self, coll: Collection, generation: int, *, add_ids: np.ndarray | None = None,
              add_vecs: np.ndarray | None = None, add_texts: list[str] | None = None,
              remove_ids: list[int] | None = None, save: bool = True) -> None:
        """Apply a committed change to the cached index (loading it first if needed). `add_texts` are the
        chunk texts of `add_ids`, for the lexical index."""
        with self._lock:
            idx = self._cache.get(coll.id)
            if idx is None or idx.generation != generation - 1 and idx.generation != generation:
                # Not in step (first use in this process, or another writer): rebuilding includes the change.
                self.rebuild(coll)
                return
            if remove_ids:
                idx.remove(remove_ids)
            if add_ids is not None and add_vecs is not None and len(add_ids):
                idx.add(add_ids, add_vecs)
            idx.generation = generation
            if save:
                idx.save(self.path(coll.id), generation)

    def save(self, coll: Collection) -> None:
        with self._lock:
            idx = self._cache.get(coll.id)
            if idx is not None:
                idx.save(self.path(coll.id), idx.generation)

    def drop(self, collection_id: int) -> None:
        with self._lock:
            self._cache.pop(collection_id, None)
            for p in (self.path(collection_id), self.path(collection_id).with_suffix(".json")):
                p.unlink(missing_ok=True)

    def check(self, coll: Collection) -> IndexCheck:
        """Compare the saved index file with the database, without repairing (`ctxqa doctor`)."""
        with self.db.session() as s:
            gen = s.scalar(select(Collection.generation).where(Collection.id == coll.id)) or 0
            db_ids = repo.collection_chunk_ids(s, coll.id)
        loaded = VectorIndex.load(self.path(coll.id), self.params)
        if loaded is None:
            if not len(db_ids) and not self.path(coll.id).exists():
                return IndexCheck(coll.name, 0, 0, gen, gen)  # nothing ingested yet: nothing to index
            return IndexCheck(coll.name, len(db_ids), 0, gen, None, missing_in_index=db_ids.tolist()[:50],
                              file_ok=False)
        idx_ids = loaded.ids()
        return IndexCheck(
            coll.name, len(db_ids), len(idx_ids), gen, loaded.generation,
            missing_in_index=np.setdiff1d(db_ids, idx_ids).tolist()[:50],
            stale_in_index=np.setdiff1d(idx_ids, db_ids).tolist()[:50],
        )
