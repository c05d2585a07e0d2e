"""Repository functions: the only place that writes SQL queries for collections, documents and chunks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from itertools import groupby
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ctxqa.rag.db.models import AnswerLog, ApiKey, Chunk, Collection, Document, utcnow
from ctxqa.rag.errors import InvalidInput
from ctxqa.rag.types import Hit

if TYPE_CHECKING:
    from ctxqa.rag.retrieve.filters import Filters


# Ids per `IN (...)` list in queries over arbitrarily many ids: well under SQLite's bound on bound parameters
# (32,766) and PostgreSQL's (65,535).
IN_BATCH = 5000


class NotFound(LookupError):
    """No such collection / document. `field` names the request field that named it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class EmbeddingMismatch(InvalidInput):
    """Querying or adding to a collection with a different embedding model than the one that built it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="collection")


def get_collection(s: Session, name: str) -> Collection | None:
    return s.scalar(select(Collection).where(Collection.name == name))


def require_collection(s: Session, name: str) -> Collection:
    coll = get_collection(s, name)
    if coll is None:
        names = ", ".join(s.scalars(select(Collection.name).order_by(Collection.name))) or "none yet"
        raise NotFound(f"collection {name!r} does not exist (collections: {names}); ingest into it first",
                       field="collection")
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
        result: Any = s.execute(update(Collection).where(Collection.id == collection_id)
                                .values(generation=Collection.generation))
        found = result.rowcount
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


def insert_chunks(s: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Insert chunk rows; their ids, in the order given.

    Multi-row INSERT ... RETURNING instead of the ORM's per-object bookkeeping and a flush per document: those
    were about half of the writer thread's time on SciFact (5,183 small files). A database without RETURNING on
    multi-row inserts (SQLite before 3.35) gets the ORM's row-by-row inserts."""
    if s.get_bind().dialect.insert_executemany_returning_sort_by_parameter_order:
        return [int(i) for i in s.scalars(insert(Chunk).returning(Chunk.id, sort_by_parameter_order=True), rows)]
    objs = [Chunk(**r) for r in rows]
    s.add_all(objs)
    s.flush()
    return [int(o.id) for o in objs]


def delete_chunks(s: Session, chunk_ids: Sequence[int]) -> None:
    """Delete chunks by id (any number of them). A table-level DELETE: the session's objects are not looked up."""
    ids = list(chunk_ids)
    for i in range(0, len(ids), IN_BATCH):
        s.execute(delete(Chunk).where(Chunk.id.in_(ids[i:i + IN_BATCH])).execution_options(synchronize_session=False))


def delete_documents(s: Session, documents: Sequence[Document]) -> list[int]:
    """Delete documents and their chunks; returns the removed chunk ids (to remove from the indexes)."""
    if not documents:
        return []
    doc_ids = [d.id for d in documents]
    chunk_ids = chunk_ids_of(s, doc_ids).tolist()
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
            date=_iso(meta.get("date")) or d.date or _iso(d.mtime), url=meta.get("url"), page_start=c.page_start,
            page_end=c.page_end, heading_path=tuple(c.heading_path or ()), metadata=meta,
            title_source=d.title_source, date_source=d.date_source if not (c.meta or {}).get("date") else "metadata",
            period=d.period, scores=dict((extra_scores or {}).get(cid, {})),
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


# ---------------------------------------------------------------------------------------------------------------
# Generations, statistics, single rows
# ---------------------------------------------------------------------------------------------------------------


def collection_generation(s: Session, collection_id: int) -> int | None:
    """The collection's write counter (bumped by every committed change; index files are stamped with it), or
    None when the collection no longer exists."""
    gen = s.scalar(select(Collection.generation).where(Collection.id == collection_id))
    return None if gen is None else int(gen)


def get_document(s: Session, document_id: int) -> Document | None:
    return s.get(Document, document_id)


def delete_collection(s: Session, coll: Collection) -> None:
    s.delete(coll)


def totals(s: Session) -> dict[str, int]:
    """Failed documents, PDF pages and chunk tokens over every collection (`ctxqa stats`)."""
    failed = s.scalar(select(func.count(Document.id)).where(Document.status == "failed")) or 0
    pages = s.scalar(select(func.coalesce(func.sum(Document.page_count), 0))) or 0
    tokens = s.scalar(select(func.coalesce(func.sum(Chunk.token_count), 0))) or 0
    return {"failed_documents": int(failed), "pdf_pages": int(pages), "chunk_tokens": int(tokens)}


def chunk_texts(s: Session, chunk_ids: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    ids = list(chunk_ids)
    for i in range(0, len(ids), IN_BATCH):
        out.update((int(c), t) for c, t in s.execute(select(Chunk.id, Chunk.text).where(Chunk.id.in_(ids[i:i + IN_BATCH]))))
    return out


def document_ids_of(s: Session, chunk_ids: Sequence[int]) -> dict[int, int]:
    """chunk id -> its document id."""
    out: dict[int, int] = {}
    ids = list(chunk_ids)
    for i in range(0, len(ids), IN_BATCH):
        out.update((int(c), int(d)) for c, d in s.execute(
            select(Chunk.id, Chunk.document_id).where(Chunk.id.in_(ids[i:i + IN_BATCH]))).all())
    return out


# ---------------------------------------------------------------------------------------------------------------
# Filters: the chunk ids a filtered search may return
# ---------------------------------------------------------------------------------------------------------------


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def allowed_document_ids(s: Session, collection_id: int, filters: Filters) -> list[int]:
    """Ids of the collection's ingested documents that pass `filters`."""
    q = select(Document.id, Document.source, Document.meta, Document.mtime).where(
        Document.collection_id == collection_id, Document.status == "ingested")
    if filters.source_prefix:
        q = q.where(Document.source.like(_like_escape(filters.source_prefix) + "%", escape="\\"))
    rows: list[Any] = []
    if filters.document_ids is not None:
        ids = list(filters.document_ids)
        for i in range(0, len(ids), IN_BATCH):
            rows.extend(s.execute(q.where(Document.id.in_(ids[i:i + IN_BATCH]))).all())
    else:
        rows = list(s.execute(q).all())
    return sorted(int(r[0]) for r in rows
                  if filters.matches(document_id=int(r[0]), source=r[1], meta=r[2], mtime=r[3]))


def chunk_ids_of(s: Session, document_ids: Iterable[int]) -> np.ndarray:
    """Sorted ids of the documents' chunks."""
    out: list[int] = []
    ids = list(document_ids)
    for i in range(0, len(ids), IN_BATCH):
        out.extend(s.scalars(select(Chunk.id).where(Chunk.document_id.in_(ids[i:i + IN_BATCH]))))
    return np.asarray(sorted(out), dtype=np.int64)


def allowed_chunk_ids(s: Session, collection_id: int, filters: Filters | None) -> np.ndarray | None:
    """Sorted chunk ids a filtered search may return; None when `filters` restricts nothing."""
    if filters is None or filters.is_empty():
        return None
    return chunk_ids_of(s, allowed_document_ids(s, collection_id, filters))


# ---------------------------------------------------------------------------------------------------------------
# Rows for the indexes, the API and the keys
# ---------------------------------------------------------------------------------------------------------------

# What the lexical index needs of each chunk, in this order.
LEXICAL_COLUMNS = (Chunk.id, Chunk.document_id, Chunk.text, Chunk.char_start, Chunk.char_end, Chunk.heading_path,
                   func.coalesce(Document.context, Document.title))  # the header the document's chunks were indexed under


def lexical_rows_by_document(s: Session, document_ids: Sequence[int]) -> Iterator[list[Any]]:
    """Each document's `LEXICAL_COLUMNS` rows, in ordinal order, one list per document."""
    ids = list(document_ids)
    for i in range(0, len(ids), 500):
        rows = s.execute(select(*LEXICAL_COLUMNS).join(Document, Chunk.document_id == Document.id)
                         .where(Chunk.document_id.in_(ids[i:i + 500]))
                         .order_by(Chunk.document_id, Chunk.ordinal)).all()
        for _, group in groupby(rows, key=lambda r: r[1]):
            yield list(group)


def collection_document_ids(s: Session, collection_id: int) -> list[int]:
    return [int(d) for d in s.scalars(select(Document.id).where(Document.collection_id == collection_id)
                                      .order_by(Document.id))]


def documents_in(s: Session, collection_id: int, document_ids: Iterable[int]) -> list[Document]:
    """Those of the documents that belong to the collection."""
    return list(s.scalars(select(Document).where(Document.id.in_(list(document_ids)),
                                                 Document.collection_id == collection_id)))


def chunks_of_documents(s: Session, document_ids: Sequence[int]) -> list[Chunk]:
    return list(s.scalars(select(Chunk).where(Chunk.document_id.in_(list(document_ids)))))


def document_with_collection(s: Session, document_id: int) -> tuple[Document, str] | None:
    row = s.execute(select(Document, Collection.name).join(Collection, Document.collection_id == Collection.id)
                    .where(Document.id == document_id)).first()
    return None if row is None else (row[0], row[1])


def document_periods(s: Session, chunk_ids: Sequence[int]) -> dict[int, tuple[int, str | None, str | None, str | None,
                                                                              str, str | None]]:
    """chunk id -> (document id, date, date source, period, source, title) of the chunks' documents."""
    out: dict[int, tuple[int, str | None, str | None, str | None, str, str | None]] = {}
    ids = list(chunk_ids)
    for i in range(0, len(ids), IN_BATCH):
        rows = s.execute(select(Chunk.id, Document.id, Document.date, Document.date_source, Document.period,
                                Document.source, Document.title).join(Document, Chunk.document_id == Document.id)
                         .where(Chunk.id.in_(ids[i:i + IN_BATCH])))
        out.update((int(r[0]), (int(r[1]), r[2], r[3], r[4], r[5], r[6])) for r in rows)
    return out


def ingest_stamps(s: Session, document_ids: Sequence[int]) -> dict[int, datetime]:
    """document id -> when it was last ingested (a writer's reading, checked again under the collection lock)."""
    out: dict[int, datetime] = {}
    ids = list(document_ids)
    for i in range(0, len(ids), IN_BATCH):
        out.update((int(d), t) for d, t in s.execute(
            select(Document.id, Document.ingested_at).where(Document.id.in_(ids[i:i + IN_BATCH]))))
    return out


def chunks_with_headers(s: Session, document_ids: Sequence[int]) -> list[tuple[Chunk, str | None]]:
    """The documents' chunks, each with the header its document's chunks are indexed under (one snapshot)."""
    out: list[tuple[Chunk, str | None]] = []
    ids = list(document_ids)
    for i in range(0, len(ids), IN_BATCH):
        out.extend((c, h) for c, h in s.execute(
            select(Chunk, func.coalesce(Document.context, Document.title)).join(Document, Chunk.document_id == Document.id)
            .where(Chunk.document_id.in_(ids[i:i + IN_BATCH]))))
    return out


def collection_names(s: Session) -> dict[int, str]:
    return {c.id: c.name for c in s.scalars(select(Collection))}


def get_answer_log(s: Session, answer_id: int) -> AnswerLog | None:
    return s.get(AnswerLog, answer_id)


def ping(s: Session) -> None:
    """A round trip to the database (readiness)."""
    s.execute(text("SELECT 1"))


def key_by_name(s: Session, name: str) -> ApiKey | None:
    return s.scalar(select(ApiKey).where(ApiKey.name == name))


def key_by_hash(s: Session, digest: str) -> ApiKey | None:
    return s.scalar(select(ApiKey).where(ApiKey.key_hash == digest))


def all_keys(s: Session) -> list[ApiKey]:
    return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def document_digests(s: Session) -> set[str]:
    """The sha256 of every PDF document (the kept copies that are still needed, rag/originals.py)."""
    return set(s.scalars(select(Document.sha256).where(Document.media_type == "application/pdf")))


def chunks_overlapping(s: Session, document_id: int, start: int, end: int) -> list[Chunk]:
    """The document's chunks that overlap [start, end) of its text, in text order."""
    return list(s.scalars(select(Chunk).where(Chunk.document_id == document_id, Chunk.char_start < end,
                                              Chunk.char_end > start).order_by(Chunk.char_start)))
