"""Documents: multipart upload (ingested with the CLI's pipeline), list, show, delete.

Upload safety:
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

import json
import logging
import re
import shutil
import threading
import time
import unicodedata
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Path as PathParam, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ctxqa.api.deps import (
    ApiError,
    AppState,
    JSONRoute,
    PrincipalDep,
    StateDep,
    bad_input,
    first_lone_surrogate,
    library_error,
    reject_json_constant,
    resolve_collection,
)
from ctxqa.api.keys import Principal
from ctxqa.api.routes.ask import ERRORS
from ctxqa.api.schemas import (
    ChunkOut,
    Deleted,
    DocumentDetail,
    DocumentList,
    DocumentOut,
    UploadResponse,
    UploadResult,
    public_metadata,
)
from ctxqa.ingest.loaders import html as html_loader
from ctxqa.ingest.loaders import markdown as md_loader
from ctxqa.ingest.loaders import pdf as pdf_loader
from ctxqa.ingest.loaders import sniff
from ctxqa.ingest.loaders import text as text_loader
from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Collection, Document

log = logging.getLogger("ctxqa.api")
router = APIRouter(tags=["documents"], route_class=JSONRoute)

MAX_ID = 2**31 - 1
FILE_FIELDS = ("files", "file")
MAX_FORM_FIELDS = 16
MAX_FIELD_BYTES = 1 << 20
SNIFF_BYTES = 8192


# ---------------------------------------------------------------------------------------------------------------
# Upload helpers
# ---------------------------------------------------------------------------------------------------------------


class UploadTooLarge(Exception):
    def __init__(self, filename: str, limit: int) -> None:
        super().__init__(filename)
        self.filename = filename
        self.limit = limit


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def sanitize_filename(name: str | None, fallback: str) -> str:
    """The base name of a client-supplied file name: no directories, no control or format characters, no
    '.'/'..', at most 255 characters. Used only as a label (the document's source), never as a path."""
    raw = unicodedata.normalize("NFC", name or "")
    raw = raw.replace("\\", "/").rsplit("/", 1)[-1]
    raw = "".join(ch for ch in raw if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"))
    raw = _CONTROL.sub("", raw).strip().strip(".").strip()
    if not raw:
        return fallback
    if len(raw) > 255:
        stem, dot, ext = raw.rpartition(".")
        raw = (stem[: 250 - len(ext)] + dot + ext) if dot and len(ext) <= 10 else raw[:255]
    return raw


TEXT_SUFFIXES = frozenset(md_loader.SUFFIXES) | frozenset(text_loader.SUFFIXES)
MEDIA_BY_SUFFIX = {".pdf": "application/pdf", ".html": "text/html", ".md": "text/markdown", ".txt": "text/plain"}


def sniff_kind(head: bytes, original: str) -> tuple[str, str] | None:
    """(suffix for the file on disk, media type) from the first bytes; None for binary/unknown content."""
    loader = sniff(head)
    if loader is None:
        return None
    if loader is pdf_loader.load:
        return ".pdf", "application/pdf"
    if loader is html_loader.load:
        return ".html", "text/html"
    # Text: the name may choose the dialect (Markdown headings, CSV...), never a non-text loader.
    suffix = Path(original).suffix.lower()
    if suffix in md_loader.SUFFIXES:
        return suffix, "text/markdown"
    if suffix in TEXT_SUFFIXES:
        return suffix, "text/plain"
    return ".txt", "text/plain"


class _UploadParser(MultiPartParser):
    """Starlette's multipart parser, with each file part written straight to a file of ours and per-file
    and per-request limits enforced while the bytes arrive."""

    def __init__(self, headers: Headers, stream: AsyncGenerator[bytes, None], *, tmpdir: Path, max_bytes: int,
                 max_files: int) -> None:
        super().__init__(headers, stream, max_files=max_files, max_fields=MAX_FORM_FIELDS,
                         max_part_size=MAX_FIELD_BYTES)
        self.tmpdir = tmpdir
        self.max_bytes = max_bytes
        self.paths: dict[int, Path] = {}  # id(UploadFile) -> file on disk
        self._written: dict[int, int] = {}

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is not None:
            upload.file.close()  # the SpooledTemporaryFile starlette made; ours goes to disk directly
            path = self.tmpdir / f"part-{len(self.paths)}"
            fh = open(path, "w+b")  # noqa: SIM115 - closed after parsing (or on error by the parser)
            upload.file = fh
            self._files_to_close_on_error.append(fh)  # type: ignore[arg-type]
            self.paths[id(upload)] = path

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self._current_part.file
        if upload is not None:
            n = self._written.get(id(upload), 0) + (end - start)
            if n > self.max_bytes:
                raise UploadTooLarge(upload.filename or "(unnamed)", self.max_bytes)
            self._written[id(upload)] = n
        super().on_part_data(data, start, end)


async def _limited(stream: AsyncGenerator[bytes, None], limit: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes", field="files")
        yield chunk


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _parse_metadata(raw: str | None) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    try:
        meta = json.loads(raw, parse_constant=reject_json_constant)
        if first_lone_surrogate(meta) is not None:
            raise ValueError("lone UTF-16 surrogate in a string")
    except ValueError as e:
        raise bad_input("metadata", f"must be a JSON object ({e})") from None
    if not isinstance(meta, dict):
        raise bad_input("metadata", "must be a JSON object such as {\"team\": \"docs\"}")
    for k in meta:
        if not k.strip() or k.startswith("_"):
            raise bad_input("metadata", f"invalid key {k!r}: keys must be non-empty and not start with '_'")
    return meta


def _ingest(state: AppState, paths: list[Path], sources: dict[Path, str], collection: str,
            meta: dict[str, Any]) -> Any:
    lock: threading.Lock = state.ingest_lock
    with lock:  # one writer at a time: ingestion updates the collection's generation and index
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
    settings = state.settings
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send the files as multipart/form-data "
                       "(curl -F files=@report.pdf)", field="files")
    max_files = settings.max_files_per_upload
    max_bytes = settings.max_upload_bytes
    body_limit = max_files * (max_bytes + 16384) + MAX_FORM_FIELDS * MAX_FIELD_BYTES
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > body_limit:
        raise ApiError(413, "payload_too_large", f"request body of {declared} bytes is larger than "
                       f"{max_files} files x max_upload_bytes ({max_bytes})", field="files")

    upload_root = settings.data_dir / "uploads"
    tmpdir = upload_root / uuid.uuid4().hex
    tmpdir.mkdir(parents=True, exist_ok=False)
    t0 = time.perf_counter()
    try:
        parser = _UploadParser(request.headers, _limited(request.stream(), body_limit), tmpdir=tmpdir,
                               max_bytes=max_bytes, max_files=max_files)
        try:
            form = await parser.parse()
        except UploadTooLarge as e:
            raise ApiError(413, "payload_too_large", f"file {sanitize_filename(e.filename, '(unnamed)')!r} "
                           f"exceeds the upload limit of {_human(e.limit)} (max_upload_bytes)",
                           field="files") from None
        except MultiPartException as e:
            if "Too many files" in e.message:
                raise ApiError(413, "payload_too_large", f"too many files: at most {max_files} per upload "
                               f"(max_files_per_upload)", field="files") from None
            raise bad_input("files", f"invalid multipart body: {e.message}") from None
        uploads: list[UploadFile] = []
        fields: dict[str, str] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in FILE_FIELDS:
                    raise bad_input(key, "unexpected file field; send files as 'files'")
                uploads.append(value)
            elif key in FILE_FIELDS:
                raise bad_input("files", "must be file parts (curl -F files=@path), not text fields")
            elif key in ("collection", "metadata"):
                if key in fields:
                    raise bad_input(key, "given more than once")
                fields[key] = value
            else:
                raise bad_input(key, "unknown form field (expected files, collection, metadata)")
        for u in uploads:
            await u.close()
        if not uploads:
            raise bad_input("files", "attach at least one file")
        coll = resolve_collection(fields.get("collection"), settings, principal)
        meta = _parse_metadata(fields.get("metadata"))

        results: list[UploadResult] = []
        to_ingest: list[Path] = []
        sources: dict[Path, str] = {}
        by_path: dict[str, int] = {}
        for i, u in enumerate(uploads):
            name = sanitize_filename(u.filename, f"upload-{i + 1}")
            path = parser.paths[id(u)]
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(SNIFF_BYTES)
            kind = sniff_kind(head, name)
            if kind is None:
                results.append(UploadResult(filename=name, status="failed", size=size,
                                            reason="unsupported content: binary data that is not a PDF "
                                                   "(supported: PDF, HTML, Markdown, plain text)"))
                continue
            suffix, media = kind
            final = path.with_name(f"{path.name}{suffix}").resolve()
            path.rename(final)
            results.append(UploadResult(filename=name, status="pending", media_type=media, size=size))
            by_path[str(final)] = len(results) - 1
            to_ingest.append(final)
            sources[final] = name
            state.metrics.ingest_bytes.inc(size)

        timings: dict[str, float] = {}
        if to_ingest:
            try:
                report = await run_in_threadpool(_ingest, state, to_ingest, sources, coll, meta)
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
        return UploadResponse(collection=coll, results=results, summary=summary, timings=timings)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Listing, details, deletion
# ---------------------------------------------------------------------------------------------------------------


def _doc_out(d: Document, collection: str) -> dict[str, Any]:
    return dict(id=d.id, collection=collection, source=d.source, title=d.title, media_type=d.media_type,
                size=d.size, sha256=d.sha256, pages=d.page_count, empty_pages=d.empty_pages or 0,
                chunk_count=d.chunk_count or 0, status=d.status, error=d.error, ingested_at=d.ingested_at,
                metadata=public_metadata(d.meta))


def _visible_document(s: Any, principal: Principal, doc_id: int) -> tuple[Document, str] | None:
    row = s.execute(select(Document, Collection.name).join(Collection, Document.collection_id == Collection.id)
                    .where(Document.id == doc_id)).first()
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
        names = {c.id: c.name for c in s.scalars(select(Collection))}
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
