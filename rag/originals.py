"""Copies of the ingested PDFs, named by their sha256: what the evidence viewer renders pages from.

The file a document was ingested from may move or change (and an upload's temporary file is gone once it is
ingested), so ingestion keeps a copy, hard-linked when it can. Content addressing makes the copy shared by every
document with the same bytes and lets a reader check it is the very file the chunks came from. Copies no
document refers to any more are removed by `prune` after deletions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
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

    def put(self, src: Path, sha256: str) -> Path:
        """Keep a copy of `src` (whose digest is `sha256`): a hard link when on the same file system, else a copy
        written to a temporary name and renamed (a reader never sees half a file). Idempotent."""
        dst = self.path_for(sha256)
        if dst.is_file():
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{sha256[:12]}.", suffix=".tmp")
        os.close(fd)
        try:
            try:
                os.unlink(tmp)
                os.link(src, tmp)
            except OSError:  # another file system, or links not allowed: copy
                shutil.copyfile(src, tmp)
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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
