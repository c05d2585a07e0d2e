"""Copies of the ingested PDFs, named by their sha256: what the evidence viewer renders pages from.

The file a document was ingested from may move or change (and an upload's temporary file is gone once it is
ingested), so ingestion keeps a copy: an upload's temporary file is hard-linked when it can be (nobody else writes
it), a user's file is copied (a link would change with it). Content addressing makes the copy shared by every
document with the same bytes and lets a reader check it is the very file the chunks came from. Copies no
document refers to any more are removed by `prune` after deletions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctxqa.rag.config import Settings
    from ctxqa.rag.db.session import Database

log = logging.getLogger("ctxqa.originals")

_HEX = set("0123456789abcdef")
# A copy younger than this is kept even when no document refers to it yet: ingestion keeps the copy before it
# commits the document (link() and copy both set the inode's ctime, so this is the time the copy was made).
GRACE_S = 600.0


def _valid(sha256: str) -> bool:
    return len(sha256) == 64 and set(sha256) <= _HEX


class OriginalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        if not _valid(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return self.root / sha256[:2] / f"{sha256}.pdf"

    def get(self, sha256: str) -> Path | None:
        """The stored copy, or None."""
        if not _valid(sha256):
            return None
        p = self.path_for(sha256)
        return p if p.is_file() else None

    def put(self, src: Path, sha256: str, *, link: bool = False) -> Path:
        """Keep a copy of `src` (whose digest is `sha256`), written to a temporary name and renamed (a reader never
        sees half a file). Idempotent.

        `link`: hard-link instead when on the same file system: only for a file nobody else writes (an upload's
        temporary file). A link to a user's file would change with it when the file is rewritten in place, and
        every document sharing the digest would then show other bytes. A copy is checked against `sha256` as it
        is written: a file that changed since it was hashed raises OSError and leaves nothing behind."""
        dst = self.path_for(sha256)
        if dst.is_file():
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{sha256[:12]}.", suffix=".tmp")
        os.close(fd)
        try:
            linked = False
            if link:
                try:
                    os.unlink(tmp)
                    os.link(src, tmp)
                    linked = True
                except OSError:  # another file system, or links not allowed: copy
                    pass
            if not linked:
                digest = _copy_hashing(src, Path(tmp))
                if digest != sha256:
                    raise OSError(f"{src} changed while it was being ingested (sha256 {digest[:12]}..., "
                                  f"expected {sha256[:12]}...)")
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dst

    def prune(self, referenced: Iterable[str]) -> int:
        """Remove the copies whose digest is not in `referenced`. Returns how many were removed."""
        keep = set(referenced)
        removed = 0
        if not self.root.is_dir():
            return 0
        now = time.time()
        for p in self.root.glob("??/*.pdf"):
            if p.stem not in keep:
                try:
                    if now - p.stat().st_ctime < GRACE_S:
                        continue
                    p.unlink()
                    removed += 1
                except OSError as e:
                    log.warning("could not remove %s: %s", p, e)
        return removed


def prune_unreferenced(settings: Settings, db: Database) -> int:
    """Remove the copies no document refers to (after deleting documents or collections)."""
    from ctxqa.rag.db import repo

    with db.session() as s:
        referenced = repo.document_digests(s)
    return OriginalStore(settings.originals_dir).prune(referenced)


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy src to dst (truncating it) and return the sha256 of the bytes written."""
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for block in iter(lambda: fi.read(1 << 20), b""):
            h.update(block)
            fo.write(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
