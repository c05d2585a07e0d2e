"""Keeps each collection's derived indexes in step with the database.

Protocol of a write (ingest, delete): 1. one database transaction changes the chunks and bumps the collection's
`generation`; 2. after it commits, the in-memory index is updated and, at the end of the run, saved atomically
stamped with that generation. A reader compares the stamp with the database's generation and rebuilds from the
stored vectors when they differ, so a crash between 1 and 2, or a write by another process, can never leave a
searchable chunk missing or a deleted one findable.

Each collection has two derived indexes that follow the same protocol with the same generation stamp: the
faiss vector index (`collection-<id>.faiss`, rebuilt from the stored embeddings) and the BM25 lexical index
(`collection-<id>.bm25`, rebuilt from the stored chunk texts). `apply` updates both, `rebuild` rebuilds both,
`check` / `check_lexical` compare each with the database for `ctxqa doctor`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctxqa.rag.config import Settings
from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Collection
from ctxqa.rag.db.session import Database
from ctxqa.rag.index.chunk_text import lexical_texts
from ctxqa.rag.index.lexical import LexicalIndex, Tokenizer
from ctxqa.rag.index.vector import (
    IVF_MIN_VECTORS,
    IndexParams,
    VectorIndex,
    choose_index_type,
    ivf_needs_retrain,
    meta_path_for,
)


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
        self._lex_cache: dict[int, LexicalIndex] = {}
        self._tokenizer = Tokenizer()
        self._lock = threading.RLock()

    def path(self, collection_id: int) -> Path:
        return self.settings.index_dir / f"collection-{collection_id}.faiss"

    def lexical_path(self, collection_id: int) -> Path:
        return self.settings.index_dir / f"collection-{collection_id}.bm25"

    def _load_lexical(self, collection_id: int) -> LexicalIndex | None:
        return LexicalIndex.load(self.lexical_path(collection_id), self.settings.bm25_k1, self.settings.bm25_b,
                                 self._tokenizer, self.settings.lexical_window)

    def _generation(self, collection_id: int) -> int | None:
        with self.db.session() as s:
            return repo.collection_generation(s, collection_id)

    def get(self, coll: Collection, *, on_rebuild=None) -> VectorIndex:  # type: ignore[no-untyped-def]
        """The collection's index, current with the database (loaded, or rebuilt when stale)."""
        with self._lock:
            gen = self._generation(coll.id)
            if gen is None:
                raise repo.NotFound(f"collection {coll.name!r} no longer exists", field="collection")
            self._ensure_lexical(coll, gen, on_rebuild)
            cached = self._cache.get(coll.id)
            if cached is not None and cached.generation == gen:
                return cached
            loaded = VectorIndex.load(self.path(coll.id), self.params)
            if loaded is not None and loaded.generation == gen:
                self._cache[coll.id] = loaded
                return loaded
            if on_rebuild:
                on_rebuild(coll.name)
            return self._rebuild_vectors(coll)

    def get_lexical(self, coll: Collection, *, on_rebuild=None) -> LexicalIndex:  # type: ignore[no-untyped-def]
        """The collection's BM25 index, current with the database (loaded, or rebuilt when stale)."""
        with self._lock:
            gen = self._generation(coll.id)
            if gen is None:
                raise repo.NotFound(f"collection {coll.name!r} no longer exists", field="collection")
            return self._ensure_lexical(coll, gen, on_rebuild)

    def get_both(self, coll: Collection) -> tuple[VectorIndex, LexicalIndex]:
        """Both indexes at one generation (what retrieval uses)."""
        with self._lock:
            vec = self.get(coll)
            lex = self._lex_cache[coll.id]
            return vec, lex

    def _ensure_lexical(self, coll: Collection, gen: int, on_rebuild=None) -> LexicalIndex:  # type: ignore[no-untyped-def]
        cached = self._lex_cache.get(coll.id)
        if cached is not None and cached.generation == gen:
            return cached
        loaded = self._load_lexical(coll.id)
        if loaded is not None and loaded.generation == gen:
            self._lex_cache[coll.id] = loaded
            return loaded
        if on_rebuild:
            on_rebuild(coll.name)
        return self.rebuild_lexical(coll)

    def rebuild(self, coll: Collection) -> VectorIndex:
        """Rebuild both indexes from the database (stored vectors and chunk texts) and save them
        (`ctxqa reindex`, `ctxqa doctor --repair`); returns the vector index."""
        with self._lock:
            idx = self._rebuild_vectors(coll)
            self.rebuild_lexical(coll)
            return idx

    def rebuild_lexical(self, coll: Collection) -> LexicalIndex:
        """Rebuild the BM25 index from the chunk texts stored in the database and save it."""
        with self._lock:
            with self.db.session() as s:
                gen = repo.collection_generation(s, coll.id) or 0
                ids, terms = _collection_terms(s, coll.id, self.settings.lexical_window, self._tokenizer)
            lex = LexicalIndex.build(ids, None, self.settings.bm25_k1, self.settings.bm25_b, self._tokenizer,
                                     self.settings.lexical_window, terms=terms)
            lex.save(self.lexical_path(coll.id), gen)
            self._lex_cache[coll.id] = lex
            return lex

    def _rebuild_vectors(self, coll: Collection) -> VectorIndex:
        with self._lock:
            with self.db.session() as s:
                gen = repo.collection_generation(s, coll.id) or 0
                ids, vecs = repo.collection_vectors(s, coll.id, coll.embedding_dim)
            kind = choose_index_type(coll.index_type if coll.index_type != "auto" else self.settings.index_type,
                                     len(ids), self.settings.index_auto_threshold)
            if kind == "ivf" and len(ids) < IVF_MIN_VECTORS:
                kind = "flat"  # too few points to train IVF; exact search is as fast at this size
            idx = VectorIndex.build(coll.embedding_dim, kind, ids, vecs, self.params)
            idx.save(self.path(coll.id), gen)
            self._cache[coll.id] = idx
            return idx

    def apply(self, coll: Collection, generation: int, *, add_ids: np.ndarray | None = None,
              add_vecs: np.ndarray | None = None,
              remove_ids: list[int] | None = None, relex_ids: list[int] | None = None, save: bool = True) -> None:
        """Apply a committed change to the cached indexes (loading them first if needed). The lexical index
        reads the indexed texts of `add_ids` from the database. `relex_ids`: kept chunks whose lexical text changed (their neighbours did: the
        window moved), re-indexed in the lexical index only."""
        with self._lock:
            self._apply_lexical(coll, generation, add_ids, relex_ids, remove_ids, save)
            idx = self._cache.get(coll.id)
            if idx is None or idx.generation != generation - 1 and idx.generation != generation:
                # Not in step (first use in this process, or another writer): rebuilding includes the change.
                self._rebuild_vectors(coll)
                return
            if remove_ids:
                idx.remove(remove_ids)
            if add_ids is not None and add_vecs is not None and len(add_ids):
                idx.add(add_ids, add_vecs)
            idx.generation = generation
            requested = coll.index_type if coll.index_type != "auto" else self.settings.index_type
            if requested == "auto" and (ivf_needs_retrain(idx) or idx.index_type == "flat" and choose_index_type(
                    "auto", idx.ntotal, self.settings.index_auto_threshold) != "flat"):
                # The collection grew past the size where exact search stays fast (switch to IVF once), or far
                # past the size its IVF lists were trained for (retrain).
                self._rebuild_vectors(coll)
                return
            if save:
                idx.save(self.path(coll.id), generation)

    def _apply_lexical(self, coll: Collection, generation: int, add_ids: np.ndarray | None,
                       relex_ids: list[int] | None, remove_ids: list[int] | None, save: bool) -> None:
        lex = self._lex_cache.get(coll.id)
        if lex is None or lex.generation not in (generation - 1, generation):
            loaded = self._load_lexical(coll.id)
            if loaded is not None and loaded.generation in (generation - 1, generation):
                lex = self._lex_cache[coll.id] = loaded
            else:
                self.rebuild_lexical(coll)  # reads the committed state, change included
                return
        if remove_ids:
            lex.remove(remove_ids)
        todo = [int(i) for i in add_ids] if add_ids is not None else []
        todo += [int(i) for i in relex_ids or ()]
        if todo:
            # The indexed text carries the document title, heading path and neighbouring chunks
            # (rag.chunk_text.lexical_texts), read from the committed rows. `add` replaces a re-indexed id.
            with self.db.session() as s:
                ids, terms = _lexical_rows(s, todo, self.settings.lexical_window, lex.tokenizer)
            lex.add_terms(ids, terms)
        lex.generation = generation
        if save:
            lex.save(self.lexical_path(coll.id), generation)

    def save(self, coll: Collection) -> None:
        with self._lock:
            idx = self._cache.get(coll.id)
            if idx is not None:
                idx.save(self.path(coll.id), idx.generation)
            lex = self._lex_cache.get(coll.id)
            if lex is not None:
                lex.save(self.lexical_path(coll.id), lex.generation)

    def drop(self, collection_id: int) -> None:
        with self._lock:
            self._cache.pop(collection_id, None)
            self._lex_cache.pop(collection_id, None)
            for p in (self.path(collection_id), meta_path_for(self.path(collection_id)),
                      self.lexical_path(collection_id), meta_path_for(self.lexical_path(collection_id))):
                p.unlink(missing_ok=True)

    def check(self, coll: Collection) -> IndexCheck:
        """Compare the saved vector index file with the database, without repairing (`ctxqa doctor`)."""
        return self._check(coll, self.path(coll.id), VectorIndex.load(self.path(coll.id), self.params))

    def check_lexical(self, coll: Collection) -> IndexCheck:
        """Compare the saved BM25 index file with the database, without repairing (`ctxqa doctor`)."""
        return self._check(coll, self.lexical_path(coll.id), self._load_lexical(coll.id))

    def _check(self, coll: Collection, path: Path, loaded: VectorIndex | LexicalIndex | None) -> IndexCheck:
        with self.db.session() as s:
            gen = repo.collection_generation(s, coll.id) or 0
            db_ids = repo.collection_chunk_ids(s, coll.id)
        if loaded is None:
            if not len(db_ids) and not path.exists():
                return IndexCheck(coll.name, 0, 0, gen, gen)  # nothing ingested yet: nothing to index
            return IndexCheck(coll.name, len(db_ids), 0, gen, None, missing_in_index=db_ids.tolist()[:50],
                              file_ok=False)
        idx_ids = loaded.ids()
        return IndexCheck(
            coll.name, len(db_ids), len(idx_ids), gen, loaded.generation,
            missing_in_index=np.setdiff1d(db_ids, idx_ids).tolist()[:50],
            stale_in_index=np.setdiff1d(idx_ids, db_ids).tolist()[:50],
        )

def _documents_texts(s, document_ids: list[int], window: int) -> dict[int, str]:  # type: ignore[no-untyped-def]
    """chunk id → lexical text (title, headings, the chunk in its window) for the chunks of these documents."""
    out: dict[int, str] = {}
    for doc in repo.lexical_rows_by_document(s, document_ids):
        texts = lexical_texts([(r[2], r[3], r[4]) for r in doc], window, doc[0][6], [r[5] or () for r in doc])
        out.update((int(r[0]), t) for r, t in zip(doc, texts))
    return out


def _documents_terms(s, document_ids: list[int], window: int, tokenizer: Tokenizer,  # type: ignore[no-untyped-def]
                     only: set[int] | None = None) -> dict[int, list[str]]:
    """chunk id → the terms of its lexical text (`_documents_texts`, tokenized: `Tokenizer.window_terms`) for the
    chunks of these documents (only those in `only` when given)."""
    out: dict[int, list[str]] = {}
    for doc in repo.lexical_rows_by_document(s, document_ids):
        if only is not None and not any(int(r[0]) in only for r in doc):
            continue
        terms = tokenizer.window_terms([(r[2], r[3], r[4]) for r in doc], window, doc[0][6],
                                       [r[5] or () for r in doc])
        for r, t in zip(doc, terms):
            if only is None or int(r[0]) in only:
                out[int(r[0])] = t
    return out


def _collection_texts(s, collection_id: int, window: int = 0) -> tuple[list[int], list[str]]:  # type: ignore[no-untyped-def]
    """All (chunk ids, lexical texts) of a collection, in id order."""
    texts = _documents_texts(s, repo.collection_document_ids(s, collection_id), window)
    ids = sorted(texts)
    return ids, [texts[c] for c in ids]


def _collection_terms(s, collection_id: int, window: int,  # type: ignore[no-untyped-def]
                      tokenizer: Tokenizer) -> tuple[list[int], list[list[str]]]:
    """All (chunk ids, lexical terms) of a collection, in id order."""
    terms = _documents_terms(s, repo.collection_document_ids(s, collection_id), window, tokenizer)
    ids = sorted(terms)
    return ids, [terms[c] for c in ids]


def _lexical_rows(s, chunk_ids: list[int], window: int,  # type: ignore[no-untyped-def]
                  tokenizer: Tokenizer) -> tuple[list[int], list[list[str]]]:
    """(chunk ids, lexical terms) of the given chunks that exist, in the given order."""
    docs = set(repo.document_ids_of(s, chunk_ids).values())
    found = _documents_terms(s, sorted(docs), window, tokenizer, only=set(chunk_ids))
    ids = [c for c in dict.fromkeys(chunk_ids) if c in found]
    return ids, [found[c] for c in ids]
