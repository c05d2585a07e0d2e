"""Loader registry: `load(path)` picks the loader by file extension, or by sniffing the content.

Every loader turns one file into a `LoadedDocument` and raises only `LoadError` (with `.path`, `.reason` and a
message that names the file and the fix).
"""

from __future__ import annotations

from pathlib import Path

from ctxqa.ingest.loaders import html, markdown, pdf, text
from ctxqa.ingest.loaders.base import REASONS, Loader, LoadError, check_readable
from ctxqa.rag.types import LoadedDocument

__all__ = ["LOADERS", "REASONS", "SUPPORTED_SUFFIXES", "LoadError", "Loader", "load", "loader_for", "sniff"]

LOADERS: dict[str, Loader] = {
    **dict.fromkeys(pdf.SUFFIXES, pdf.load),
    **dict.fromkeys(markdown.SUFFIXES, markdown.load),
    **dict.fromkeys(html.SUFFIXES, html.load),
    **dict.fromkeys(text.SUFFIXES, text.load),
}
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(LOADERS)

_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body")


def sniff(head: bytes) -> Loader | None:
    """The loader for content that starts with `head` (the first few KiB), or None for binary/unknown data."""
    if b"%PDF-" in head[:1024]:
        return pdf.load
    low = head[:4096].lower()
    if low.startswith(b"\xef\xbb\xbf"):
        low = low[3:]
    if any(m in low[:1024] for m in _HTML_MARKERS):
        return html.load
    from ctxqa.ingest.loaders.base import looks_binary, sniff_bom, sniff_utf16_without_bom

    if sniff_bom(head) or sniff_utf16_without_bom(head) or not looks_binary(head):
        return text.load
    return None


def loader_for(path: Path) -> Loader | None:
    """The registered loader for the file's extension (case-insensitive), or None."""
    return LOADERS.get(Path(path).suffix.lower())


def load(path: Path, *, password: str | None = None) -> LoadedDocument:
    """Load one file into a LoadedDocument. Raises LoadError, and only LoadError."""
    path = Path(path)
    try:
        loader = loader_for(path)
        if loader is None:
            check_readable(path)
            try:
                with open(path, "rb") as f:
                    head = f.read(8192)
            except OSError as e:
                raise LoadError(path, "unreadable", f"cannot read {path}: {e.strerror or e}") from None
            loader = sniff(head)
            if loader is None:
                raise LoadError(path, "unsupported",
                                f"unsupported file type {path.suffix or '(no extension)'} (binary content)")
        return loader(path, password=password)
    except LoadError:
        raise
    except RecursionError as e:
        raise LoadError(path, "corrupt", f"document too deeply nested ({e})") from None
    except MemoryError:
        raise LoadError(path, "corrupt", "out of memory while loading") from None
    except Exception as e:  # noqa: BLE001 - the contract: loaders raise LoadError only
        raise LoadError(path, "corrupt", f"cannot load: {type(e).__name__}: {str(e)[:300]}") from e
