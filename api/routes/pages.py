"""The evidence viewer's endpoints: a PDF page as an image, where a span lies on it, and the text around a span.

    GET /v1/documents/{id}/pages/{n}.png          the page rendered by PDFium (?start=&end= paints the span)
    GET /v1/documents/{id}/pages/{n}/boxes        where [start, end) of the document's text lies on page n
    GET /v1/documents/{id}/text                   the span [start, end) with its surroundings and heading path

Spans are offsets in the document's text as ingested: the `char_start`/`char_end` of a citation, a sentence's
evidence or a chunk. Authorisation is the documents' own: a key scoped to other collections gets 403. Responses
carry an ETag built from the document's sha256, so a client revalidates with If-None-Match and gets 304 until the
document is re-ingested with other bytes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from ctxqa.api.deps import PrincipalDep, StateDep
from ctxqa.api.errors import ERRORS, ApiError
from ctxqa.api.jsonbody import JSONRoute
from ctxqa.api.keys import Principal
from ctxqa.api.schemas import BoxOut, PageBoxesOut, SpanTextOut
from ctxqa.api.state import AppState
from ctxqa.ingest.loaders import pdf_pages
from ctxqa.ingest.loaders.base import LoadError
from ctxqa.rag.db import repo
from ctxqa.rag.originals import OriginalStore, file_sha256
from ctxqa.rag.spans import clip_to_page, heading_path_at, pages_of, stitch

log = logging.getLogger("ctxqa.api")
router = APIRouter(tags=["documents"], route_class=JSONRoute)

MAX_ID = 2**31 - 1
MAX_OFFSET = 2**31 - 1
MAX_SPAN = 20_000  # characters of one span shown at once
MAX_CONTEXT = 4_000
RENDER_VERSION = "2"  # bump when the rendering or the boxes change: clients' cached copies become stale
CACHE_CONTROL = "private, no-cache"  # keep, but ask again (If-None-Match) before reuse: cheap 304s
PDF = "application/pdf"
_LAYOUTS_MAX = 256

_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{k: v for k, v in ERRORS.items() if k in (401, 403, 422)},
    404: {"model": ERRORS[422]["model"], "description": "No such document or page, or its PDF is no longer kept"},
    409: {"model": ERRORS[422]["model"], "description": "The document is not a PDF (use /text), or its PDF "
                                                         "cannot be opened"},
}


@dataclass(frozen=True)
class _Doc:
    id: int
    collection: str
    source: str
    title: str | None
    media_type: str
    sha256: str
    path: str | None
    page_count: int | None
    page_spans: list[tuple[int, int]] | None
    sections: list[tuple[int, int, list[str]]] | None  # (start, end, heading path), when stored at ingestion
    extractor: str | None
    stamp: str  # when it was last ingested: part of every ETag (same bytes re-chunked is another version)


def _document(state: AppState, principal: Principal, doc_id: int) -> _Doc:
    with state.services.db.session() as s:
        row = repo.document_with_collection(s, doc_id)
        if row is None or row[0].status != "ingested":
            raise ApiError(404, "not_found", f"no document with id {doc_id}")
        doc, coll = row
        if not principal.allows(coll):
            raise ApiError(403, "forbidden", f"this key may not read document {doc_id}'s collection")
        meta = doc.meta or {}
        spans = meta.get("_page_spans")
        sections = meta.get("_sections")
        return _Doc(doc.id, coll, doc.source, doc.title, doc.media_type, doc.sha256, doc.path, doc.page_count,
                    [(int(a), int(b)) for a, b in spans] if isinstance(spans, list) else None,
                    [(int(a), int(b), [str(h) for h in hs]) for a, b, hs in sections]
                    if isinstance(sections, list) else None,
                    meta.get("extractor"), doc.ingested_at.isoformat() if doc.ingested_at else "")


def _pdf(state: AppState, d: _Doc) -> Path:
    """The PDF the document was ingested from: the kept copy, or the original path if its bytes are the same."""
    if d.media_type != PDF:
        raise ApiError(409, "not_a_pdf", f"document {d.id} is {d.media_type}: it has no pages to render; "
                                         f"GET /v1/documents/{d.id}/text shows a span of it")
    kept = OriginalStore(state.settings.originals_dir).get(d.sha256)
    if kept is not None:
        return kept
    if d.path:
        p = Path(d.path)
        try:
            st = p.stat()
            if stat.S_ISREG(st.st_mode) and _digest(str(p), st.st_mtime_ns, st.st_size) == d.sha256:
                return p
        except OSError:
            pass
    raise ApiError(404, "original_missing", f"the PDF of document {d.id} ({d.source}) is no longer available "
                                            f"to render: ingest the file again to view its pages")


@functools.lru_cache(maxsize=256)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """A file's sha256, hashed once per version of the file (its mtime and size are part of the key)."""
    return file_sha256(Path(path))


def _spans(state: AppState, d: _Doc, pdf: Path) -> list[tuple[int, int]]:
    if d.page_spans is not None:
        return d.page_spans
    cached = state.page_layouts.get(d.sha256)
    if cached is None:  # ingested before the spans were stored: read the pages again, once
        cached = [(p.start, p.end) for p in pdf_pages.page_spans(pdf)]
        if len(state.page_layouts) >= _LAYOUTS_MAX:
            state.page_layouts.clear()
        state.page_layouts[d.sha256] = cached
    return cached


def _check_page(d: _Doc, spans: list[tuple[int, int]], page: int) -> None:
    if page > len(spans):
        raise ApiError(404, "not_found", f"document {d.id} has {len(spans)} page(s); there is no page {page}",
                       field="page")


def _check_span(start: int | None, end: int | None, *, required: bool) -> tuple[int, int] | None:
    if start is None and end is None and not required:
        return None
    if start is None or end is None:
        missing = "start" if start is None else "end"
        raise ApiError(422, "validation_error", f"{missing}: give both start and end (a span of the document's "
                                                f"text)", field=missing)
    if end < start:
        raise ApiError(422, "validation_error", f"end: must not be before start ({end} < {start})", field="end")
    if end - start > MAX_SPAN:
        raise ApiError(422, "validation_error", f"end: a span is at most {MAX_SPAN} characters "
                                                f"(asked for {end - start})", field="end")
    return start, end


def _page_text(state: AppState, d: _Doc, spans: list[tuple[int, int]], page: int) -> str | None:
    """The page's text as ingested, when reading the page again with PDFium might not give the same text."""
    if d.extractor in (None, "pdfium") and d.page_spans is not None:
        return None
    a, b = spans[page - 1]
    with state.services.db.session() as s:
        return stitch([(c.char_start, c.text) for c in repo.chunks_overlapping(s, d.id, a, b)], a, b)


def _boxes(state: AppState, d: _Doc, pdf: Path, spans: list[tuple[int, int]], page: int, start: int, end: int
           ) -> pdf_pages.PageBoxes:
    a, b = clip_to_page(spans, page, start, end)
    try:
        return pdf_pages.span_boxes(pdf, page, a, b, page_text=_page_text(state, d, spans, page))
    except LoadError as e:
        raise ApiError(409, "unreadable_pdf", str(e)) from None


def _etag(*parts: object) -> str:
    return '"' + hashlib.sha256(":".join(str(p) for p in (RENDER_VERSION, *parts)).encode()).hexdigest()[:32] + '"'


def _not_modified(request: Request, etag: str) -> Response | None:
    inm = request.headers.get("if-none-match")
    if inm and (inm.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in inm.split(",")]):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})
    return None


@router.get("/v1/documents/{doc_id}/pages/{page}.png", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "The page as a PNG image"}, 304: {"description":
          "Not modified (If-None-Match matched the ETag)"}, **_RESPONSES})
def page_image(request: Request, state: StateDep, principal: PrincipalDep,
               doc_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], page: Annotated[int, PathParam(ge=1, le=100_000)],
               start: Annotated[int | None, Query(ge=0, le=MAX_OFFSET, description=(
                   "Highlight [start, end) of the document's text (e.g. a citation's char_start)."))] = None,
               end: Annotated[int | None, Query(ge=0, le=MAX_OFFSET)] = None,
               scale: Annotated[float | None, Query(ge=0.25, le=4.0, description=(
                   "Pixels per PDF point (default: settings.page_scale)."))] = None) -> Response:
    """Page `page` (1-based) of a PDF document as a PNG rendered by the server, optionally with a span painted."""
    span = _check_span(start, end, required=False)
    d = _document(state, principal, doc_id)
    pdf = _pdf(state, d)
    spans = _spans(state, d, pdf)
    _check_page(d, spans, page)
    sc = round(scale if scale is not None else state.settings.page_scale, 3)
    etag = _etag(d.sha256, d.stamp, page, sc, span)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if (nm := _not_modified(request, etag)) is not None:
        return nm
    key = (d.sha256, page, sc, span)
    png = state.page_images.get(key)
    t0 = time.perf_counter()
    if png is None:
        highlight = _boxes(state, d, pdf, spans, page, *span).boxes if span else []
        try:
            png, _, _ = pdf_pages.render_page(pdf, page, scale=sc, highlight=highlight)
        except LoadError as e:
            raise ApiError(409, "unreadable_pdf", str(e)) from None
        except pdf_pages.PageOutOfRange as e:
            raise ApiError(404, "not_found", str(e), field="page") from None
        state.page_images.put(key, png)
        headers["X-Render-Seconds"] = f"{time.perf_counter() - t0:.4f}"
    else:
        headers["X-Render-Seconds"] = "0"  # served from the process's cache of rendered pages
    return Response(png, media_type="image/png", headers=headers)


@router.get("/v1/documents/{doc_id}/pages/{page}/boxes", response_model=PageBoxesOut, responses=_RESPONSES)
def page_boxes(request: Request, state: StateDep, principal: PrincipalDep,
               doc_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], page: Annotated[int, PathParam(ge=1, le=100_000)],
               start: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Start of the span in the "
                                                                           "document's text.")],
               end: Annotated[int, Query(ge=0, le=MAX_OFFSET)]) -> Any:
    """Where [start, end) of a PDF document's text lies on page `page`: boxes computed from the characters'
    positions, as fractions of the page (lay them over the page image)."""
    _check_span(start, end, required=True)
    d = _document(state, principal, doc_id)
    pdf = _pdf(state, d)
    spans = _spans(state, d, pdf)
    _check_page(d, spans, page)
    etag = _etag("boxes", d.sha256, d.stamp, page, start, end)
    if (nm := _not_modified(request, etag)) is not None:
        return nm
    pb = _boxes(state, d, pdf, spans, page, start, end)
    out = PageBoxesOut(document_id=d.id, page=page, page_count=len(spans), width=pb.width, height=pb.height,
                       start=start, end=end, span_pages=pages_of(spans, start, end),
                       boxes=[BoxOut(**b.as_dict()) for b in pb.boxes], method=pb.method,
                       text=pb.text, image=f"/v1/documents/{d.id}/pages/{page}.png")
    return Response(out.model_dump_json(), media_type="application/json",
                    headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})


@router.get("/v1/documents/{doc_id}/text", response_model=SpanTextOut, responses={
    k: v for k, v in _RESPONSES.items() if k != 409})
def span_text(request: Request, state: StateDep, principal: PrincipalDep,
              doc_id: Annotated[int, PathParam(ge=1, le=MAX_ID)],
              start: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Start of the span in the document's "
                                                                          "text.")],
              end: Annotated[int, Query(ge=0, le=MAX_OFFSET)],
              context: Annotated[int, Query(ge=0, le=MAX_CONTEXT, description=(
                  "Characters of surrounding text on each side."))] = 300) -> Any:
    """The span [start, end) of any document's text, with the text around it and its heading path."""
    _check_span(start, end, required=True)
    d = _document(state, principal, doc_id)
    etag = _etag("text", d.sha256, d.stamp, start, end, context)
    if (nm := _not_modified(request, etag)) is not None:
        return nm
    lo, hi = max(0, start - context), end + context
    with state.services.db.session() as s:
        chunks = repo.chunks_overlapping(s, d.id, lo, hi)
        if not chunks or start >= max(c.char_end for c in chunks):
            raise ApiError(422, "validation_error", f"start: {start} is beyond the end of document {d.id}'s text",
                           field="start")
        pieces = [(c.char_start, c.text) for c in chunks]
        lo, hi = max(lo, min(c.char_start for c in chunks)), min(hi, max(c.char_end for c in chunks))
        end = min(end, hi)

        def overlap(c: Any) -> int:
            return min(c.char_end, end) - max(c.char_start, start)

        best = max(chunks, key=overlap)
        # The headings above the span itself (a chunk's are those at its start, maybe an earlier section's).
        chunk_id = best.id
        heading = heading_path_at(d.sections, start) if d.sections is not None else list(best.heading_path or [])
    pages = pages_of(d.page_spans, start, end) if d.page_spans else []
    out = SpanTextOut(document_id=d.id, source=d.source, title=d.title, media_type=d.media_type, start=start,
                      end=end, text=stitch(pieces, start, end), before=stitch(pieces, lo, start),
                      after=stitch(pieces, end, hi), chunk_id=chunk_id, heading_path=heading, pages=pages)
    return Response(out.model_dump_json(), media_type="application/json",
                    headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})
