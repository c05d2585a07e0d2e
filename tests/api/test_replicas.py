"""Replicas: two real `ctxqa serve` processes on one real PostgreSQL database (the same CTXQA_DATABASE_URL), each
with its own data dir (its own index files), as docker/compose.yaml runs them. The schema is migrated once with
`ctxqa db upgrade` before they start, as the compose file does.

- A document uploaded through A is searchable and answerable through B at B's next request, and one deleted
  through B is gone from A at A's next request (the collection's generation tells a replica its index is stale).
- Both ingesting into one collection at once lose nothing and duplicate nothing (the database lock on the
  collection row, `repo.lock_collection`).
- A replica killed (SIGKILL) in the middle of an upload leaves the database consistent for the other, whose
  `ctxqa doctor` is clean, and which can finish the job; the killed one restarts consistent too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.api.test_api import FASTAPI_DOCS, SECRET_MD, Server, start_server, stop_server
from tests.conftest import PG_ADMIN, _pg_available, skip_or_fail

REPO = Path(__file__).resolve().parents[2]
ENV = {"CTXQA_MAX_FILES_PER_UPLOAD": "200", "CTXQA_MAX_NEW_TOKENS": "32"}
PASSWORD = "not-a-real-pw-7f3a"

pytestmark = [pytest.mark.postgres, pytest.mark.skipif(_pg_available() is not None, reason=str(_pg_available()))]


@pytest.fixture(scope="module")
def pg() -> Iterator[str]:
    import psycopg

    name = f"ctxqa_replicas_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = dict(p.split("=", 1) for p in PG_ADMIN.split())
    # A password in the URL (trust auth ignores it) to check that no command prints it.
    url = (f"postgresql+psycopg://{params.get('user', 'postgres')}:{PASSWORD}@{params.get('host', '127.0.0.1')}:"
           f"{params.get('port', '5432')}/{name}")
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def ctxqa(args: list[str], data_dir: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTXQA_")}
    env.update({"CTXQA_DATA_DIR": str(data_dir), "CTXQA_DATABASE_URL": url, "PYTHONPATH": str(REPO),
                "CTXQA_CONFIG": str(data_dir / "absent.toml")})
    return subprocess.run([sys.executable, "-m", "ctxqa", *args], env=env, capture_output=True, text=True)


def admin_key(url: str, name: str) -> str:
    from ctxqa.api.keys import create_key
    from ctxqa.rag.db.session import Database

    db = Database(url)
    try:
        with db.session() as s:
            return create_key(s, name, admin=True).secret
    finally:
        db.dispose()


def replica(root: Path, url: str, name: str) -> Server:
    srv = start_server(root / name, {**ENV, "CTXQA_DATABASE_URL": url})
    srv.keys["admin"] = admin_key(url, f"admin-{name}-{uuid.uuid4().hex[:6]}")
    return srv


@pytest.fixture(scope="module")
def replicas(pg: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("replicas")
    up = ctxqa(["db", "upgrade"], root / "migrate", pg)
    assert up.returncode == 0, up.stderr
    assert "→" in up.stdout and PASSWORD not in up.stdout + up.stderr
    a, b = replica(root, pg, "a"), replica(root, pg, "b")
    state = {"a": a, "b": b, "root": root, "url": pg}
    yield state
    for srv in (state["a"], state["b"]):
        stop_server(srv)


def db_state(url: str, collection: str) -> dict[str, tuple[str, int]]:
    """source -> (status, chunks) of the collection's documents, after checking each document's chunk rows are
    exactly ordinals 0..n-1 and the collection holds no other chunks."""
    from ctxqa.rag.db import repo
    from ctxqa.rag.db.models import Chunk, Document
    from ctxqa.rag.db.session import Database

    db = Database(url, auto_migrate=False)
    try:
        with db.session() as s:
            coll = repo.get_collection(s, collection)
            if coll is None:
                return {}
            out: dict[str, tuple[str, int]] = {}
            total = 0
            for d in s.scalars(select(Document).where(Document.collection_id == coll.id)):
                ords = list(s.scalars(select(Chunk.ordinal).where(Chunk.document_id == d.id).order_by(Chunk.ordinal)))
                assert ords == list(range(d.chunk_count)), (d.source, ords[:5], d.chunk_count)
                assert d.status == "ingested" and d.chunk_count > 0, (d.source, d.status, d.error)
                out[d.source] = (d.status, d.chunk_count)
                total += len(ords)
            assert s.scalar(select(func.count(Chunk.id)).where(Chunk.collection_id == coll.id)) == total
            return out
    finally:
        db.dispose()


def count_docs(url: str, collection: str) -> int:
    import psycopg

    dbname = url.rsplit("/", 1)[1]
    params = dict(p.split("=", 1) for p in PG_ADMIN.split())
    params["dbname"] = dbname
    with psycopg.connect(" ".join(f"{k}={v}" for k, v in params.items())) as conn:
        row = conn.execute("SELECT count(*) FROM documents d JOIN collections c ON c.id = d.collection_id "
                           "WHERE c.name = %s", (collection,)).fetchone()
        return int(row[0]) if row else 0


def doctor_clean(srv: Server, url: str) -> None:
    r = ctxqa(["doctor", "--json"], srv.data_dir, url)
    assert r.returncode == 0, r.stdout + r.stderr


def search_ids(c: httpx.Client, query: str, collection: str) -> list[int]:
    r = c.post("/v1/search", json={"query": query, "collection": collection, "top_k": 10})
    assert r.status_code == 200, r.text
    return [h["document_id"] for h in r.json()["hits"]]


def md_files(n: int, skip: int = 0) -> list[Path]:
    """Real Markdown pages with distinct file names (an upload's names become its documents' sources)."""
    by_name: dict[str, Path] = {}
    for p in sorted(FASTAPI_DOCS.rglob("*.md")):
        by_name.setdefault(p.name, p)
    files = sorted(by_name.values())[skip:skip + n]
    if len(files) < n:
        skip_or_fail(f"the shared fastapi-docs corpus is not at {FASTAPI_DOCS}")
    return files


def upload(c: httpx.Client, files: list[Path], collection: str) -> httpx.Response:
    return c.post("/v1/documents", data={"collection": collection},
                  files=[("files", (p.name, p.read_bytes(), "text/markdown")) for p in files])


def test_upload_through_a_is_answerable_through_b_and_delete_through_b_is_gone_from_a(replicas: dict) -> None:  # type: ignore[type-arg]
    a, b = replicas["a"], replicas["b"]
    with a.client() as ca, b.client() as cb:
        r = ca.post("/v1/documents", data={"collection": "shared"},
                    files=[("files", ("zebra.md", SECRET_MD.encode(), "text/markdown"))])
        assert r.status_code == 200, r.text
        doc_id = r.json()["results"][0]["document_id"]
        # B's very next requests: no waiting, no restart.
        assert search_ids(cb, "zebra protocol handshake port", "shared")[:1] == [doc_id]
        r = cb.post("/v1/ask", json={"question": "Which port does the zebra protocol handshake use?",
                                     "collection": "shared", "max_new_tokens": 32})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert not answer["abstained"] and answer["chunks"][0]["document_id"] == doc_id
        assert cb.get(f"/v1/documents/{doc_id}").json()["source"] == "zebra.md"

        assert cb.delete(f"/v1/documents/{doc_id}").status_code == 200
        assert ca.get(f"/v1/documents/{doc_id}").status_code == 404
        assert doc_id not in search_ids(ca, "zebra protocol handshake port", "shared")
        r = ca.post("/v1/ask", json={"question": "Which port does the zebra protocol handshake use?",
                                     "collection": "shared", "max_new_tokens": 32})
        assert r.status_code == 200 and all(h["document_id"] != doc_id for h in r.json()["chunks"])


def test_both_ingesting_into_one_collection_lose_and_duplicate_nothing(replicas: dict) -> None:  # type: ignore[type-arg]
    a, b = replicas["a"], replicas["b"]
    common, only_a, only_b = md_files(10), md_files(5, skip=10), md_files(5, skip=15)
    barrier = threading.Barrier(2)
    out: dict[str, httpx.Response] = {}

    def send(name: str, srv: Server, files: list[Path]) -> None:
        with srv.client(timeout=600) as c:
            barrier.wait()
            out[name] = upload(c, files, "race")

    threads = [threading.Thread(target=send, args=("a", a, common + only_a)),
               threading.Thread(target=send, args=("b", b, common + only_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = {}
    for name, r in out.items():
        assert r.status_code == 200, r.text
        results[name] = {x["filename"]: x["status"] for x in r.json()["results"]}
        assert "failed" not in results[name].values(), r.text
    for p in common:  # one replica wrote it; the other found it written
        assert sorted([results["a"][p.name], results["b"][p.name]]) == ["added", "unchanged"], p.name
    state = db_state(replicas["url"], "race")
    assert sorted(state) == sorted(p.name for p in common + only_a + only_b)

    with a.client() as ca, b.client() as cb:
        listed = [{d["source"]: d for d in c.get("/v1/documents", params={"collection": "race", "limit": 100})
                   .json()["documents"]} for c in (ca, cb)]
        assert listed[0] == listed[1] and len(listed[0]) == 20
        for c in (ca, cb):  # each replica finds the other's documents by their titles
            for p in (only_a[0], only_b[0], common[0]):
                doc = listed[0][p.name]
                assert doc["id"] in search_ids(c, doc["title"], "race"), (p.name, doc["title"])
    for srv in (a, b):  # and each one's index files hold exactly the database's chunks
        doctor_clean(srv, replicas["url"])


def test_a_replica_killed_mid_upload_leaves_the_other_consistent(replicas: dict) -> None:  # type: ignore[type-arg]
    a, b, url = replicas["a"], replicas["b"], replicas["url"]
    files = md_files(100, skip=20)
    failure: list[BaseException] = []

    def send() -> None:
        try:
            with a.client(timeout=600) as c:
                upload(c, files, "big")
        except httpx.HTTPError as exc:  # the server died under it
            failure.append(exc)

    t = threading.Thread(target=send)
    t.start()
    # Kill A once its first group has committed (documents are there) but the upload is still running.
    deadline = time.monotonic() + 600  # hang guard only
    while count_docs(url, "big") == 0:
        assert t.is_alive(), "the upload finished before anything could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    a.proc.kill()
    a.proc.wait(30)
    t.join()
    committed = db_state(url, "big")
    assert failure and 0 < len(committed) < len(files), (len(committed), failure)

    with b.client(timeout=600) as cb:
        r = cb.get("/v1/documents", params={"collection": "big", "limit": 200})
        assert r.status_code == 200 and r.json()["total"] == len(committed)
        assert cb.post("/v1/search", json={"query": "dependencies", "collection": "big"}).status_code == 200
        doctor_clean(b, url)
        # B finishes A's job: what A committed is unchanged, the rest is added.
        r = upload(cb, files, "big")
        assert r.status_code == 200, r.text
        status = {x["filename"]: x["status"] for x in r.json()["results"]}
        assert {n for n, s in status.items() if s == "unchanged"} == set(committed)
        assert {n for n, s in status.items() if s == "added"} == {p.name for p in files} - set(committed)
    assert sorted(db_state(url, "big")) == sorted(p.name for p in files)
    doctor_clean(b, url)

    # The killed replica restarts on its data dir and is consistent too (its stale index is rebuilt at start).
    replicas["a"] = restarted = start_server(a.data_dir.parent, {**ENV, "CTXQA_DATABASE_URL": url})
    restarted.keys["admin"] = admin_key(url, f"admin-a2-{uuid.uuid4().hex[:6]}")
    doctor_clean(restarted, url)
    with restarted.client() as ca:
        r = ca.get("/v1/documents", params={"collection": "big", "limit": 200})
        assert r.json()["total"] == len(files)
