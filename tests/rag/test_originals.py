"""Kept copies of the ingested PDFs (rag/originals.py): put, get, prune, and the ingestion pipeline keeping and
pruning them, on real files, a real database and the real embedder.

Pruning leaves copies younger than GRACE_S alone (ingestion keeps the copy before it commits the document); the
tests of removal set GRACE_S to 0, since a file's ctime cannot be set back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctxqa.ingest.loaders import load
from ctxqa.rag import originals
from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Document
from ctxqa.rag.originals import OriginalStore, file_sha256, prune_unreferenced
from tests.pdfs import make_pdf

DATABASES = ("sqlite", "postgres")


def pdf_file(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make_pdf(list(lines)))
    return path


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.tmp"))


@pytest.fixture()
def store(tmp_path: Path) -> OriginalStore:
    return OriginalStore(tmp_path / "originals")


def test_put_links_when_asked_and_is_idempotent(tmp_path: Path, store: OriginalStore) -> None:
    src = pdf_file(tmp_path / "upload" / "part-0", "Quarterly report")
    sha = file_sha256(src)
    kept = store.put(src, sha, link=True)
    assert kept == store.path_for(sha) == store.root / sha[:2] / f"{sha}.pdf"
    assert os.path.samefile(kept, src) and src.stat().st_nlink == 2  # a hard link: no second copy on disk
    assert store.put(src, sha, link=True) == kept and src.stat().st_nlink == 2
    assert store.put(src, sha) == kept  # already kept: not copied again
    assert store.get(sha) == kept and leftovers(store.root) == []
    src.unlink()  # the upload's temporary file is removed: the copy stays
    assert store.get(sha) == kept and file_sha256(kept) == sha


def test_put_copies_a_users_file_which_may_be_rewritten_in_place(tmp_path: Path, store: OriginalStore) -> None:
    src = pdf_file(tmp_path / "docs" / "report.pdf", "Revenue grew by 12 percent")
    original = src.read_bytes()
    sha = file_sha256(src)
    kept = store.put(src, sha)
    assert not os.path.samefile(kept, src) and kept.read_bytes() == original
    with open(src, "r+b") as f:  # rewritten in place (same inode), as many tools write their output
        f.truncate(0)
        f.write(make_pdf(["Revenue fell by 3 percent"]))
    assert kept.read_bytes() == original and file_sha256(kept) == sha
    assert store.put(src, sha) == kept and kept.read_bytes() == original


def test_put_across_file_systems_copies(store: OriginalStore) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(store.root.parent).st_dev:
        pytest.skip("no second file system here to link across")
    with tempfile.TemporaryDirectory(dir=shm) as d:
        src = pdf_file(Path(d) / "part-0", "Across devices")
        sha = file_sha256(src)
        kept = store.put(src, sha, link=True)  # the link fails (EXDEV): copied instead
        assert kept.read_bytes() == src.read_bytes() and kept.stat().st_dev != src.stat().st_dev
    assert store.get(sha) == kept and leftovers(store.root) == []


def test_put_refuses_bytes_that_do_not_match_the_digest(tmp_path: Path, store: OriginalStore) -> None:
    src = pdf_file(tmp_path / "a.pdf", "One")
    sha = file_sha256(src)
    pdf_file(src, "Changed after it was hashed")
    with pytest.raises(OSError, match="changed while it was being ingested"):
        store.put(src, sha)
    assert store.get(sha) is None and leftovers(store.root) == []


def test_get_and_path_for_check_the_digest(tmp_path: Path, store: OriginalStore) -> None:
    assert store.get("0" * 64) is None
    for bad in ("../../etc/passwd", "ab" * 31, "A" * 64, "g" * 64, ""):
        assert store.get(bad) is None
        with pytest.raises(ValueError):
            store.path_for(bad)


def test_prune_keeps_referenced_and_young_copies(tmp_path: Path, store: OriginalStore,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert OriginalStore(tmp_path / "nowhere").prune([]) == 0
    a = pdf_file(tmp_path / "a.pdf", "Alpha")
    b = pdf_file(tmp_path / "b.pdf", "Beta")
    sa, sb = file_sha256(a), file_sha256(b)
    ka, kb = store.put(a, sa), store.put(b, sb)
    stray = store.root / "zz" / "notes.txt"  # not a copy: never touched
    stray.parent.mkdir()
    stray.write_text("x")
    assert store.prune([sa]) == 0 and kb.is_file()  # b is unreferenced but was copied just now
    monkeypatch.setattr(originals, "GRACE_S", 0.0)
    assert store.prune([sa]) == 1
    assert ka.is_file() and not kb.exists() and stray.is_file()
    assert store.prune([sa]) == 0
    assert store.prune([]) == 1 and not ka.exists()


# ---------------------------------------------------------------------------------------------------------------
# The ingestion pipeline keeps copies and prunes them
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def no_grace(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(originals, "GRACE_S", 0.0)
    yield


def documents(ctx) -> dict[str, Document]:  # type: ignore[no-untyped-def]
    with ctx.db.session() as s:
        return {d.source: d for d in s.query(Document).all()}


def test_ingest_keeps_a_copy_of_each_pdf_and_prunes_it_after_delete_and_update(
        tmp_path: Path, make_ctx, no_grace: None) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "docs"
    report = pdf_file(root / "report.pdf", "Quarterly report", "Revenue grew by 12 percent in Q3.")
    shutil.copy(report, root / "same-bytes.pdf")
    pdf_file(root / "other.pdf", "Another filing", "Operating income rose.")
    (root / "notes.md").write_text("# Notes\n\nNo pages to keep.\n")
    ctx = make_ctx()
    store = OriginalStore(ctx.settings.originals_dir)
    r = ctx.ingestor.ingest([root])
    assert r.summary()["added"] == 4 and r.summary()["failed"] == 0
    docs = documents(ctx)
    sha_report, sha_other = docs["report.pdf"].sha256, docs["other.pdf"].sha256
    assert docs["same-bytes.pdf"].sha256 == sha_report
    kept = sorted(p.name for p in store.root.rglob("*.pdf"))
    assert kept == sorted([f"{sha_report}.pdf", f"{sha_other}.pdf"])  # one copy per content, none for Markdown
    assert not os.path.samefile(store.get(sha_report), report)  # a user's file: copied, not linked
    # The page spans are stored with the document, as the loader found them.
    assert docs["report.pdf"].meta["_page_spans"] == [[p.start, p.end] for p in load(report).pages]
    assert "_page_spans" not in (docs["notes.md"].meta or {})

    # Deleting one of the two documents with the same bytes keeps the shared copy; deleting both removes it.
    ctx.ingestor.delete_documents("default", [docs["report.pdf"].id])
    assert store.get(sha_report) is not None
    ctx.ingestor.delete_documents("default", [docs["same-bytes.pdf"].id])
    assert store.get(sha_report) is None and store.get(sha_other) is not None

    # Updating a PDF with other bytes keeps the new bytes and drops the old copy.
    pdf_file(root / "other.pdf", "Another filing, amended", "Operating income fell.")
    (root / "report.pdf").unlink()
    (root / "same-bytes.pdf").unlink()
    r = ctx.ingestor.ingest([root])
    assert r.summary()["updated"] == 1, r.summary()
    new_sha = documents(ctx)["other.pdf"].sha256
    assert new_sha != sha_other and store.get(new_sha) is not None and store.get(sha_other) is None

    # A kept copy lost (the originals folder removed) comes back when the unchanged file is ingested again.
    shutil.rmtree(store.root)
    r = ctx.ingestor.ingest([root])
    assert r.summary()["unchanged"] == 2 and store.get(new_sha) is not None

    # Removed with --prune: the copy goes too.
    (root / "other.pdf").unlink()
    r = ctx.ingestor.ingest([root], prune=True)
    assert r.summary()["removed"] == 1 and store.get(new_sha) is None
    with ctx.db.session() as s:
        assert repo.document_digests(s) == set()
    assert prune_unreferenced(ctx.settings, ctx.db) == 0


def test_a_copy_being_ingested_is_not_pruned_by_another_process(tmp_path: Path, make_ctx) -> None:  # type: ignore[no-untyped-def]
    """Within GRACE_S a copy no document refers to yet (another process is ingesting it) survives a prune."""
    ctx = make_ctx()
    src = pdf_file(tmp_path / "in-flight.pdf", "Being ingested elsewhere")
    sha = file_sha256(src)
    store = OriginalStore(ctx.settings.originals_dir)
    store.put(src, sha)
    assert prune_unreferenced(ctx.settings, ctx.db) == 0 and store.get(sha) is not None
