"""How long replica B takes to see a document uploaded through replica A: two `ctxqa serve` processes on one
PostgreSQL database, each with its own data dir (index files), as docker/compose.yaml runs them.

The collection is first filled with real pages (default: 60 fastapi-docs pages), so B's index rebuild has real
work. Then, N times: upload one small document with a unique word through A; as soon as A's response is back,
search for that word through B, again and again, until B returns the document. Prints p50/p95 of the time from
A's response to B's first response that has the document, of B's first search after each upload (its index
catches up inside that request), and how many searches B needed (1 = visible at B's next request).

    python bench/replica_visibility.py [--uploads 20] [--pages 60] [--pg postgresql+psycopg://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CTXQA_EMBEDDING_CACHE_DIR", str(Path(tempfile.gettempdir()) / "ctxqa-bench-cache"))

import httpx  # noqa: E402
from _report import cpu_model, pct  # noqa: E402

from tests.api.test_api import Server, start_server, stop_server  # noqa: E402


def serve(root: Path, url: str) -> Server:
    """One replica: its own data dir under `root`, the shared database `url`."""
    return start_server(root, {"CTXQA_DATABASE_URL": url, "CTXQA_MAX_FILES_PER_UPLOAD": "200"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--pages", type=int, default=60)
    ap.add_argument("--pg", default=os.environ.get("CTXQA_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432"))
    ap.add_argument("--corpus", type=Path, default=HERE.parent / "shared/data/corpora/fastapi-docs")
    args = ap.parse_args()

    import psycopg

    from ctxqa.api.keys import create_key
    from ctxqa.rag.db.session import Database

    name = f"ctxqa_bench_{uuid.uuid4().hex[:8]}"
    admin = args.pg.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{args.pg}/{name}"
    root = Path(tempfile.mkdtemp(prefix="ctxqa-bench-replicas-"))
    servers: list[Server] = []
    try:
        db = Database(url)  # migrates once, as `ctxqa db upgrade` does before compose starts the replicas
        with db.session() as s:
            key = create_key(s, "bench", admin=True).secret
        db.dispose()
        servers = [serve(root / "a", url), serve(root / "b", url)]
        a, b = servers[0].url, servers[1].url
        h = {"Authorization": f"Bearer {key}"}
        ca, cb = httpx.Client(base_url=a, headers=h, timeout=600), httpx.Client(base_url=b, headers=h, timeout=600)
        by_name: dict[str, Path] = {}
        for p in sorted(args.corpus.rglob("*.md")):
            by_name.setdefault(p.name, p)
        pages = sorted(by_name.values())[: args.pages]
        r = ca.post("/v1/documents", data={"collection": "bench"},
                    files=[("files", (p.name, p.read_bytes(), "text/markdown")) for p in pages])
        r.raise_for_status()
        chunks = sum(x["chunks"] for x in r.json()["results"])
        cb.post("/v1/search", json={"query": "warm up", "collection": "bench"}).raise_for_status()
        print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average {os.getloadavg()[0]:.1f}")
        print(f"collection: {len(pages)} pages, {chunks} chunks; {args.uploads} uploads through A, searched through B")

        visible, first_search, tries = [], [], []
        for i in range(args.uploads):
            word = f"quokka{uuid.uuid4().hex[:10]}"
            body = f"# Note {i}\n\nThe {word} rotation policy is reviewed every {i + 2} weeks.\n".encode()
            r = ca.post("/v1/documents", data={"collection": "bench"}, files=[("files", (f"note-{i}.md", body, "text/markdown"))])
            r.raise_for_status()
            doc_id = r.json()["results"][0]["document_id"]
            t0 = time.perf_counter()
            n = 0
            while True:
                n += 1
                t = time.perf_counter()
                hits = cb.post("/v1/search", json={"query": word, "collection": "bench", "mode": "lexical"}).json()["hits"]
                if n == 1:
                    first_search.append(time.perf_counter() - t)
                if any(x["document_id"] == doc_id for x in hits):
                    visible.append(time.perf_counter() - t0)
                    tries.append(n)
                    break
                if time.perf_counter() - t0 > 120:
                    raise SystemExit(f"B did not see document {doc_id} within 120 s")
        ms = [v * 1000 for v in visible]
        fs = [v * 1000 for v in first_search]
        print(f"visible through B after A's response: p50 {pct(ms, 0.5):.0f} ms, p95 {pct(ms, 0.95):.0f} ms, "
              f"max {max(ms):.0f} ms")
        print(f"B's first search after an upload (index catches up inside it): p50 {pct(fs, 0.5):.0f} ms, "
              f"p95 {pct(fs, 0.95):.0f} ms")
        print(f"searches B needed: {statistics.mean(tries):.2f} on average (1 = at its next request), max {max(tries)}")
    finally:
        for srv in servers:
            stop_server(srv)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
