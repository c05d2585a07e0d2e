"""Plain text (.txt, .rst, .csv, ...): encoding detection, binary rejection, newline normalisation."""

from __future__ import annotations

from pathlib import Path

from ctxqa.ingest.loaders.base import (
    LoadError,
    decode_text,
    looks_binary,
    normalize_text,
    read_bytes,
    sniff_bom,
    sniff_utf16_without_bom,
)
from ctxqa.rag.types import LoadedDocument

SUFFIXES = (".txt", ".text", ".rst", ".csv", ".tsv", ".log", ".adoc", ".asciidoc", ".org", ".json", ".jsonl",
            ".yaml", ".yml")

_MEDIA_TYPES = {
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".rst": "text/x-rst",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
}


def decode_file(path: Path, data: bytes) -> tuple[str, str]:
    """Decode the bytes of a text-like file or raise LoadError (empty / binary). Returns (text, encoding)."""
    if not data.strip():
        raise LoadError(path, "empty", "the file is empty" if not data else "the file holds only whitespace")
    if sniff_bom(data) is None and sniff_utf16_without_bom(data) is None and looks_binary(data):
        raise LoadError(path, "binary", "the file holds binary data (NUL bytes or control characters)")
    text, encoding = decode_text(data)
    return text, encoding


def load(path: Path, *, password: str | None = None) -> LoadedDocument:  # noqa: ARG001 - uniform signature
    path = Path(path)
    data = read_bytes(path)
    text, encoding = decode_file(path, data)
    text = normalize_text(text)
    if not text.strip():
        raise LoadError(path, "empty", "the file holds no text")
    doc = LoadedDocument(
        text=text,
        media_type=_MEDIA_TYPES.get(path.suffix.lower(), "text/plain"),
        title=None,
        metadata={"encoding": encoding},
    )
    if encoding not in ("utf-8", "ascii"):
        doc.warnings.append(f"decoded as {encoding}")
    return doc
