"""Repository functions: the only place that writes SQL queries for collections, documents and chunks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ctxqa.rag.db.models import Chunk, Collection, Document, utcnow
from ctxqa.rag.types import Hit

# Ids per `IN (...)` list in queries over arbitrarily many ids: well under SQLite's bound on bound parameters
# (32,766) and PostgreSQL's (65,535).
IN_BATCH = 5000


class NotFound(LookupError):
    pass


class EmbeddingMismatch(ValueError):
    """Querying or adding to a collection with a different embedding model than the one that built it."""


def get_collection(s: Session, name: str) -> Collection | None:
    return s.scalar(select(Collection).where(Collection.name == name))


def require_collection(s: Session, name: str) -> Collection:
    coll = get_collection(s, name)
    if coll is None:
        names = ", ".join(s.scalars(select(Collection.name).order_by(Collection.name))) or "none yet"
        raise NotFound(f"collection {name!r} does not exist (collections: {names}); ingest into it first")
    return coll


def check_embedder(coll: Collection, model_name: str, dim: int) -> None:
    if coll.embedding_model != model_name or coll.embedding_dim != dim:
        raise EmbeddingMismatch(
            f"collection {coll.name!r} was built with embedding model {coll.embedding_model!r} "
            f"({coll.embedding_dim}-d) but the configured model is {model_name!r} ({dim}-d); mixing vector "
            f"spaces would silently ruin retrieval. Set CTXQA_EMBEDDING_MODEL back, or use another collection."
        )


def create_collection(s: Session, name: str, model_name: str, dim: int, index_type: str = "auto") -> Collection:
    if not name or len(name) > 200 or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ValueError(f"invalid collection name {name!r}: 1-200 characters, no slashes, not starting with '.'")
    coll = Collection(name=name, embedding_model=model_name, embedding_dim=dim, normalized=True,
                      index_type=index_type, generation=0)
    s.add(coll)
    s.flush()
    return coll


def ensure_collection(s: Session, name: str, model_name: str, dim: int, index_type: str = "auto") -> Collection:
    coll = get_collection(s, name)
    if coll is None:
        try:
            with s.begin_nested():  # a savepoint: losing the race below must not end the caller's transaction
                return create_collection(s, name, model_name, dim, index_type)
        except IntegrityError:
            # Another process (a replica) created it between our look-up and our insert: use theirs.
            coll = get_collection(s, name)
            if coll is None:
                raise
    check_embedder(coll, model_name, dim)
    return coll


def lock_collection(s: Session, collection_id: int) -> None:
    """Make this transaction the collection's only writer until it ends, across every process on the database.

    Writers read what is there (documents by source, their chunks), then change it; two replicas ingesting into
    one collection must not both decide from the same reading. PostgreSQL: `SELECT ... FOR UPDATE` on the
    collection row; other writers wait for the commit, readers never wait. SQLite has no row locks: an UPDATE
    that changes nothing takes the database's write lock at once, at the start of the transaction, instead of at
    the first real write (other writers wait for it, up to busy_timeout; WAL readers never wait).
    Raises NotFound when the collection was deleted meanwhile."""
    if s.get_bind().dialect.name == "sqlite":
        found = s.execute(update(Collection).where(Collection.id == collection_id)
                          .values(generation=Collection.generation)).rowcount
    else:
        found = s.scalar(select(Collection.id).where(Collection.id == collection_id).with_for_update())
    if not found:
        raise NotFound(f"collection id {collection_id} no longer exists (deleted while this write waited)")


def bump_generation(s: Session, collection_id: int) -> None:
    s.execute(update(Collection).where(Collection.id == collection_id)
              .values(generation=Collection.generation + 1))


def list_collections(s: Session) -> list[tuple[Collection, int, int]]:
    """(collection, documents, chunks) for each collection."""
    docs = select(Document.collection_id, func.count(Document.id).label("n")).group_by(
        Document.collection_id).subquery()
    chunks = select(Chunk.collection_id, func.count(Chunk.id).label("n")).group_by(Chunk.collection_id).subquery()
    rows = s.execute(
        select(Collection, func.coalesce(docs.c.n, 0), func.coalesce(chunks.c.n, 0))
        .outerjoin(docs, docs.c.collection_id == Collection.id)
        .outerjoin(chunks, chunks.c.collection_id == Collection.id)
        .order_by(Collection.name)
    ).all()
    return [(c, int(d), int(n)) for c, d, n in rows]


def documents_by_source(s: Session, collection_id: int, sources: Iterable[str] | None = None) -> dict[str, Document]:
    """The collection's documents by source (only those `sources`, when given)."""
    q = select(Document).where(Document.collection_id == collection_id)
    if sources is None:
        return {d.source: d for d in s.scalars(q)}
    wanted = list(dict.fromkeys(sources))
    out: dict[str, Document] = {}
    for i in range(0, len(wanted), IN_BATCH):
        out.update((d.source, d) for d in s.scalars(q.where(Document.source.in_(wanted[i:i + IN_BATCH]))))
    return out


def list_documents(s: Session, collection_id: int | None = None, *, offset: int = 0, limit: int = 100,
                   collection_ids: Sequence[int] | None = None) -> tuple[list[Document], int]:
    q = select(Document)
    if collection_id is not None:
        q = q.where(Document.collection_id == collection_id)
    if collection_ids is not None:
        q = q.where(Document.collection_id.in_(list(collection_ids)))
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    docs = list(s.scalars(q.order_by(Document.id).offset(offset).limit(limit)))
    return docs, int(total)


def chunk_ids_of_documents(s: Session, document_ids: Iterable[int]) -> list[int]:
    ids = list(document_ids)
    if not ids:
        return []
    return list(s.scalars(select(Chunk.id).where(Chunk.document_id.in_(ids))))


def delete_chunks(s: Session, chunk_ids: Sequence[int]) -> None:
    """Delete chunks by id (any number of them). A table-level DELETE: the session's objects are not looked up."""
    ids = list(chunk_ids)
    for i in range(0, len(ids), IN_BATCH):
        s.execute(Chunk.__table__.delete().where(Chunk.id.in_(ids[i:i + IN_BATCH])))


def delete_documents(s: Session, documents: Sequence[Document]) -> list[int]:
    """Delete documents and their chunks; returns the removed chunk ids (to remove from the indexes)."""
    if not documents:
        return []
    doc_ids = [d.id for d in documents]
    chunk_ids = chunk_ids_of_documents(s, doc_ids)
    s.execute(delete(Chunk).where(Chunk.document_id.in_(doc_ids)))
    s.execute(delete(Document).where(Document.id.in_(doc_ids)))
    for cid in {d.collection_id for d in documents}:
        bump_generation(s, cid)
    return chunk_ids


def collection_vectors(s: Session, collection_id: int, dim: int, batch: int = 20_000
                       ) -> tuple[np.ndarray, np.ndarray]:
    """All (chunk ids, vectors) of a collection, streamed in batches to bound memory."""
    ids: list[np.ndarray] = []
    vecs: list[np.ndarray] = []
    last = -1
    while True:
        rows = s.execute(select(Chunk.id, Chunk.embedding).where(Chunk.collection_id == collection_id,
                                                                  Chunk.id > last)
                         .order_by(Chunk.id).limit(batch)).all()
        if not rows:
            break
        ids.append(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))
        vecs.append(np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim))
        last = rows[-1][0]
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(ids), np.vstack(vecs)


def collection_chunk_ids(s: Session, collection_id: int) -> np.ndarray:
    ids = s.scalars(select(Chunk.id).where(Chunk.collection_id == collection_id).order_by(Chunk.id)).all()
    return np.asarray(ids, dtype=np.int64)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    return str(value)


def hits_for(s: Session, scored: Sequence[tuple[int, float]], collection_name: str,
             extra_scores: dict[int, dict[str, float]] | None = None) -> list[Hit]:
    """Turn (chunk id, score) pairs into Hits, preserving order; ids no longer in the database are dropped."""
    if not scored:
        return []
    ids = [cid for cid, _ in scored]
    rows = {c.id: (c, d) for c, d in s.execute(
        select(Chunk, Document).join(Document, Chunk.document_id == Document.id).where(Chunk.id.in_(ids)))}
    hits: list[Hit] = []
    for cid, score in scored:
        if cid not in rows:
            continue
        c, d = rows[cid]
        meta = dict(d.meta or {})
        meta.update(c.meta or {})
        hits.append(Hit(
            chunk_id=c.id, score=float(score), document_id=d.id, collection=collection_name, ordinal=c.ordinal,
            text=c.text, char_start=c.char_start, char_end=c.char_end, source=d.source, title=d.title,
            date=_iso(meta.get("date")) or _iso(d.mtime), url=meta.get("url"), page_start=c.page_start,
            page_end=c.page_end, heading_path=tuple(c.heading_path or ()), metadata=meta,
            scores=dict((extra_scores or {}).get(cid, {})),
        ))
    return hits


def neighbours(s: Session, document_id: int, ordinals: Iterable[int]) -> list[Chunk]:
    ords = list(ordinals)
    if not ords:
        return []
    return list(s.scalars(select(Chunk).where(Chunk.document_id == document_id, Chunk.ordinal.in_(ords))
                          .order_by(Chunk.ordinal)))


def mark_ingested(doc: Document) -> None:
    doc.status = "ingested"
    doc.error = None
    doc.ingested_at = utcnow()
