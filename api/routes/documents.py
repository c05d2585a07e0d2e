"""Documents: upload (received by api/uploads.py, ingested with the CLI's pipeline), list, show, delete.

Upload safety (api/uploads.py):
- The body is parsed as it arrives; each file part is written straight to its own file in a fresh directory
  under `<data_dir>/uploads/` (never held in memory), and the request is refused with 413 as soon as one file
  passes `max_upload_bytes` or the request carries more than `max_files_per_upload` files.
- The client's file name is never used as a path: files on disk are named `part-N<ext>`; the sanitised base name
  only becomes the document's `source` (passed to `Ingestor.ingest(sources=...)`).
- The content type is sniffed from the bytes (PDF magic, HTML tags, UTF-8/UTF-16 text); the declared
  Content-Type and the file name's extension do not choose the loader (the extension only picks the text
  dialect, e.g. Markdown, once the bytes are known to be text).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from ctxqa.api.deps import PrincipalDep, StateDep
from ctxqa.api.errors import ERRORS, ApiError, library_error
from ctxqa.api.jsonbody import JSONRoute
from ctxqa.api.keys import Principal
from ctxqa.api.schemas import ChunkOut, Deleted, DocumentDetail, DocumentList, DocumentOut, UploadResponse, UploadResult
from ctxqa.api.state import AppState
from ctxqa.api.uploads import receive_upload
from ctxqa.api.validation import resolve_collection
from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Document
from ctxqa.rag.views import public_metadata

log = logging.getLogger("ctxqa.api")
router = APIRouter(tags=["documents"], route_class=JSONRoute)

MAX_ID = 2**31 - 1



def _ingest(state: AppState, paths: list[Path], sources: dict[Path, str], collection: str,
            meta: dict[str, Any]) -> Any:
    with state.ingest_lock:  # one writer at a time: ingestion updates the collection's generation and index
        return state.services.ingestor.ingest(paths, collection=collection, meta=meta, sources=sources)


@router.post(
    "/v1/documents", response_model=UploadResponse,
    responses={**{k: v for k, v in ERRORS.items() if k != 503},
               413: {"model": ERRORS[422]["model"], "description": "A file exceeds max_upload_bytes, or too many "
                                                                    "files (max_files_per_upload)"},
               415: {"model": ERRORS[422]["model"], "description": "The body is not multipart/form-data"}},
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "One or more files (PDF, Markdown, HTML, text); repeat the field."},
            "collection": {"type": "string", "description": "Target collection (created if missing)."},
            "metadata": {"type": "string", "description": "A JSON object of metadata for every file."},
        }}}}}},
)
async def upload_documents(request: Request, state: StateDep, principal: PrincipalDep) -> UploadResponse:
    """Upload and ingest files. Re-uploading a file with the same name updates that document."""
    t0 = time.perf_counter()
    async with receive_upload(request, state.settings, principal) as upload:
        results: list[UploadResult] = []
        to_ingest: list[Path] = []
        sources: dict[Path, str] = {}
        by_path: dict[str, int] = {}
        for f in upload.files:
            if f.media_type is None:
                results.append(UploadResult(filename=f.filename, status="failed", size=f.size,
                                            reason="unsupported content: binary data that is not a PDF "
                                                   "(supported: PDF, HTML, Markdown, plain text)"))
                continue
            results.append(UploadResult(filename=f.filename, status="pending", media_type=f.media_type, size=f.size))
            by_path[str(f.path)] = len(results) - 1
            to_ingest.append(f.path)
            sources[f.path] = f.filename
            state.metrics.ingest_bytes.inc(f.size)

        timings: dict[str, float] = {}
        if to_ingest:
            try:
                report = await run_in_threadpool(_ingest, state, to_ingest, sources, upload.collection, upload.metadata)
            except Exception as exc:
                err = library_error(exc, "collection")
                if err.code == "internal_error":
                    log.error("ingestion failed", exc_info=exc)
                raise err from None
            timings = {k: round(float(v), 6) for k, v in report.timings.items()}
            for r in report.results:
                idx = by_path.get(r.path)
                if idx is None:
                    continue
                res = results[idx]
                res.status, res.reason, res.document_id = r.status, r.reason, r.document_id
                res.pages, res.chunks = r.pages, r.chunks
                state.metrics.ingest_chunks.inc(r.chunks if r.status in ("added", "updated") else 0)
        for res in results:
            if res.status == "pending":  # not reported by the pipeline (should not happen)
                res.status, res.reason = "failed", "not ingested"
            state.metrics.ingest_files.labels(res.status).inc()
        summary: dict[str, int] = {}
        for res in results:
            summary[res.status] = summary.get(res.status, 0) + 1
        timings.setdefault("total", 0.0)
        timings["request"] = round(time.perf_counter() - t0, 6)
        state.metrics.ingest_seconds.observe(time.perf_counter() - t0)
        return UploadResponse(collection=upload.collection, results=results, summary=summary, timings=timings)


# ---------------------------------------------------------------------------------------------------------------
# Listing, details, deletion
# ---------------------------------------------------------------------------------------------------------------


def _doc_out(d: Document, collection: str) -> dict[str, Any]:
    return dict(id=d.id, collection=collection, source=d.source, title=d.title, title_source=d.title_source,
                date=d.date, date_source=d.date_source, period=d.period, media_type=d.media_type,
                size=d.size, sha256=d.sha256, pages=d.page_count, empty_pages=d.empty_pages or 0,
                chunk_count=d.chunk_count or 0, status=d.status, error=d.error, ingested_at=d.ingested_at,
                metadata=public_metadata(d.meta))


def _visible_document(s: Any, principal: Principal, doc_id: int) -> tuple[Document, str] | None:
    row = repo.document_with_collection(s, doc_id)
    if row is None:
        return None
    doc, coll = row
    if not principal.allows(coll):
        return None  # a key never learns that documents of other collections exist
    return doc, coll


@router.get("/v1/documents", response_model=DocumentList, responses={
    k: v for k, v in ERRORS.items() if k in (401, 403, 404, 422)})
def list_documents(state: StateDep, principal: PrincipalDep,
                   collection: Annotated[str | None, Query(max_length=200)] = None,
                   offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> DocumentList:
    """List documents (paged), optionally of one collection; only collections the key may use are listed."""
    with state.services.db.session() as s:
        names = repo.collection_names(s)
        if collection is not None:
            name = resolve_collection(collection, state.settings, principal)
            try:
                coll = repo.require_collection(s, name)
            except repo.NotFound as e:
                raise ApiError(404, "not_found", str(e), field="collection") from None
            docs, total = repo.list_documents(s, coll.id, offset=offset, limit=limit)
        elif principal.admin or principal.collections is None:
            docs, total = repo.list_documents(s, offset=offset, limit=limit)
        else:
            allowed = [cid for cid, n in names.items() if principal.allows(n)]
            docs, total = repo.list_documents(s, offset=offset, limit=limit, collection_ids=allowed)
        out = [DocumentOut(**_doc_out(d, names.get(d.collection_id, "?"))) for d in docs]
    return DocumentList(total=total, offset=offset, limit=limit, documents=out)


@router.get("/v1/documents/{doc_id}", response_model=DocumentDetail, responses={
    k: v for k, v in ERRORS.items() if k in (401, 404, 422)})
def get_document(state: StateDep, principal: PrincipalDep, doc_id: Annotated[int, PathParam(ge=1, le=MAX_ID)],
                 include_chunks: Annotated[bool, Query(description="Also return the chunks.")] = False
                 ) -> DocumentDetail:
    """A document's metadata, page and chunk counts (and its chunks with ?include_chunks=true)."""
    with state.services.db.session() as s:
        found = _visible_document(s, principal, doc_id)
        if found is None:
            raise ApiError(404, "not_found", f"no document with id {doc_id}")
        doc, coll = found
        chunks = None
        if include_chunks:
            chunks = [ChunkOut(id=c.id, ordinal=c.ordinal,
                               pages=list(range(c.page_start, (c.page_end or c.page_start) + 1))
                               if c.page_start else [], heading_path=list(c.heading_path or []),
                               token_count=c.token_count, char_start=c.char_start, char_end=c.char_end, text=c.text)
                      for c in doc.chunks]
        return DocumentDetail(**_doc_out(doc, coll), chunks=chunks)


def _find(state: AppState, principal: Principal, doc_id: int) -> tuple[int, str] | None:
    with state.services.db.session() as s:
        found = _visible_document(s, principal, doc_id)
        return (found[0].id, found[1]) if found else None


def _delete(state: AppState, coll: str, doc_id: int) -> int:
    with state.ingest_lock:
        return int(state.services.ingestor.delete_documents(coll, [doc_id]))


@router.delete("/v1/documents/{doc_id}", response_model=Deleted, responses={
    k: v for k, v in ERRORS.items() if k in (401, 404, 422)})
async def delete_document(state: StateDep, principal: PrincipalDep,
                          doc_id: Annotated[int, PathParam(ge=1, le=MAX_ID)]) -> Deleted:
    """Delete a document from the database and the indexes: later searches never return its chunks."""
    found = await run_in_threadpool(_find, state, principal, doc_id)
    if found is None:
        raise ApiError(404, "not_found", f"no document with id {doc_id}")
    _, coll = found
    try:
        n = await run_in_threadpool(_delete, state, coll, doc_id)
    except Exception as exc:
        raise library_error(exc) from None
    if n == 0:
        raise ApiError(404, "not_found", f"no document with id {doc_id}")
    return Deleted(id=doc_id)
