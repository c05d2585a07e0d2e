"""HTTP API tests against a real `ctxqa serve` (uvicorn) process on 127.0.0.1, with a fresh data directory.

The server runs as a subprocess (exactly what users run); API keys are created with `api.keys` directly in the
server's SQLite database (and once through the `ctxqa keys` CLI). Documents reach it through the upload
endpoint. /v1/ask tests use the embedded default model (llama.cpp + bundled SmolLM2-135M) with greedy decoding
and small token budgets; they are skipped, with the reason, where llama-cpp-python is not installed.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, new_pg_database
from tests.pdfs import make_pdf

REPO = Path(__file__).resolve().parents[2]
FASTAPI_DOCS = Path(os.environ.get("CTXQA_SHARED", REPO.parent / "shared")) / "data/corpora/fastapi-docs"

LIMITS = {
    "CTXQA_MAX_UPLOAD_BYTES": "200000",
    "CTXQA_MAX_FILES_PER_UPLOAD": "4",
    "CTXQA_MAX_QUESTION_CHARS": "400",
    "CTXQA_MAX_TOP_K": "10",
    "CTXQA_MAX_NEW_TOKENS_LIMIT": "64",
    "CTXQA_QUEUE_SIZE": "1",
}




# ---------------------------------------------------------------------------------------------------------------
# A real server
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def db_url(self) -> str:
        """The server's database: the PostgreSQL URL it was given, else its SQLite file."""
        return self.env.get("CTXQA_DATABASE_URL") or f"sqlite:///{self.data_dir / 'ctxqa.db'}"

    def client(self, key: str | None = "admin", timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(root: Path, extra_env: dict[str, str] | None = None) -> Server:
    """Start `ctxqa serve` on a free port with data in `root/data`; wait until /readyz says ready (or the process
    exits: then its log is the error). The run's hang guard is pytest-timeout, not a deadline here."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTXQA_")}
    env.update({"CTXQA_DATA_DIR": str(data), "CTXQA_CONFIG": str(root / "no-ctxqa.toml"), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(REPO), "CTXQA_EMBEDDING_CACHE_DIR": os.environ["CTXQA_EMBEDDING_CACHE_DIR"]})
    env.update(extra_env or {})
    log = root / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctxqa", "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level",
         "warning"], cwd=root, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return Server(url, data, env, proc, log)


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)


def create_key(server: Server, name: str, collections: list[str] | None = None, admin: bool = False) -> str:
    from ctxqa.api.keys import create_key as make
    from ctxqa.rag.db.session import Database

    db = Database(server.db_url)
    try:
        with db.session() as s:
            return make(s, name, collections=collections, admin=admin).secret
    finally:
        db.dispose()


# ---------------------------------------------------------------------------------------------------------------
# Test documents
# ---------------------------------------------------------------------------------------------------------------

WIDGETS_MD = """# Widget catalogue

## Prices

The blue widget costs 42 euros and ships from Lyon within two days.
The red widget costs 17 euros and is made in Porto.

## Returns

Widgets can be returned within 30 days for a full refund.
"""

PAGE_HTML = """<!DOCTYPE html><html><head><title>Gadget guide</title></head><body>
<h1>Gadget guide</h1><p>The green gadget runs on two AA batteries and weighs 310 grams.</p>
</body></html>"""

SECRET_MD = """# Zebra protocol

The zebra protocol handshake uses port 7788 and a rotating quartz token.
"""


# ---------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server per database: every API test runs against SQLite and against PostgreSQL."""
    root = tmp_path_factory.mktemp(f"api-{request.param}")
    with contextlib.ExitStack() as stack:
        env = dict(LIMITS)
        if request.param == "postgres":
            env["CTXQA_DATABASE_URL"] = stack.enter_context(new_pg_database())
        srv = start_server(root, env)
        stack.callback(stop_server, srv)
        srv.keys["admin"] = create_key(srv, "admin", admin=True)
        srv.keys["alpha"] = create_key(srv, "alpha-only", collections=["alpha"])
        srv.keys["user"] = create_key(srv, "user")  # every collection, not admin
        srv.keys["revoked"] = create_key(srv, "to-revoke")
        yield srv
        if os.environ.get("CTXQA_TEST_SHOW_SERVER_LOG"):
            print(srv.log_text())
        assert_no_server_errors(srv)


def assert_no_server_errors(server: Server) -> None:
    """At the end of the server's life (whatever order its tests ran in): every request was answered without
    an internal error (the 503s of the queue test are deliberate and are the only 5xx), and no traceback."""
    with server.client("admin") as c:
        text = c.get("/metrics").text
    fives = {s: metric(text, "ctxqa_http_requests_total", status=str(s)) for s in range(500, 600)}
    assert {s: n for s, n in fives.items() if n and s != 503} == {}, server.log_text()[-5000:]
    assert "Traceback" not in server.log_text()


@pytest.fixture(scope="session")
def corpus(server: Server) -> dict[str, Any]:
    """Upload the test documents: alpha (md, PDF named .bin, HTML named .txt), beta (secret), default (docs)."""
    ids: dict[str, int] = {}
    with server.client("admin") as c:
        files = [
            ("files", ("widgets.md", WIDGETS_MD.encode(), "text/markdown")),
            ("files", ("report.bin", make_pdf(["Quarterly report", "Revenue grew by 12 percent in Q3."]),
                       "application/octet-stream")),
            ("files", ("page.txt", PAGE_HTML.encode(), "text/plain")),
        ]
        r = c.post("/v1/documents", files=files, data={"collection": "alpha", "metadata": '{"team": "sales"}'})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["collection"] == "alpha"
        for res in body["results"]:
            assert res["status"] == "added", res
            ids[res["filename"]] = res["document_id"]
        r = c.post("/v1/documents", files=[("files", ("secret.md", SECRET_MD.encode(), "text/markdown"))],
                   data={"collection": "beta"})
        assert r.status_code == 200, r.text
        ids["secret.md"] = r.json()["results"][0]["document_id"]
        docs = [FASTAPI_DOCS / "tutorial/query-params.md", FASTAPI_DOCS / "tutorial/path-params.md"]
        if all(p.is_file() for p in docs):
            r = c.post("/v1/documents", files=[("files", (p.name, p.read_bytes(), "text/markdown")) for p in docs])
        else:  # the shared corpus is not here: a small stand-in with the same topic
            r = c.post("/v1/documents", files=[("files", ("query-params.md", (
                b"# Query Parameters\n\nWhen you declare other function parameters that are not part of the path "
                b"parameters, they are automatically interpreted as query parameters.\n"), "text/markdown"))])
        assert r.status_code == 200, r.text
        assert all(x["status"] == "added" for x in r.json()["results"]), r.text
        upload = r.json()
    return {"ids": ids, "default_upload": upload}


def raw_multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "ctxqaBoundary7MA4YWxk"
                  ) -> tuple[bytes, dict[str, str]]:
    """A multipart body built by hand, so file names reach the server byte for byte (httpx escapes them)."""
    out = bytearray()
    for name, filename, data in parts:
        out += f"--{boundary}\r\n".encode()
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"Content-Disposition: {disp}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), {"content-type": f"multipart/form-data; boundary={boundary}"}


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in r.text
    return body["error"]


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str | None, str]]:
    """Parse a text/event-stream into (event, data) pairs."""
    event: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" ") if line.startswith("data: ") else line[5:])
    if data:
        yield event, "\n".join(data)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample over series matching `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+([-+\deE.naNinf]+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


# ---------------------------------------------------------------------------------------------------------------
# Health, docs, metrics
# ---------------------------------------------------------------------------------------------------------------


def test_health_and_ready_need_no_key(server: Server) -> None:
    with server.client(None) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200
        assert r.json()["ready"] is True
        assert r.json()["checks"] == {"database": True, "index": True, "model": True}
        schema = c.get("/openapi.json").json()
        paths = set(schema["paths"])
        for p in ("/v1/ask", "/v1/search", "/v1/documents", "/v1/documents/{doc_id}", "/v1/collections",
                  "/v1/collections/{name}", "/v1/chat/completions", "/v1/answers/{answer_id}", "/healthz",
                  "/readyz", "/metrics"):
            assert p in paths, p
        assert c.get("/docs").status_code == 200


def test_metrics_require_a_key_and_report_routes(server: Server, corpus: dict[str, Any]) -> None:
    with server.client(None) as c:
        r = c.get("/metrics")
        assert r.status_code == 401
    with server.client("user") as c:
        c.post("/v1/search", json={"query": "widget", "collection": "alpha"})
        text = c.get("/metrics").text
    assert metric(text, "ctxqa_http_requests_total", route="/v1/search", method="POST", status="200") >= 1
    assert metric(text, "ctxqa_http_request_duration_seconds_count", route="/v1/search") >= 1
    assert metric(text, "ctxqa_ingest_files_total", status="added") >= 5
    assert metric(text, "ctxqa_ingest_chunks_total") >= 5
    assert "ctxqa_generation_queue_depth" in text
    assert "ctxqa_tokens_generated_total" in text
    assert metric(text, "ctxqa_auth_failures_total") >= 1


def test_auth_disabled_warns_loudly(tmp_path: Path) -> None:
    """The start-up banner (checked on the function the lifespan calls: no second model load)."""
    r = subprocess.run([sys.executable, "-c", "from ctxqa.api.app import warn_auth_disabled; from ctxqa.rag.config import "
                        "Settings; warn_auth_disabled(Settings(auth_disabled=True))"],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "AUTHENTICATION IS DISABLED" in r.stderr


# ---------------------------------------------------------------------------------------------------------------
# Auth and scoping
# ---------------------------------------------------------------------------------------------------------------


def test_missing_bad_and_revoked_keys_get_401(server: Server, corpus: dict[str, Any]) -> None:
    from ctxqa.api.keys import revoke_key
    from ctxqa.rag.db.session import Database

    with server.client(None) as c:
        for path, method in (("/v1/search", "POST"), ("/v1/documents", "GET"), ("/v1/collections", "GET"),
                             ("/v1/ask", "POST"), ("/v1/answers/1", "GET"), ("/v1/chat/completions", "POST")):
            r = c.request(method, path, json={"query": "x"} if method == "POST" else None)
            assert r.status_code == 401, (path, r.text)
            assert error_of(r)["code"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = c.get("/v1/collections", headers={"Authorization": "Bearer ctxqa_not-a-real-key"})
        assert r.status_code == 401
        r = c.get("/v1/collections", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert r.status_code == 401
    with server.client("revoked") as c:
        assert c.get("/v1/collections").status_code == 200
        db = Database(server.db_url)
        with db.session() as s:
            revoke_key(s, "to-revoke")
        db.dispose()
        assert c.get("/v1/collections").status_code == 401


def test_only_a_hash_of_each_key_is_stored(server: Server) -> None:
    from sqlalchemy import text

    from ctxqa.rag.db.session import Database

    db = Database(server.db_url)
    with db.session() as s:
        rows = [tuple(r) for r in s.execute(text("SELECT name, prefix, key_hash FROM api_keys"))]
    db.dispose()
    dump = json.dumps(rows)
    for secret in server.keys.values():
        assert secret not in dump
    import hashlib

    hashes = {r[2] for r in rows}
    assert hashlib.sha256(server.keys["admin"].encode()).hexdigest() in hashes


def test_keys_cli_create_list_revoke(server: Server) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ctxqa", "keys", *args], capture_output=True, text=True,
                              cwd=server.data_dir.parent, env=server.env)

    r = cli("create", "--name", "from-cli", "--collection", "alpha", "--json")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["collections"] == ["alpha"] and created["key"].startswith("ctxqa_")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {created['key']}"}) as c:
        names = [x["name"] for x in c.get("/v1/collections").json()["collections"]]
        assert names == ["alpha"]
        r = cli("list", "--json")
        assert r.returncode == 0, r.stderr
        listed = {k["name"]: k for k in json.loads(r.stdout)}
        assert listed["from-cli"]["prefix"] == created["key"][:12]
        assert created["key"] not in r.stdout
        assert cli("create", "--name", "from-cli").returncode == 2  # names are unique
        r = cli("revoke", "from-cli")
        assert r.returncode == 0, r.stderr
        assert c.get("/v1/collections").status_code == 401


def test_scoped_key_cannot_read_or_change_other_collections(server: Server, corpus: dict[str, Any]) -> None:
    ids = corpus["ids"]
    with server.client("alpha") as c:
        # search / ask / chat in another collection: 403 naming the field
        r = c.post("/v1/search", json={"query": "zebra protocol", "collection": "beta"})
        assert r.status_code == 403 and error_of(r)["field"] == "collection"
        r = c.post("/v1/search", json={"query": "zebra protocol"})  # the default collection is not allowed
        assert r.status_code == 403
        r = c.post("/v1/ask", json={"question": "What port?", "collection": "beta"})
        assert r.status_code == 403
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "port?"}],
                                                 "collection": "beta"})
        assert r.status_code == 403
        # its own collection works
        r = c.post("/v1/search", json={"query": "blue widget price", "collection": "alpha"})
        assert r.status_code == 200 and r.json()["hits"]
        assert all(h["collection"] == "alpha" for h in r.json()["hits"])
        # documents: listing shows only alpha; other documents are invisible (404), not just forbidden
        listed = c.get("/v1/documents").json()
        assert listed["total"] == 3 and {d["collection"] for d in listed["documents"]} == {"alpha"}
        assert c.get("/v1/documents", params={"collection": "beta"}).status_code == 403
        assert c.get(f"/v1/documents/{ids['secret.md']}").status_code == 404
        assert c.delete(f"/v1/documents/{ids['secret.md']}").status_code == 404
        assert c.get(f"/v1/documents/{ids['widgets.md']}").status_code == 200
        # uploads and collection changes elsewhere: 403
        r = c.post("/v1/documents", files=[("files", ("x.md", b"# x\n\nhello", "text/markdown"))],
                   data={"collection": "beta"})
        assert r.status_code == 403
        assert c.post("/v1/collections", json={"name": "gamma"}).status_code == 403
        assert c.delete("/v1/collections/beta").status_code == 403
        assert [x["name"] for x in c.get("/v1/collections").json()["collections"]] == ["alpha"]
    with server.client("admin") as c:  # the secret document is still there
        assert c.get(f"/v1/documents/{ids['secret.md']}").status_code == 200


# ---------------------------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------------------------


def test_upload_sniffs_content_and_never_uses_names_as_paths(server: Server, corpus: dict[str, Any]) -> None:
    ids = corpus["ids"]
    with server.client("admin") as c:
        pdf = c.get(f"/v1/documents/{ids['report.bin']}").json()
        assert pdf["media_type"] == "application/pdf" and pdf["pages"] == 1 and pdf["chunk_count"] >= 1
        assert pdf["source"] == "report.bin" and pdf["metadata"]["team"] == "sales"
        assert not pdf["title"].startswith("part-")  # never the server's temp name
        html = c.get(f"/v1/documents/{ids['page.txt']}").json()
        assert html["media_type"] == "text/html" and html["title"] == "Gadget guide"
        evil = "../../../../tmp/evil\x07name.md"
        content, headers = raw_multipart([
            ("files", evil, b"# Evil\n\nTraversal attempts are neutralised."),
            ("files", "C:\\Windows\\system.ini", b"plain text about windows"),
            ("files", "blob.md", bytes(range(256)) * 8),
            ("collection", None, b"scratch"),
        ])
        r = c.post("/v1/documents", content=content, headers=headers)
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        assert res[0]["filename"] == "evilname.md" and res[0]["status"] == "added"
        assert res[1]["filename"] == "system.ini" and res[1]["media_type"] == "text/plain"
        assert res[2]["status"] == "failed" and "unsupported" in res[2]["reason"]
        assert not Path("/tmp/evilname.md").exists() and not Path("/tmp/evil\x07name.md").exists()
        doc = c.get(f"/v1/documents/{res[0]['document_id']}").json()
        assert doc["source"] == "evilname.md" and "path" not in doc
        # the upload folder is cleaned up after ingestion
        uploads = server.data_dir / "uploads"
        assert not uploads.exists() or not any(uploads.iterdir())
        # re-uploading the same name updates; identical content is unchanged
        content, headers = raw_multipart([("files", evil, b"# Evil\n\nTraversal attempts are neutralised."),
                                          ("collection", None, b"scratch")])
        r = c.post("/v1/documents", content=content, headers=headers)
        assert r.json()["results"][0]["status"] == "unchanged"


def test_upload_limits(server: Server) -> None:
    with server.client("admin") as c:
        big = b"a" * 250_000
        r = c.post("/v1/documents", files=[("files", ("ok.txt", b"small", "text/plain")),
                                           ("files", ("huge.txt", big, "text/plain"))])
        assert r.status_code == 413
        err = error_of(r)
        assert err["field"] == "files" and "huge.txt" in err["message"]
        r = c.post("/v1/documents", files=[("files", (f"f{i}.txt", b"x", "text/plain")) for i in range(5)])
        assert r.status_code == 413 and error_of(r)["field"] == "files"
        r = c.post("/v1/documents", json={"files": []})
        assert r.status_code == 415
        r = c.post("/v1/documents", files=[("files", ("a.md", b"# a\n\nb", "text/markdown"))],
                   data={"metadata": "[1, 2]"})
        assert r.status_code == 422 and error_of(r)["field"] == "metadata"
        r = c.post("/v1/documents", files=[("files", ("a.md", b"# a\n\nb", "text/markdown"))],
                   data={"collection": "bad/name"})
        assert r.status_code == 422 and error_of(r)["field"] == "collection"
        r = c.post("/v1/documents", data={"collection": "alpha"}, files=[("other", ("a.md", b"x", "text/plain"))])
        assert r.status_code == 422
        r = c.post("/v1/documents", content=b"--x\r\nnot really multipart",
                   headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code in (400, 422)


def test_upload_is_streamed_to_disk(server: Server) -> None:
    """A file larger than the parser's in-memory spool still works and ends up ingested (written in parts)."""
    body = ("# Big\n\n" + "\n\n".join(f"Paragraph {i}: the ledger line number {i} is balanced." for i in range(2500)))
    data = body.encode()
    assert 100_000 < len(data) < 200_000
    with server.client("admin") as c:
        r = c.post("/v1/documents", files=[("files", ("ledger.md", data, "text/markdown"))],
                   data={"collection": "scratch"})
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
        assert res["status"] == "added" and res["size"] == len(data) and res["chunks"] > 10


def test_document_listing_paging_and_details(server: Server, corpus: dict[str, Any]) -> None:
    with server.client("admin") as c:
        all_alpha = c.get("/v1/documents", params={"collection": "alpha"}).json()
        assert all_alpha["total"] == 3
        page = c.get("/v1/documents", params={"collection": "alpha", "limit": 2, "offset": 1}).json()
        assert page["limit"] == 2 and page["offset"] == 1
        assert [d["id"] for d in page["documents"]] == [d["id"] for d in all_alpha["documents"]][1:3]
        assert c.get("/v1/documents", params={"collection": "nope"}).status_code == 404
        r = c.get("/v1/documents", params={"limit": 0})
        assert r.status_code == 422 and error_of(r)["field"] == "limit"
        d = c.get(f"/v1/documents/{corpus['ids']['widgets.md']}", params={"include_chunks": True}).json()
        assert d["chunk_count"] == len(d["chunks"]) >= 1
        assert "embedding" not in json.dumps(d) and "_added" not in d["metadata"]
        assert d["chunks"][0]["text"].startswith("# Widget catalogue")
        assert c.get("/v1/documents/999999").status_code == 404
        assert c.get("/v1/documents/abc").status_code == 422
        assert c.get("/v1/documents/99999999999999999999999").status_code == 422


def test_delete_document_removes_it_from_search(server: Server) -> None:
    with server.client("admin") as c:
        r = c.post("/v1/documents", files=[("files", ("ephemeral.md", b"# Ephemeral\n\nThe okapi migration "
                                                      b"happens every leap year in Brno.", "text/markdown"))],
                   data={"collection": "scratch"})
        doc_id = r.json()["results"][0]["document_id"]
        hits = c.post("/v1/search", json={"query": "okapi migration Brno", "collection": "scratch"}).json()["hits"]
        assert hits and hits[0]["document_id"] == doc_id
        r = c.delete(f"/v1/documents/{doc_id}")
        assert r.status_code == 200 and r.json()["deleted"] is True
        assert c.get(f"/v1/documents/{doc_id}").status_code == 404
        assert c.delete(f"/v1/documents/{doc_id}").status_code == 404
        for q in ("okapi migration Brno", "Ephemeral", "leap year"):
            hits = c.post("/v1/search", json={"query": q, "collection": "scratch", "top_k": 10}).json()["hits"]
            assert all(h["document_id"] != doc_id for h in hits)


# ---------------------------------------------------------------------------------------------------------------
# Collections
# ---------------------------------------------------------------------------------------------------------------


def test_collections_create_list_delete(server: Server) -> None:
    with server.client("admin") as c:
        r = c.post("/v1/collections", json={"name": "gamma", "index_type": "flat"})
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "gamma" and r.json()["documents"] == 0
        assert r.json()["embedding_dim"] == 384
        r = c.post("/v1/collections", json={"name": "gamma"})
        assert r.status_code == 409 and error_of(r)["field"] == "name"
        r = c.post("/v1/collections", json={"name": "bad/name"})
        assert r.status_code == 422 and error_of(r)["field"] == "name"
        r = c.post("/v1/collections", json={"name": "x", "index_type": "btree"})
        assert r.status_code == 422 and error_of(r)["field"] == "index_type"
        names = [x["name"] for x in c.get("/v1/collections").json()["collections"]]
        assert "gamma" in names and "alpha" in names
        r = c.post("/v1/search", json={"query": "anything", "collection": "gamma"})
        assert r.status_code == 200 and r.json()["hits"] == []
    with server.client("user") as c:  # not an admin: may create, may not delete
        assert c.post("/v1/collections", json={"name": "delta"}).status_code == 201
        assert c.delete("/v1/collections/delta").status_code == 403
    with server.client("admin") as c:
        assert c.delete("/v1/collections/gamma").json() == {"deleted": True, "id": None, "name": "gamma"}
        assert c.delete("/v1/collections/delta").status_code == 200
        assert c.delete("/v1/collections/gamma").status_code == 404
        names = [x["name"] for x in c.get("/v1/collections").json()["collections"]]
        assert "gamma" not in names
        r = c.post("/v1/search", json={"query": "anything", "collection": "gamma"})
        assert r.status_code == 404 and error_of(r)["code"] == "not_found"


# ---------------------------------------------------------------------------------------------------------------
# Search and input limits
# ---------------------------------------------------------------------------------------------------------------


def test_search_returns_scored_hits_with_metadata(server: Server, corpus: dict[str, Any]) -> None:
    with server.client("user") as c:
        r = c.post("/v1/search", json={"query": "How much does the blue widget cost?", "collection": "alpha",
                                       "top_k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["collection"] == "alpha" and 1 <= len(body["hits"]) <= 3
        top = body["hits"][0]
        assert top["source"] == "widgets.md" and "42 euros" in top["text"]
        assert isinstance(top["score"], float) and top["metadata"]["team"] == "sales"
        assert top["heading_path"][0] == "Widget catalogue"
        scores = [h["score"] for h in body["hits"]]
        assert scores == sorted(scores, reverse=True)
        r = c.post("/v1/search", json={"query": "quarterly revenue growth", "collection": "alpha"})
        pdf_hits = [h for h in r.json()["hits"] if h["source"] == "report.bin"]
        assert pdf_hits and pdf_hits[0]["pages"] == [1]


def test_input_limits_name_the_field(server: Server) -> None:
    cases = [
        ("/v1/search", {"query": "x" * 401}, "query"),
        ("/v1/search", {"query": "   "}, "query"),
        ("/v1/search", {"query": "x", "top_k": 11}, "top_k"),
        ("/v1/search", {"query": "x", "top_k": 0}, "top_k"),
        ("/v1/search", {"query": "x", "mode": "psychic"}, "mode"),
        ("/v1/search", {"query": "x", "surprise": 1}, "surprise"),
        ("/v1/search", {"query": 12}, "query"),
        ("/v1/search", {}, "query"),
        ("/v1/ask", {"question": "x" * 401}, "question"),
        ("/v1/ask", {"question": ["ok", "y" * 401]}, "question.1"),
        ("/v1/ask", {"question": ["q"] * 9}, "question"),
        ("/v1/ask", {"question": "x", "top_k": 11}, "top_k"),
        ("/v1/ask", {"question": "x", "max_new_tokens": 65}, "max_new_tokens"),
        ("/v1/ask", {"question": "x", "temperature": 3}, "temperature"),
        ("/v1/ask", {"question": "x", "filters": [1]}, "filters"),
        ("/v1/ask", {"question": ""}, "question"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "hi"}]}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 401}]}, "messages.0.content"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}], "max_tokens": 100}, "max_tokens"),
        ("/v1/collections", {"name": ""}, "name"),
    ]
    with server.client("admin") as c:
        for path, body, fld in cases:
            r = c.post(path, json=body)
            assert r.status_code == 422, (path, body, r.status_code, r.text)
            err = error_of(r)
            assert err["field"] == fld or any(f["field"] == fld for f in err["fields"]), (path, body, err)
        for raw in (b"{not json", b"", b"[]", b"null", b'"str"', "{\"query\": \"\udcff\"}".encode("utf-8", "surrogatepass")):
            r = c.post("/v1/search", content=raw, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
            error_of(r)
        r = c.get("/v1/nope")
        assert r.status_code == 404 and error_of(r)["code"] == "not_found"
        r = c.put("/v1/search", json={})
        assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"


# ---------------------------------------------------------------------------------------------------------------
# Ask: JSON, SSE, equivalence, chat, answer log, cancellation, queue
# ---------------------------------------------------------------------------------------------------------------

ASK = {"question": "How do I declare query parameters in FastAPI?", "top_k": 3, "max_new_tokens": 32,
       "temperature": 0}


def stream_ask(c: httpx.Client, body: dict[str, Any]) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    with c.stream("POST", "/v1/ask", json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for ev, data in sse_events(r.iter_lines()):
            out.append((ev, json.loads(data)))
    return out


def test_ask_returns_the_full_answer_object(server: Server, corpus: dict[str, Any]) -> None:
    with server.client("user") as c:
        r = c.post("/v1/ask", json=ASK)
        assert r.status_code == 200, r.text
        a = r.json()
        assert a["answer"] and isinstance(a["abstained"], bool)
        assert a["model"].startswith("llama_cpp:")
        assert a["collection"] == "default"
        assert 1 <= len(a["chunks"]) <= 3 and all("score" in h and h["source"] for h in a["chunks"])
        assert a["usage"]["completion_tokens"] <= 32 + 1 and a["usage"]["prompt_tokens"] > 0
        assert {"embed", "search", "generate"} <= set(a["timings"])
        sources = {h["source"] for h in a["chunks"]}
        for cit in a["citations"]:
            assert cit["status"] in ("verified", "unverified", "inferred")
            if cit["status"] != "unverified":
                assert cit["document_id"] and cit["chunk_ids"] and cit["source"] in sources
        # the answer log has it, for the same key's collections
        log = c.get(f"/v1/answers/{a['id']}").json()
        assert log["question"] == ASK["question"] and log["answer"] == a["answer"]
        assert log["key_name"] == "user" and log["model"] == a["model"]
        assert log["citations"] == a["citations"]
    with server.client("alpha") as c:  # another collection's answers are invisible
        assert c.get(f"/v1/answers/{a['id']}").status_code == 404
    with server.client("admin") as c:
        assert c.get("/v1/answers/999999").status_code == 404


def test_stream_and_json_give_the_same_answer(server: Server, corpus: dict[str, Any]) -> None:
    with server.client("user") as c:
        for body in (ASK, {**ASK, "question": ["What is a path parameter?", "Are query parameters optional?"]},
                     {**ASK, "question": "How much does the blue widget cost?", "collection": "alpha"}):
            plain = c.post("/v1/ask", json=body)
            assert plain.status_code == 200, plain.text
            plain_json = plain.json()
            events = stream_ask(c, body)
            kinds = [e for e, _ in events]
            assert kinds[0] == "sources" and kinds[-1] == "final"
            assert set(kinds[1:-1]) <= {"delta", "sentence"}
            sources = events[0][1]
            final = events[-1][1]
            assert [h["chunk_id"] for h in sources["chunks"]] == [h["chunk_id"] for h in plain_json["chunks"]]
            assert final["answer"] == plain_json["answer"]
            assert final["citations"] == plain_json["citations"]
            assert final["abstained"] == plain_json["abstained"]
            assert final["usage"] == plain_json["usage"]
            deltas = "".join(d["text"] for e, d in events if e == "delta")
            assert deltas.strip()  # the raw text as generated; `final` holds the parsed answer
            # Every sentence was announced once, checked, with the same label and evidence as in the answer.
            announced = [d for e, d in events if e == "sentence"]
            assert [d["sentence"] for d in announced] == final["sentences"] == plain_json["sentences"]
            assert final["grounding"] == plain_json["grounding"]
            if announced:
                assert "".join(d["text"] for d in announced) == final["answer"][: final["sentences"][-1]["end"]]
            assert final["id"] != plain_json["id"]  # both are logged


def test_chat_completions_openai_compatible(server: Server, corpus: dict[str, Any]) -> None:
    body = {"model": "anything", "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! Ask me about the docs."},
        {"role": "user", "content": [{"type": "text", "text": "How do I declare query parameters in FastAPI?"}]}],
        "max_tokens": 32, "temperature": 0, "top_k": 3, "top_p": 1, "n": 1}
    with server.client("user") as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        cc = r.json()
        assert cc["object"] == "chat.completion" and cc["id"].startswith("chatcmpl-")
        msg = cc["choices"][0]["message"]
        assert msg["role"] == "assistant" and msg["content"]
        assert cc["usage"]["total_tokens"] == cc["usage"]["prompt_tokens"] + cc["usage"]["completion_tokens"]
        ask = c.post("/v1/ask", json=ASK).json()
        assert cc["citations"] == ask["citations"] and cc["grounding"] == ask["grounding"]
        # Every sentence the documents do not support is marked in the visible content.
        marked = ask["answer"]
        for s in reversed(ask["sentences"]):
            if s["label"] in ("unsupported", "partial"):
                tag = " [unsupported]" if s["label"] == "unsupported" else " [partly supported]"
                marked = marked[: s["end"]] + tag + marked[s["end"]:]
        assert msg["content"].startswith(marked)
        if ask["grounding"] != "supported" and ask["evidence"]:
            assert "Passages that answer the question:" in msg["content"]
        if ask["citations"]:
            assert "\n\nSources:\n[1] " in msg["content"]
        # streaming: OpenAI chunks, then [DONE]
        chunks: list[dict[str, Any]] = []
        done = False
        with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
            assert s.status_code == 200
            for ev, data in sse_events(s.iter_lines()):
                assert ev is None
                if data == "[DONE]":
                    done = True
                    break
                chunks.append(json.loads(data))
        assert done
        assert all(ch["object"] == "chat.completion.chunk" and ch["id"] == chunks[0]["id"] for ch in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        assert chunks[-1]["citations"] == cc["citations"]
        assert chunks[-1]["ctxqa"]["answer"] == ask["answer"]
        assert chunks[-1]["grounding"] == cc["grounding"]
        # The joined deltas are exactly the non-streamed content: no raw model text, no leaked markers.
        text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
        assert text == msg["content"]


def test_client_disconnect_cancels_generation(server: Server, corpus: dict[str, Any]) -> None:
    body = {"question": "Explain everything about path parameters, query parameters, types and validation "
                        "in FastAPI, in detail.", "top_k": 3, "max_new_tokens": 64, "temperature": 0,
            "stream": True}
    with server.client("user") as c:
        before = metric(c.get("/metrics").text, "ctxqa_generation_cancelled_total")
        for attempt in range(3):
            finished = False
            with c.stream("POST", "/v1/ask", json=body) as r:
                assert r.status_code == 200
                for ev, _ in sse_events(r.iter_lines()):
                    if ev == "delta":
                        break  # first token: hang up now
                    if ev == "final":
                        finished = True
                        break
            # leaving the block closes the connection mid-stream
            # The job ends either cancelled or (if it finished first) done; wait until it has ended.
            while metric(text := c.get("/metrics").text, "ctxqa_generation_active") > 0:
                time.sleep(0.05)
            if metric(text, "ctxqa_generation_cancelled_total") > before:
                break
            assert not finished or attempt < 2
            body["question"] += " Please be thorough."
        else:
            pytest.fail("no cancellation was recorded after the client disconnected")
        # the worker is free again: the next request is served
        assert metric(c.get("/metrics").text, "ctxqa_generation_active") == 0
        r = c.post("/v1/ask", json=ASK)
        assert r.status_code == 200


def test_full_queue_answers_503_with_retry_after(server: Server, corpus: dict[str, Any]) -> None:
    """queue_size=1 and one llama.cpp worker: of many simultaneous asks, one runs, one waits, the rest get 503."""
    body = {**ASK, "max_new_tokens": 64, "question": "Describe path parameters with types in FastAPI in detail."}
    n = 6
    barrier = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        with server.client("user", timeout=300) as c:
            barrier.wait()
            return c.post("/v1/ask", json={**body, "question": body["question"] + f" ({i})"})

    with cf.ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(one, range(n)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2, codes
    assert codes.count(503) >= 1, codes
    assert set(codes) <= {200, 503}, codes
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert error_of(r)["code"] == "queue_full"
    with server.client("user") as c:
        assert metric(c.get("/metrics").text, "ctxqa_generation_rejected_total") >= 1


def test_ask_unknown_collection_and_generation_metrics(server: Server, corpus: dict[str, Any]) -> None:
    with server.client("admin") as c:
        r = c.post("/v1/ask", json={**ASK, "collection": "does-not-exist"})
        assert r.status_code == 404 and error_of(r)["field"] == "collection"
        with c.stream("POST", "/v1/ask", json={**ASK, "collection": "does-not-exist", "stream": True}) as s:
            assert s.status_code == 404  # errors before the stream starts keep their status
        text = c.get("/metrics").text
        assert metric(text, "ctxqa_tokens_generated_total") > 0
        assert metric(text, "ctxqa_answers_total") >= 1
        assert metric(text, "ctxqa_http_requests_total", route="/v1/ask", status="200") >= 1


# ---------------------------------------------------------------------------------------------------------------
# The generation queue on its own (no server)
# ---------------------------------------------------------------------------------------------------------------


def test_queue_fifo_capacity_cancel_and_concurrency() -> None:
    import asyncio

    from ctxqa.api.metrics import Metrics
    from ctxqa.api.queue import GenerationQueue, QueueFull

    async def scenario() -> None:
        m = Metrics()
        q = GenerationQueue(capacity=2, workers=1, metrics=m)
        gate = threading.Event()
        order: list[str] = []

        def job(name: str, wait: bool = False):  # type: ignore[no-untyped-def]
            def run(cancel: threading.Event):  # type: ignore[no-untyped-def]
                order.append(name)
                if wait:
                    gate.wait()
                for i in range(3):
                    if cancel.is_set():
                        return
                    yield f"{name}{i}"
            return run

        a = q.submit(job("a", wait=True))
        for _ in range(1000):  # until a is running (a fixed sleep is not enough on a busy machine)
            if q.active == 1:
                break
            await asyncio.sleep(0.01)
        assert q.active == 1
        b = q.submit(job("b"))
        c = q.submit(job("c"))
        with pytest.raises(QueueFull) as full:
            q.submit(job("d"))
        assert full.value.retry_after >= 1 and q.depth == 2
        q.cancel(b)  # waiting: dropped without running
        gate.set()
        assert [x async for x in a.events()] == ["a0", "a1", "a2"]
        assert [x async for x in b.events()] == []
        assert [x async for x in c.events()] == ["c0", "c1", "c2"]
        assert order == ["a", "c"]
        assert m.cancelled._value.get() == 1 and m.rejected._value.get() == 1

        def boom(cancel: threading.Event):  # type: ignore[no-untyped-def]
            yield "x"
            raise ValueError("bad question")

        e = q.submit(boom)
        got = []
        with pytest.raises(ValueError, match="bad question"):
            async for x in e.events():
                got.append(x)
        assert got == ["x"]
        q.close()

        # N workers run N jobs at once
        q2 = GenerationQueue(capacity=0, workers=3)
        started = threading.Barrier(3, timeout=10)
        release = threading.Event()  # holds the jobs: without it they may all finish before the 4th submit

        def together(cancel: threading.Event):  # type: ignore[no-untyped-def]
            started.wait()  # only passes when three jobs run concurrently
            release.wait()
            yield "ok"

        jobs = [q2.submit(together) for _ in range(3)]
        with pytest.raises(QueueFull):  # all workers busy and no waiting room
            q2.submit(together)
        release.set()
        for j in jobs:
            assert [x async for x in j.events()] == ["ok"]
        q2.close()

    asyncio.run(scenario())

    from ctxqa.rag.generate.base import Generator
    from ctxqa.rag.generate.llama_cpp import LlamaCppGenerator

    # Generators declare how many requests they run at once; llama.cpp serialises them.
    assert Generator.max_concurrency == 1 and LlamaCppGenerator.max_concurrency == 1


def test_sanitize_filename_and_sniffing() -> None:
    from ctxqa.api.uploads import sanitize_filename, sniff_kind

    assert sanitize_filename("../../etc/passwd", "f") == "passwd"
    assert sanitize_filename("C:\\dir\\x.pdf", "f") == "x.pdf"
    assert sanitize_filename("a\x00b\u202ec.md", "f") == "abc.md"
    assert sanitize_filename("..", "fallback") == "fallback"
    assert sanitize_filename(None, "fallback") == "fallback"
    assert len(sanitize_filename("x" * 400 + ".md", "f")) <= 255
    assert sanitize_filename("x" * 400 + ".md", "f").endswith(".md")
    assert sniff_kind(make_pdf(["hi"])[:8192], "notes.txt") == (".pdf", "application/pdf")
    assert sniff_kind(PAGE_HTML.encode(), "a.md") == (".html", "text/html")
    assert sniff_kind(b"# Title\n\ntext", "a.md") == (".md", "text/markdown")
    assert sniff_kind(b"# Title\n\ntext", "a.exe") == (".txt", "text/plain")
    assert sniff_kind("héllo wörld".encode("utf-16"), "a") == (".txt", "text/plain")
    assert sniff_kind(bytes(range(256)) * 4, "a.md") is None


def test_verify_against_given_passages_and_retrieval(server: Server, corpus: dict[str, Any]) -> None:
    passages = ["Daily snapshots are kept for 35 days. Monthly snapshots are kept for 13 months.",
                "The blue widget costs 42 euros and ships from Lyon within two days."]
    with server.client("user") as c:
        r = c.post("/v1/verify", json={"answer": "Daily snapshots are kept for 35 days. The widget costs 7 euros.",
                                       "passages": passages})
        assert r.status_code == 200, r.text
        v = r.json()
        assert v["grounding"] == "partial" and v["chunks"] == [] and v["collection"] is None
        first, second = v["sentences"]
        assert first["label"] == "supported" and first["evidence"]["passage"] == 0
        assert passages[0][first["evidence"]["char_start"]:first["evidence"]["char_end"]] == first["text"]
        assert second["label"] == "unsupported" and "7" in second["missing"]
        # Against what a question retrieves, in a collection the key may use: evidence points into documents.
        r = c.post("/v1/verify", json={"answer": "The blue widget costs 42 euros.", "question": "widget price",
                                       "collection": "alpha"})
        assert r.status_code == 200, r.text
        v = r.json()
        assert v["grounding"] == "supported" and v["collection"] == "alpha" and v["chunks"]
        ev = v["sentences"][0]["evidence"]
        assert ev["document_id"] and ev["chunk_id"] in {h["chunk_id"] for h in v["chunks"]}
    with server.client("alpha") as c:  # the same collection scoping as /v1/ask
        r = c.post("/v1/verify", json={"answer": "x y z.", "question": "widget", "collection": "default"})
        assert r.status_code == 403 and error_of(r)["field"] == "collection"


def test_verify_bad_input_names_the_field(server: Server) -> None:
    with server.client("user") as c:
        cases = [({"answer": "", "passages": ["p"]}, 422, "answer"),
                 ({"answer": "   ", "passages": ["p"]}, 422, "answer"),
                 ({"answer": "Some claim.", "passages": []}, 422, "passages"),
                 ({"answer": "Some claim.", "passages": ["  "]}, 422, "passages"),
                 ({"answer": "Some claim."}, 422, "passages"),
                 ({"answer": "Some claim.", "passages": ["p"], "question": "q"}, 422, "passages"),
                 ({"answer": "x" * 10_000_000, "passages": ["p"]}, 413, "answer"),
                 ({"answer": "Some claim.", "passages": ["p" * 30_000]}, 413, "passages.0"),
                 ({"answer": "Some claim.", "question": "", "collection": "alpha"}, 422, "question"),
                 ({"passages": ["p"]}, 422, "answer")]
        for body, status, field in cases:
            r = c.post("/v1/verify", json=body)
            assert r.status_code == status, (body if len(str(body)) < 200 else field, r.text[:300])
            assert error_of(r)["field"] == field, (field, r.text[:300])
        r = c.post("/v1/verify", content=b'{"answer": "caf\xe9", "passages": ["p"]}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "UTF-8" in error_of(r)["message"]


def test_grounding_reaches_the_log_and_the_metrics(server: Server, corpus: dict[str, Any]) -> None:
    with server.client("user") as c:
        a = c.post("/v1/ask", json={**ASK, "mode": "quote"}).json()
        assert a["mode"] == "quote" and a["grounding"] == "supported" and a["model"] == "quote"
        assert a["sentences"] and all(s["label"] == "supported" and s["quote"] for s in a["sentences"])
        log = c.get(f"/v1/answers/{a['id']}").json()
        assert log["grounding"] == "supported" and log["mode"] == "quote"
        assert [s["text"] for s in log["sentences"]] == [s["text"] for s in a["sentences"]]
        text = c.get("/metrics").text
        assert metric(text, "ctxqa_answer_grounding_total", grounding="supported") >= 1


def test_quote_backend_serves_without_a_model(tmp_path: Path) -> None:
    """CTXQA_LLM_BACKEND=quote: a machine without a usable model is ready, and every answer is a quote answer."""
    srv = start_server(tmp_path, {"CTXQA_LLM_BACKEND": "quote", "CTXQA_LLM_MODEL": str(tmp_path / "no-such.gguf")})
    try:
        srv.keys["admin"] = create_key(srv, "admin", admin=True)
        with srv.client("admin") as c:
            ready = c.get("/readyz").json()
            assert ready["ready"] and ready["checks"]["model"], ready
            r = c.post("/v1/documents", files=[("files", ("widgets.md", WIDGETS_MD.encode(), "text/markdown"))])
            assert r.status_code == 200, r.text
            a = c.post("/v1/ask", json={"question": "How much does the blue widget cost?"}).json()
            assert a["mode"] == "quote" and a["model"] == "quote" and a["grounding"] == "supported", a
            assert "42 euros" in a["answer"] and a["citations"][0]["source"] == "widgets.md"
        assert_no_server_errors(srv)
    finally:
        stop_server(srv)
