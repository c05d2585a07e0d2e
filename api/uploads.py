"""Receiving an upload, apart from ingesting it: the multipart body parsed as it arrives, each file part written
straight to its own file under `<data_dir>/uploads/` (never held in memory), limits enforced while the bytes
arrive, the content type sniffed from the bytes, the form fields checked.

- The client's file name is never used as a path: files on disk are named `part-N<ext>`; the sanitised base name
  only becomes the document's `source`.
- The declared Content-Type and the file name's extension do not choose the loader (the extension only picks the
  text dialect, e.g. Markdown, once the bytes are known to be text).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import unicodedata
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ctxqa.api.errors import ApiError, bad_input
from ctxqa.api.jsonbody import first_lone_surrogate, reject_json_constant
from ctxqa.api.keys import Principal
from ctxqa.api.validation import resolve_collection
from ctxqa.ingest.loaders import html as html_loader
from ctxqa.ingest.loaders import markdown as md_loader
from ctxqa.ingest.loaders import pdf as pdf_loader
from ctxqa.ingest.loaders import sniff
from ctxqa.ingest.loaders import text as text_loader
from ctxqa.rag.config import Settings

FILE_FIELDS = ("files", "file")
MAX_FORM_FIELDS = 16
MAX_FIELD_BYTES = 1 << 20
SNIFF_BYTES = 8192


@dataclass
class ReceivedFile:
    """One uploaded file on disk. `media_type` is None when the bytes are of no supported kind."""

    filename: str
    path: Path
    size: int
    media_type: str | None


@dataclass
class Upload:
    collection: str
    metadata: dict[str, Any]
    files: list[ReceivedFile] = field(default_factory=list)


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


class UploadParser(MultiPartParser):
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


def human_size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def parse_metadata(raw: str | None) -> dict[str, Any]:
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


@contextlib.asynccontextmanager
async def receive_upload(request: Request, settings: Settings, principal: Principal) -> AsyncIterator[Upload]:
    """Receive and check a multipart upload; yields its files on disk, removed when the block ends.

    Refused before anything is ingested: a body that is not multipart (415); a file over `max_upload_bytes` or
    more than `max_files_per_upload` files (413, as soon as the bytes show it); unknown or repeated fields; no
    file; a collection the key may not use (403); metadata that is not a JSON object (422, naming the field).
    """
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

    tmpdir = settings.uploads_dir / uuid.uuid4().hex
    tmpdir.mkdir(parents=True, exist_ok=False)
    try:
        parser = UploadParser(request.headers, _limited(request.stream(), body_limit), tmpdir=tmpdir,
                              max_bytes=max_bytes, max_files=max_files)
        try:
            form = await parser.parse()
        except UploadTooLarge as e:
            raise ApiError(413, "payload_too_large", f"file {sanitize_filename(e.filename, '(unnamed)')!r} "
                           f"exceeds the upload limit of {human_size(e.limit)} (max_upload_bytes)",
                           field="files") from None
        except MultiPartException as e:
            if "Too many files" in e.message:
                raise ApiError(413, "payload_too_large", f"too many files: at most {max_files} per upload "
                               f"(max_files_per_upload)", field="files") from None
            raise bad_input("files", f"invalid multipart body: {e.message}") from None
        parts: list[UploadFile] = []
        fields: dict[str, str] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in FILE_FIELDS:
                    raise bad_input(key, "unexpected file field; send files as 'files'")
                parts.append(value)
            elif key in FILE_FIELDS:
                raise bad_input("files", "must be file parts (curl -F files=@path), not text fields")
            elif key in ("collection", "metadata"):
                if key in fields:
                    raise bad_input(key, "given more than once")
                fields[key] = value
            else:
                raise bad_input(key, "unknown form field (expected files, collection, metadata)")
        for u in parts:
            await u.close()
        if not parts:
            raise bad_input("files", "attach at least one file")
        upload = Upload(collection=resolve_collection(fields.get("collection"), settings, principal),
                        metadata=parse_metadata(fields.get("metadata")))
        for i, u in enumerate(parts):
            name = sanitize_filename(u.filename, f"upload-{i + 1}")
            path = parser.paths[id(u)]
            with open(path, "rb") as f:
                head = f.read(SNIFF_BYTES)
            kind = sniff_kind(head, name)
            media = None
            if kind is not None:
                suffix, media = kind
                final = path.with_name(f"{path.name}{suffix}").resolve()
                path.rename(final)
                path = final
            upload.files.append(ReceivedFile(filename=name, path=path, size=path.stat().st_size, media_type=media))
        yield upload
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
