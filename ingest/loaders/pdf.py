"""PDF: text per page (1-based) with pypdfium2 by default and pypdf as the fallback.

The default was picked by bench/pdf_extract.py (pypdfium2 is ~20x faster on real 10-Q filings and opens
every file of the shared test set that pypdf opens, plus AES-encrypted ones pypdf cannot decrypt without the
`cryptography` package). pypdf is tried when pypdfium2 cannot open or read a file, or finds no text at all.

The document text is the normalised page texts joined with a blank line ("\\n\\n"); `pages` has one PageSpan
per page (an empty span for a page without a text layer, listed in `empty_pages`). Encrypted files are tried
with the empty user password first, then with the password given.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxqa.ingest.loaders.base import LoadError, check_readable, clean_inline, iso_date, normalize_text
from ctxqa.rag.types import LoadedDocument, PageSpan

SUFFIXES = (".pdf",)
PAGE_SEPARATOR = "\n\n"
ENGINES = ("pdfium", "pypdf")
DEFAULT_ENGINE = "pdfium"

# PDFium is not thread-safe: serialise every call into it (the pipeline may load files from threads).
PDFIUM_LOCK = threading.Lock()


class PasswordRequired(Exception):
    """The file is encrypted and the password given (or the empty one) does not open it."""


@dataclass
class Extracted:
    pages: list[str]  # raw text per page, in order
    info: dict[str, Any] = field(default_factory=dict)  # PDF info dictionary, keys without "/"
    engine: str = ""
    warnings: list[str] = field(default_factory=list)


def _pdfium_password_error(exc: Exception) -> bool:
    return getattr(exc, "err_code", None) == 4 or "password" in str(exc).lower()


def extract_pdfium(path: Path, password: str | None = None) -> Extracted:
    """Text of every page with pypdfium2. Raises PasswordRequired or the engine's own errors."""
    import pypdfium2 as pdfium

    with PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(str(path), password=password or None)
        except pdfium.PdfiumError as e:
            if _pdfium_password_error(e):
                raise PasswordRequired(str(e)) from e
            raise
        try:
            out = Extracted(pages=[], engine="pdfium")
            try:
                out.info = {k: v for k, v in pdf.get_metadata_dict(skip_empty=True).items()}
            except Exception as e:  # noqa: BLE001 - metadata is optional
                out.warnings.append(f"unreadable PDF info ({type(e).__name__})")
            for i in range(len(pdf)):
                try:
                    page = pdf[i]
                    try:
                        textpage = page.get_textpage()
                        try:
                            out.pages.append(textpage.get_text_range())
                        finally:
                            textpage.close()
                    finally:
                        page.close()
                except pdfium.PdfiumError as e:
                    out.pages.append("")
                    out.warnings.append(f"page {i + 1}: text not extractable ({e})")
            return out
        finally:
            pdf.close()


def extract_pypdf(path: Path, password: str | None = None) -> Extracted:
    """Text of every page with pypdf (lenient mode). Raises PasswordRequired or the engine's own errors."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError

    reader = PdfReader(str(path), strict=False)
    if reader.is_encrypted:
        try:
            ok = reader.decrypt("")
            if not ok and password:
                ok = reader.decrypt(password)
        except DependencyError as e:  # AES without the `cryptography` package
            raise RuntimeError(f"pypdf cannot decrypt this file: {e}") from e
        if not ok:
            raise PasswordRequired("pypdf: password does not open the file")
    out = Extracted(pages=[], engine="pypdf")
    try:
        info: Any = reader.metadata or {}
        out.info = {str(k).lstrip("/"): str(v) for k, v in info.items() if v is not None}
    except Exception as e:  # noqa: BLE001 - metadata is optional
        out.warnings.append(f"unreadable PDF info ({type(e).__name__})")
    try:
        n = len(reader.pages)
    except FileNotDecryptedError as e:
        raise PasswordRequired(str(e)) from e
    for i in range(n):
        try:
            out.pages.append(reader.pages[i].extract_text() or "")
        except FileNotDecryptedError as e:
            raise PasswordRequired(str(e)) from e
        except Exception as e:  # noqa: BLE001 - one bad page must not lose the document
            out.pages.append("")
            out.warnings.append(f"page {i + 1}: text not extractable ({type(e).__name__})")
    return out


EXTRACTORS = {"pdfium": extract_pdfium, "pypdf": extract_pypdf}


def normalize_page(text: str) -> str:
    """One page's text: LF newlines, no control characters, runs of spaces collapsed, outer whitespace stripped."""
    # PDFium reports some hyphens as STX (older builds: end-of-line hyphens) or as U+FFFE (pypdfium2 5: hyphens
    # of fonts without a Unicode map, e.g. "forward-looking" in 10-Q filings): both are hyphens in the text.
    text = text.replace("\x02", "-").replace("\ufffe", "-")
    return normalize_text(text, collapse_spaces=True).strip()


def assemble(pages: list[str]) -> tuple[str, list[PageSpan], list[int]]:
    """(document text, page spans, empty page numbers) from normalised page texts."""
    parts: list[str] = []
    spans: list[PageSpan] = []
    empty: list[int] = []
    pos = 0
    for i, page_text in enumerate(pages, start=1):
        if i > 1:
            parts.append(PAGE_SEPARATOR)
            pos += len(PAGE_SEPARATOR)
        spans.append(PageSpan(i, pos, pos + len(page_text)))
        parts.append(page_text)
        pos += len(page_text)
        if not page_text:
            empty.append(i)
    return "".join(parts), spans, empty


_JUNK_TITLE_RE = re.compile(r"^(untitled|microsoft word - .*|document\d*|\s*)$", re.I)


def _metadata(info: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    meta: dict[str, Any] = {}
    for key, name in (("Title", "title"), ("Author", "author"), ("Subject", "subject"), ("Keywords", "keywords"),
                      ("Creator", "creator"), ("Producer", "producer")):
        value = info.get(key)
        if isinstance(value, str):
            value = clean_inline(value)
            if value:
                meta[name] = value
    for key, name in (("CreationDate", "date"), ("ModDate", "modified")):
        d = iso_date(info.get(key))
        if d:
            meta[name] = d
    title = meta.get("title")
    if title and _JUNK_TITLE_RE.match(title):
        meta.pop("title")
        title = None
    return meta, title


def _open(path: Path, password: str | None, engine: str) -> Extracted:
    """Extract with one engine: empty password first, then the given one. Raises LoadError(encrypted)."""
    fn = EXTRACTORS[engine]
    try:
        return fn(path, None)
    except PasswordRequired:
        if not password:
            raise LoadError(path, "encrypted", "the PDF is password-protected") from None
    try:
        return fn(path, password)
    except PasswordRequired:
        raise LoadError(path, "encrypted", "wrong password: the password given does not open the PDF",
                        f"check the password passed with --password or in {path.name}.meta.json") from None


def load(path: Path, *, password: str | None = None, engine: str = DEFAULT_ENGINE) -> LoadedDocument:
    path = Path(path)
    check_readable(path)
    engines = [engine] + [e for e in ENGINES if e != engine]
    errors: list[str] = []
    encrypted: LoadError | None = None
    extracted: Extracted | None = None
    for name in engines:
        try:
            candidate = _open(path, password, name)
        except LoadError as e:
            encrypted = encrypted or e
            continue
        except Exception as e:  # noqa: BLE001 - any engine failure: try the next one
            errors.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
            continue
        if extracted is not None and not any(p.strip() for p in candidate.pages):
            continue  # the fallback found no more text than the first engine
        if extracted is not None:
            candidate.warnings.append(f"{extracted.engine} found no text; used {name}")
        extracted = candidate
        if any(p.strip() for p in candidate.pages):
            break
    if extracted is None:
        if encrypted is not None:
            raise encrypted
        raise LoadError(path, "corrupt", "cannot read the PDF (" + "; ".join(errors) + ")")
    pages = [normalize_page(p) for p in extracted.pages]
    text, spans, empty = assemble(pages)
    if not pages:
        raise LoadError(path, "empty", "the PDF has no pages")
    if not text.strip():
        raise LoadError(path, "empty", f"none of its {len(pages)} page(s) has a text layer (scanned?)",
                        "run OCR on it first (e.g. ocrmypdf) and ingest the result")
    metadata, title = _metadata(extracted.info)
    metadata["extractor"] = extracted.engine
    warnings = list(extracted.warnings) + errors
    if empty:
        warnings.append(f"{len(empty)} of {len(pages)} page(s) without text: {empty[:20]}")
    return LoadedDocument(
        text=text,
        media_type="application/pdf",
        title=title,
        metadata=metadata,
        pages=spans,
        page_count=len(pages),
        empty_pages=empty,
        warnings=warnings,
    )
