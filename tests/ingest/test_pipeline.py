"""Ingestion pipeline end to end on real databases, the real embedder and real faiss indexes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from ctxqa.ingest.loaders import load
from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Chunk, Collection, Document
from ctxqa.rag.embed.embedder import Embedder

DOCS = {
    "guide/install.md": "---\ntitle: Installing Widgets\ndate: 2024-03-01\nurl: https://example.org/install\n"
                        "author: Ada\n---\n# Install\n\nRun the widget installer. It needs 3 GB of disk.\n\n"
                        "## Upgrading\n\nUpgrades keep your configuration files.\n",
    "guide/usage.md": "# Usage\n\nStart widgets with `widget start`. The default port is 7421.\n",
    "notes.txt": "Quarterly notes: the blue team shipped the frobnicator on time.\n",
    "page.html": "<html><head><title>Widget FAQ</title><script>var x=1;</script></head><body><nav>Home | About"
                 "</nav><main><h1>FAQ</h1><p>Widgets are recyclable in most countries.</p></main></body></html>",
}


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    return root


def index_ids(ctx, name: str = "default") -> set[int]:  # type: ignore[no-untyped-def]
    with ctx.db.session() as s:
        coll = repo.require_collection(s, name)
    return set(ctx.store.get(coll).ids().tolist())


def db_chunk_ids(ctx, name: str = "default") -> set[int]:  # type: ignore[no-untyped-def]
    with ctx.db.session() as s:
        coll = repo.require_collection(s, name)
        return set(s.scalars(select(Chunk.id).where(Chunk.collection_id == coll.id)))


def test_incremental_reingest_update_and_prune(tmp_path: Path, make_ctx, db_url: str) -> None:
    root = write_tree(tmp_path / "docs", DOCS)
    ctx = make_ctx(database_url=db_url)
    r1 = ctx.ingestor.ingest([root])
    assert r1.summary() == {"added": 4, "updated": 0, "unchanged": 0, "removed": 0, "skipped": 0, "failed": 0}
    assert index_ids(ctx) == db_chunk_ids(ctx) and len(db_chunk_ids(ctx)) >= 4

    # Metadata that the prompt will cite: source relative to the root, front matter, mtime date fallback.
    with ctx.db.session() as s:
        docs = {d.source: d for d in s.scalars(select(Document))}
    assert set(docs) == set(DOCS)
    md = docs["guide/install.md"]
    assert md.title == "Installing Widgets"
    assert md.meta["url"] == "https://example.org/install" and md.meta["author"] == "Ada"
    assert str(md.meta["date"]).startswith("2024-03-01")
    assert docs["page.html"].title == "Widget FAQ"
    assert len(docs["notes.txt"].meta["date"]) == 10  # file mtime as ISO date

    # Second run: nothing changes, ids stay.
    before = db_chunk_ids(ctx)
    r2 = ctx.ingestor.ingest([root])
    assert r2.summary()["unchanged"] == 4 and r2.changed == 0
    assert db_chunk_ids(ctx) == before

    # Change one file: only it is replaced; the old text is no longer findable, the new one is.
    with ctx.db.session() as s:
        usage_old = set(s.scalars(select(Chunk.id).join(Document).where(Document.source == "guide/usage.md")))
        install_ids = set(s.scalars(select(Chunk.id).join(Document).where(Document.source == "guide/install.md")))
    (root / "guide/usage.md").write_text("# Usage\n\nStart widgets with `widget run`. The port is 9999.\n")
    r3 = ctx.ingestor.ingest([root])
    assert r3.summary()["updated"] == 1 and r3.summary()["unchanged"] == 3
    ids_now = db_chunk_ids(ctx)
    assert install_ids <= ids_now  # untouched documents keep their chunk ids
    assert not (usage_old & ids_now)
    assert index_ids(ctx) == ids_now
    hits = ctx.retriever.search("which port do widgets use?", k=3).hits
    assert any("9999" in h.text for h in hits) and not any("7421" in h.text for h in hits)

    # Remove a file: kept without --prune, removed with it; the index follows.
    (root / "notes.txt").unlink()
    r4 = ctx.ingestor.ingest([root])
    assert r4.changed == 0
    r5 = ctx.ingestor.ingest([root], prune=True)
    assert r5.summary()["removed"] == 1
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Document)) == 3
    assert index_ids(ctx) == db_chunk_ids(ctx)
    assert all("frobnicator" not in h.text for h in ctx.retriever.search("frobnicator", k=5).hits)


def test_metadata_change_alone_updates(tmp_path: Path, make_ctx) -> None:
    root = write_tree(tmp_path / "docs", {"a.md": "# A\n\nAlpha text about apples.\n"})
    ctx = make_ctx()
    ctx.ingestor.ingest([root])
    (root / "a.md.meta.json").write_text(json.dumps({"url": "https://example.org/a", "team": "fruit"}))
    r = ctx.ingestor.ingest([root], meta={"batch": "7"})
    assert r.summary()["updated"] == 1
    with ctx.db.session() as s:
        d = s.scalar(select(Document))
        assert d.meta["url"] == "https://example.org/a" and d.meta["team"] == "fruit" and d.meta["batch"] == "7"
    assert ctx.ingestor.ingest([root], meta={"batch": "7"}).changed == 0
    # Text unchanged: the update reused stored vectors instead of re-embedding.
    assert r.chunks_embedded == 0 and r.chunks_reused >= 1


def test_delete_documents_removes_from_index(tmp_path: Path, make_ctx) -> None:
    root = write_tree(tmp_path / "docs", DOCS)
    ctx = make_ctx()
    ctx.ingestor.ingest([root])
    with ctx.db.session() as s:
        doc = s.scalar(select(Document).where(Document.source == "notes.txt"))
        gone = set(s.scalars(select(Chunk.id).where(Chunk.document_id == doc.id)))
    assert ctx.ingestor.delete_documents("default", [doc.id]) == 1
    assert not (gone & index_ids(ctx))
    # A fresh process (new store) sees the same thing from the saved index.
    ctx2 = make_ctx()
    assert not (gone & index_ids(ctx2))
    assert index_ids(ctx2) == db_chunk_ids(ctx2)


def test_mismatched_embedding_model_is_refused(tmp_path: Path, make_ctx, embedder: Embedder) -> None:
    root = write_tree(tmp_path / "docs", {"a.md": "# A\n\nAlpha.\n"})
    ctx = make_ctx()
    ctx.ingestor.ingest([root])
    # A real second model: the bundled files copied under another name (a different model as far as ctxqa knows).
    other_dir = tmp_path / "other-minilm"
    shutil.copytree(embedder.path, other_dir)
    other = Embedder(str(other_dir))
    assert other.name != embedder.name
    ctx_other = make_ctx()
    ctx_other.__dict__["embedder"] = other
    with pytest.raises(repo.EmbeddingMismatch, match="was built with embedding model"):
        ctx_other.ingestor.ingest([root])
    with pytest.raises(repo.EmbeddingMismatch):
        ctx_other.retriever.search("alpha")
    # Nothing was written by the refused run.
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Collection)) == 1
        assert s.scalar(select(func.count()).select_from(Document)) == 1


def test_chunks_match_extracted_text_and_limits(shared_data: Path, make_ctx, embedder: Embedder, tmp_path: Path
                                                ) -> None:
    """Stored chunks are exact slices of the extracted text and never exceed the embedder's window."""
    src = shared_data / "corpora" / "fastapi-docs" / "tutorial"
    ctx = make_ctx()
    files = sorted(src.glob("*.md"))[:12]
    root = tmp_path / "subset"
    root.mkdir()
    for f in files:
        shutil.copy(f, root / f.name)
    rep = ctx.ingestor.ingest([root])
    assert rep.count("added") == len(files)
    with ctx.db.session() as s:
        for d in s.scalars(select(Document)):
            text = load(Path(d.path)).text
            for c in d.chunks:
                assert text[c.char_start:c.char_end] == c.text
                assert embedder.count_tokens(c.text) <= embedder.max_tokens
                vec = np.frombuffer(c.embedding, dtype=np.float32)
                assert vec.shape == (embedder.dim,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-3


def test_pdf_pages_and_10q(shared_data: Path, make_ctx) -> None:
    ctx = make_ctx()
    rep = ctx.ingestor.ingest([shared_data / "corpora" / "sec-10q"])
    assert rep.count("added") == 2 and not rep.failed
    with ctx.db.session() as s:
        for d in s.scalars(select(Document)):
            assert d.media_type == "application/pdf" and d.page_count and d.page_count > 10
            pages = [(c.page_start, c.page_end) for c in d.chunks]
            assert all(1 <= a <= b <= d.page_count for a, b in pages)
            assert pages[-1][1] >= d.page_count - 2  # chunks reach the last pages
            crossing = [c for c in d.chunks if c.page_start != c.page_end]
            # A Hit of a chunk across a page break names each part's own page, from the document's stored spans.
            assert crossing
            c = crossing[0]
            (h,) = repo.hits_for(s, [(c.id, 1.0)], "default")
            at = d.meta["_page_spans"][c.page_end - 1][0]  # where the chunk's last page begins
            assert c.char_start < at < c.char_end
            assert h.pages_between(at, c.char_end) == [c.page_end]
            assert c.page_end not in h.pages_between(c.char_start, at - 1)
            assert h.pages_between(c.char_start, c.char_end) == h.pages
    hit = ctx.retriever.search("Intel revenue for the quarter", k=3).hits[0]
    assert hit.page_start is not None and hit.source.endswith(".pdf")


def test_new_files_are_embedded_while_the_next_one_extracts(tmp_path: Path, make_ctx,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """While the worker is still extracting the next file, the chunks already waiting are embedded (not after it):
    each chunk exactly once, the vectors those of a plain encode, the index in step with the database."""
    import threading

    from ctxqa.ingest import pipeline
    from ctxqa.rag.index.chunk_text import embedding_text

    def text(tag: str) -> str:
        return "\n\n".join(f"Section {i} of the {tag} handbook. " + " ".join(
            f"The {tag} team reviews item {i}.{j} every week." for j in range(12)) for i in range(80))

    root = write_tree(tmp_path / "docs", {"a.txt": text("alpha"), "b.txt": text("beta")})
    ctx = make_ctx()
    ing = ctx.ingestor
    released = threading.Event()
    calls: list[tuple[int, bool]] = []  # (texts, was b.txt extracted yet?)
    b_done = threading.Event()
    real_prepare, real_encode = ing._prepare, ctx.embedder.encode

    def prepare(f, *args):  # type: ignore[no-untyped-def]
        if f.path.name == "b.txt":
            released.wait()  # the hang guard is pytest-timeout
        out = real_prepare(f, *args)
        if f.path.name == "b.txt":
            b_done.set()
        return out

    def encode(texts, **kw):  # type: ignore[no-untyped-def]
        calls.append((len(texts), b_done.is_set()))
        released.set()
        return real_encode(texts, **kw)

    monkeypatch.setattr(ing, "_prepare", prepare)
    monkeypatch.setattr(ctx.embedder, "encode", encode)
    report = ing.ingest([root])
    assert report.summary()["added"] == 2
    n_a, n_b = (r.chunks for r in sorted(report.results, key=lambda r: r.source))
    assert n_a >= pipeline._AHEAD_MIN_CHUNKS
    assert calls == [(n_a, False), (n_b, True)]  # a.txt while b.txt was extracting, then b.txt alone
    assert report.chunks_embedded == n_a + n_b
    assert index_ids(ctx) == db_chunk_ids(ctx)
    with ctx.db.session() as s:
        rows = s.execute(select(Chunk.text, Chunk.heading_path, Chunk.token_count, Chunk.embedding, Document.title)
                         .join(Document, Chunk.document_id == Document.id)).all()
    texts = [embedding_text(t, title, hp or (), count_tokens=ctx.embedder.count_tokens,
                            max_tokens=ctx.embedder.max_tokens, text_tokens=n) for t, hp, n, _, title in rows]
    stored = np.stack([np.frombuffer(r[3], dtype=np.float32) for r in rows])
    assert float(((stored * real_encode(texts)).sum(1)).min()) > 0.9999


def _handbook(tag: str, sections: int = 30) -> str:
    return "\n\n".join(f"Section {i} of the {tag} handbook. " + " ".join(
        f"The {tag} team reviews item {i}.{j} every week." for j in range(12)) for i in range(sections))


def test_a_group_is_written_while_the_next_one_is_embedded(tmp_path: Path, make_ctx, db_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer thread commits group N while the calling thread embeds group N+1: the first write is held
    until the second embedding has started, which can only happen if embedding does not wait for it. Groups
    still commit in order, every file is reported once, and the index matches the database."""
    import threading

    root = write_tree(tmp_path / "docs", {f"{c}.txt": _handbook(c) for c in "abcdef"})
    ctx = make_ctx(database_url=db_url, embedding_batch_size=8)  # groups of >= 128 chunks
    ing = ctx.ingestor
    encodes: list[int] = []
    second_encode = threading.Event()
    order: list[str] = []
    real_write, real_encode = ing._write_group, ctx.embedder.encode

    def encode(texts, **kw):  # type: ignore[no-untyped-def]
        encodes.append(len(texts))
        if len(encodes) == 2:
            second_encode.set()
        return real_encode(texts, **kw)

    def write(coll, group, plan):  # type: ignore[no-untyped-def]
        if not order:
            second_encode.wait()  # the hang guard is pytest-timeout
        order.extend(prep.found.source for prep, _ in group)
        return real_write(coll, group, plan)

    monkeypatch.setattr(ctx.embedder, "encode", encode)
    monkeypatch.setattr(ing, "_write_group", write)
    ticks: list[str] = []
    report = ing.ingest([root], progress=lambda p: ticks.append(p.current))
    assert len(encodes) >= 2 and report.summary()["added"] == 6 and not report.failed
    assert order == sorted(order) == [f"{c}.txt" for c in "abcdef"]  # written in order, each once
    assert sorted(ticks) == sorted(order)
    assert report.chunks_embedded == sum(encodes) == report.chunks
    assert index_ids(ctx) == db_chunk_ids(ctx)


def test_a_failed_write_keeps_the_groups_before_it(tmp_path: Path, make_ctx, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    """An error in the writer thread reaches the caller; the groups committed before it stay ingested and
    searchable, and the next run adds only what is missing."""
    root = write_tree(tmp_path / "docs", {f"{c}.txt": _handbook(c) for c in "abcdefgh"})
    ctx = make_ctx(embedding_batch_size=8)
    ing = ctx.ingestor
    real_write = ing._write_group
    calls: list[int] = []

    def write(coll, group, plan):  # type: ignore[no-untyped-def]
        calls.append(len(group))
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_write(coll, group, plan)

    monkeypatch.setattr(ing, "_write_group", write)
    with pytest.raises(RuntimeError, match="disk full"):
        ing.ingest([root])
    first = calls[0]
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Document).where(Document.status == "ingested")) == first
    assert index_ids(ctx) == db_chunk_ids(ctx) != set()
    monkeypatch.setattr(ing, "_write_group", real_write)
    again = ing.ingest([root])
    assert again.count("unchanged") == first and again.count("added") == 8 - first
    assert index_ids(ctx) == db_chunk_ids(ctx)


def test_extraction_runs_ahead_by_chunks(tmp_path: Path, make_ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    """The extraction thread is bounded by chunks waiting, not by a file count: many small files are all
    prepared while the consumer is busy with the first, and a tight bound keeps it near the consumer."""
    import threading

    from ctxqa.ingest.discover import discover
    from ctxqa.ingest.loaders import SUPPORTED_SUFFIXES

    root = write_tree(tmp_path / "docs", {f"n{i:02}.txt": f"Note {i}: the green team met on day {i}."
                                          for i in range(20)})
    todo = [f for f in discover([root], SUPPORTED_SUFFIXES)]
    ing = make_ctx().ingestor
    real_prepare = ing._prepare
    prepared: list[str] = []
    all_done = threading.Event()
    consumed = 0
    ahead: list[int] = []  # files prepared but not yet handed to the consumer, as each prepare starts

    def prepare(f, *args):  # type: ignore[no-untyped-def]
        ahead.append(len(prepared) - consumed)
        out = real_prepare(f, *args)
        prepared.append(f.source)
        if len(prepared) == len(todo):
            all_done.set()
        return out

    monkeypatch.setattr(ing, "_prepare", prepare)
    gen = ing._prepare_all(todo, {}, {}, None, 10_000)
    first, _ = next(gen)
    # The consumer has not asked for a second file: the thread still prepares all 20 (the hang guard is
    # pytest-timeout, not this wait).
    all_done.wait()
    rest = [p.found.source for p, _ in gen]
    assert [first.found.source, *rest] == [f.source for f in todo]
    assert max(ahead) == len(todo) - 1

    prepared.clear()
    ahead.clear()
    gen = ing._prepare_all(todo, {}, {}, None, 1)  # every file has a chunk: at most one waits
    sources = []
    for p, _ in gen:
        sources.append(p.found.source)
        consumed += 1
    assert sources == [f.source for f in todo]
    # The one handed out (until the consumer counts it), the next one taken early, one waiting: never more.
    assert max(ahead) <= 3


@pytest.mark.parametrize("db, returning", [("sqlite", True), ("postgres", True), ("sqlite", False)],
                         ids=["sqlite", "postgres", "sqlite-without-returning"])
def test_chunk_rows_get_their_own_vectors_and_ids(tmp_path: Path, make_ctx, request, monkeypatch, db: str,
                                                  returning: bool) -> None:  # type: ignore[no-untyped-def]
    """Chunks are inserted many rows per statement (INSERT ... RETURNING) or, on a database without RETURNING on
    multi-row inserts (SQLite < 3.35), row by row: either way every row holds its own text's vector and the
    index holds exactly the rows' ids."""
    from ctxqa.rag.db import repo
    from ctxqa.rag.index.chunk_text import embedding_text

    db_url = f"sqlite:///{tmp_path / 'ctxqa.db'}" if db == "sqlite" else request.getfixturevalue("pg_url")
    ctx = make_ctx(database_url=db_url)
    if not returning:  # what SQLAlchemy's SQLite dialect says of SQLite before 3.35
        for flag in ("insert_returning", "update_returning", "delete_returning", "insert_executemany_returning",
                     "insert_executemany_returning_sort_by_parameter_order"):
            monkeypatch.setattr(ctx.db.engine.dialect, flag, False)

        def no_bulk(*a, **k):  # type: ignore[no-untyped-def]
            raise AssertionError("the multi-row INSERT ... RETURNING path ran on a database without it")

        monkeypatch.setattr(repo, "insert", no_bulk)
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(6):
        (root / f"doc{i}.md").write_text(f"# Doc {i}\n\n" + _handbook(f"team{i}", sections=3 + i), encoding="utf-8")
    report = ctx.ingestor.ingest([root])
    assert report.summary()["added"] == 6 and not report.failed
    assert index_ids(ctx) == db_chunk_ids(ctx)
    with ctx.db.session() as s:
        rows = s.execute(select(Chunk.text, Chunk.heading_path, Chunk.token_count, Chunk.embedding, Document.title,
                                Chunk.ordinal, Document.chunk_count)
                         .join(Document, Chunk.document_id == Document.id)
                         .order_by(Chunk.document_id, Chunk.ordinal)).all()
    assert len(rows) == report.chunks
    texts = [embedding_text(t, title, hp or (), count_tokens=ctx.embedder.count_tokens,
                            max_tokens=ctx.embedder.max_tokens, text_tokens=n) for t, hp, n, _, title, _, _ in rows]
    stored = np.stack([np.frombuffer(r[3], dtype=np.float32) for r in rows])
    assert float((stored * ctx.embedder.encode(texts)).sum(1).min()) > 0.9999
    # Hits point at the right rows: a query for one document's words finds that document's chunks first.
    hits = ctx.retriever.search("team4 handbook reviews item", k=3).hits
    assert hits and all("team4" in h.text for h in hits)
