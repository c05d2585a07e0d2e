"""Two writers ingesting into one collection at once, as two replicas do: two Contexts with their own data dirs
(their own index files) over one real database, SQLite and PostgreSQL. The database's lock on the collection
(`repo.lock_collection`) is what keeps them apart: nothing is lost, nothing duplicated, and each document ends
up as exactly one writer's version with exactly that version's chunks.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Chunk, Document

N_COMMON = 8


def page(name: str, extra: str = "") -> str:
    return (f"# {name}\n\n" + "\n\n".join(
        f"Section {i} of {name} explains how the {name} service handles request number {i} and why the "
        f"{name} team chose that design over the others they tried." for i in range(12)) + extra + "\n")


def write(folder: Path, files: dict[str, str]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()}


def at_once(*jobs: Callable[[], object]) -> list[object]:
    """Run the jobs in threads released together; re-raise the first failure."""
    barrier = threading.Barrier(len(jobs))
    out: list[object] = [None] * len(jobs)

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = jobs[i]()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in out:
        if isinstance(o, BaseException):
            raise o
    return out


def check_consistent(ctx, collection: str, texts: dict[str, dict[str, str]]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Every document once, ingested, with chunks 0..n-1 taken from the version its sha256 names; the
    database holds no other chunks; both replicas' indexes hold exactly the database's chunks. Returns source ->
    sha256."""
    with ctx.db.session() as s:
        coll = repo.require_collection(s, collection)
        docs = list(s.scalars(select(Document).where(Document.collection_id == coll.id)))
        assert len({d.source for d in docs}) == len(docs)
        total = 0
        for d in docs:
            assert d.status == "ingested", (d.source, d.error)
            rows = list(s.scalars(select(Chunk).where(Chunk.document_id == d.id).order_by(Chunk.ordinal)))
            assert [c.ordinal for c in rows] == list(range(d.chunk_count)) and rows, d.source
            version = texts[d.source][d.sha256]
            assert all(c.text in version for c in rows), d.source  # plain text: chunks are slices of the file
            total += len(rows)
        assert s.scalar(select(func.count(Chunk.id)).where(Chunk.collection_id == coll.id)) == total
        db_ids = set(repo.collection_chunk_ids(s, coll.id).tolist())
    assert set(ctx.store.get(coll).ids().tolist()) == db_ids
    return {d.source: d.sha256 for d in docs}


def test_two_writers_into_one_collection(tmp_path: Path, make_ctx, db_url: str) -> None:  # type: ignore[no-untyped-def]
    a = make_ctx(database_url=db_url, data_dir=tmp_path / "replica-a")
    b = make_ctx(database_url=db_url, data_dir=tmp_path / "replica-b")
    common = {f"common-{i}.txt": page(f"common{i}") for i in range(N_COMMON)}
    only_a = {f"a-{i}.txt": page(f"alpha{i}") for i in range(3)}
    only_b = {f"b-{i}.txt": page(f"bravo{i}") for i in range(3)}
    texts: dict[str, dict[str, str]] = {}
    for files in (common, only_a, only_b):
        for name, text in files.items():
            texts.setdefault(name, {})[hashlib.sha256(text.encode()).hexdigest()] = text
    write(tmp_path / "a1" / "common", common)
    write(tmp_path / "b1" / "common", common)
    write(tmp_path / "a1" / "own", only_a)
    write(tmp_path / "b1" / "own", only_b)

    # Round 1: the same new files from both at once, plus each one's own.
    ra, rb = at_once(lambda: a.ingestor.ingest([tmp_path / "a1/common", tmp_path / "a1/own"], collection="race"),
                     lambda: b.ingestor.ingest([tmp_path / "b1/common", tmp_path / "b1/own"], collection="race"))
    for rep in (ra, rb):
        assert not rep.failed, [(r.source, r.reason) for r in rep.failed]
    for name in common:
        got = sorted(r.status for rep in (ra, rb) for r in rep.results if r.source == name)
        assert got == ["added", "unchanged"], (name, got)  # one wrote it, the other found it written
    assert sorted(r.source for rep in (ra, rb) for r in rep.results if r.status == "added") == \
        sorted([*common, *only_a, *only_b])
    final = check_consistent(a, "race", texts)
    assert check_consistent(b, "race", texts) == final and len(final) == N_COMMON + 6

    # Round 2: both change the same documents at once, differently; the second writer's version wins whole.
    v_a = {n: t + "\nAppendix: the alpha-marker edition.\n" for n, t in common.items()}
    v_b = {n: t + "\nAppendix: the bravo-marker edition.\n" for n, t in common.items()}
    sha_a, sha_b = write(tmp_path / "a2", v_a), write(tmp_path / "b2", v_b)
    for n in common:
        texts[n][sha_a[n]], texts[n][sha_b[n]] = v_a[n], v_b[n]
    ra, rb = at_once(lambda: a.ingestor.ingest([tmp_path / "a2"], collection="race"),
                     lambda: b.ingestor.ingest([tmp_path / "b2"], collection="race"))
    for rep in (ra, rb):
        assert not rep.failed, [(r.source, r.reason) for r in rep.failed]
        assert {r.status for r in rep.results} == {"updated"}
    final = check_consistent(a, "race", texts)
    assert check_consistent(b, "race", texts) == final
    for n in common:
        assert final[n] in (sha_a[n], sha_b[n])
        winner, loser = ("alpha", "bravo") if final[n] == sha_a[n] else ("bravo", "alpha")
        with a.db.session() as s:
            chunk_texts = " ".join(s.scalars(select(Chunk.text).join(Document).where(Document.source == n)))
        assert f"{winner}-marker" in chunk_texts and f"{loser}-marker" not in chunk_texts

    # Deleting through one is seen by the other at its next read.
    with b.db.session() as s:
        doc_id = repo.documents_by_source(s, repo.require_collection(s, "race").id, ["a-0.txt"])["a-0.txt"].id
    assert b.ingestor.delete_documents("race", [doc_id]) == 1
    del texts["a-0.txt"]
    assert "a-0.txt" not in check_consistent(a, "race", texts)


def waiting_on_a_lock(pg_url: str) -> bool:
    """Some backend of this test's database waits for a lock (PostgreSQL's own view of it)."""
    import psycopg

    from tests.conftest import PG_ADMIN

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                           (pg_url.rsplit("/", 1)[1],)).fetchone()
    return bool(row and row[0])


def test_writers_of_one_collection_take_turns(tmp_path: Path, make_ctx, pg_url: str,  # type: ignore[no-untyped-def]
                                              monkeypatch) -> None:
    """The interleaving that loses data without the lock, forced: the first writer holds its transaction open
    right after reading what is there; the second must wait (PostgreSQL shows it waiting for the lock) instead of
    reading the same state and writing on top of it."""
    a = make_ctx(database_url=pg_url, data_dir=tmp_path / "replica-a")
    b = make_ctx(database_url=pg_url, data_dir=tmp_path / "replica-b")
    files = {f"doc-{i}.txt": page(f"turns{i}") for i in range(4)}
    write(tmp_path / "a", files)
    write(tmp_path / "b", files)
    real = repo.documents_by_source
    first_inside, release, overlapped = threading.Event(), threading.Event(), threading.Event()
    holder: list[int] = []

    def spy(s, collection_id, sources=None):  # type: ignore[no-untyped-def]
        out = real(s, collection_id, sources)
        if sources is not None:  # a writer's look-up, inside its write transaction
            if not holder:
                holder.append(threading.get_ident())
                first_inside.set()
                assert release.wait(600), "hang guard"
            elif not release.is_set():
                overlapped.set()  # a second writer read while the first one's transaction was open
        return out

    monkeypatch.setattr(repo, "documents_by_source", spy)
    threads = [threading.Thread(target=lambda c=c, n=n: out.append(c.ingestor.ingest([tmp_path / n], collection="turns")))
               for c, n in ((a, "a"), (b, "b"))]
    out: list = []  # type: ignore[type-arg]
    # The collection exists before both start, so both writers lock the same row.
    with a.db.session() as s:
        repo.ensure_collection(s, "turns", a.embedder.name, a.embedder.dim)
    for t in threads:
        t.start()
    assert first_inside.wait(600), "hang guard"
    deadline = threading.Event()
    for _ in range(6000):  # until the second writer waits for the lock, or reads anyway (hang guard: ~10 min)
        if overlapped.is_set() or waiting_on_a_lock(pg_url):
            break
        deadline.wait(0.1)
    release.set()
    for t in threads:
        t.join()
    assert not overlapped.is_set(), "the second writer read the collection inside the first one's transaction"
    assert len(out) == 2 and all(not rep.failed for rep in out), [r.failed for r in out]
    statuses = sorted(r.status for rep in out for r in rep.results)
    assert statuses == ["added"] * 4 + ["unchanged"] * 4
    texts = {n: {hashlib.sha256(t.encode()).hexdigest(): t} for n, t in files.items()}
    assert len(check_consistent(b, "turns", texts)) == 4
