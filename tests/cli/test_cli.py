"""The `ctxqa` command line as a user runs it (subprocesses): bad input, exit codes, doctor after kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`ctxqa ARGS` in a subprocess, with its own data dir (the embedding cache is the test run's own:
    CTXQA_EMBEDDING_CACHE_DIR, set by tests/conftest.py)."""
    e = {**os.environ, "CTXQA_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "ctxqa", *args], cwd=REPO, env=e, text=True, capture_output=True)


run = run_cli


@pytest.fixture()
def bad_tree(tmp_path: Path, shared_data: Path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    (root / "good.md").write_text("# Good\n\nThe lighthouse keeper logs the tides every morning.\n")
    (root / "latin1.txt").write_bytes("Café crème brûlée, prix: 5 €\n".encode("cp1252"))
    (root / "utf16.txt").write_bytes("Ünïcode text in UTF-16 with a BOM.\n".encode("utf-16"))
    (root / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (root / "empty.md").write_text("")
    (root / "truncated.pdf").write_bytes((shared_data / "corpora/sec-10q/2023 Q1 INTC.pdf").read_bytes()[:20000])
    (root / "garbage.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(3000))
    shutil.copy(shared_data / "pdf/pypdf_encryption/encrypted-file.pdf", root / "locked.pdf")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    (root / ".hidden.md").write_text("# Hidden\n\nnever ingested\n")
    (root / "ignored").mkdir()
    (root / "ignored" / "x.md").write_text("# Ignored\n\nnever ingested\n")
    (root / ".gitignore").write_text("ignored/\n")
    return root


@pytest.mark.parametrize("database", ["sqlite", "postgres"], indirect=True)
def test_bad_input_is_reported_and_run_continues(bad_tree: Path, tmp_path: Path, database: str | None) -> None:
    data = tmp_path / "data"
    db_env = {"CTXQA_DATABASE_URL": database} if database else {}

    def run(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:  # on this test's database
        return run_cli(args, data_dir, **db_env)

    r = run(["ingest", str(bad_tree), "--json"], data)
    assert r.returncode == 1, r.stderr  # something failed → non-zero exit
    rep = json.loads(r.stdout)
    by = {Path(x["path"]).name: x for x in rep["results"]}
    assert by["good.md"]["status"] == "added"
    assert by["latin1.txt"]["status"] == "added" and by["utf16.txt"]["status"] == "added"
    assert by["binary.txt"]["status"] == "failed" and "binary" in by["binary.txt"]["reason"]
    assert by["empty.md"]["status"] == "skipped"
    assert by["truncated.pdf"]["status"] in ("failed", "added")  # salvaged pages are fine, a crash is not
    assert by["garbage.pdf"]["status"] == "failed" and "garbage.pdf" in by["garbage.pdf"]["reason"]
    assert by["locked.pdf"]["status"] == "failed" and "password" in by["locked.pdf"]["reason"]
    assert by["image.png"]["status"] == "skipped"
    assert ".hidden.md" not in by and "x.md" not in by
    # Nothing half-written: the database and the index agree.
    d = run(["doctor", "--json"], data)
    assert d.returncode == 0, d.stdout + d.stderr
    assert json.loads(d.stdout)["ok"] is True
    # The encrypted PDF goes in once the password is given; the search finds the re-encoded texts.
    r2 = run(["ingest", str(bad_tree), "--password", "test", "--json"], data)
    by2 = {Path(x["path"]).name: x for x in json.loads(r2.stdout)["results"]}
    assert by2["locked.pdf"]["status"] == "added"
    assert by2["good.md"]["status"] == "unchanged"
    s = run(["search", "crème brûlée price", "--json", "-k", "3"], data)
    assert any("brûlée" in h["text"] for h in json.loads(s.stdout)["hits"])


def test_config_shows_the_embedding_backend_and_why(tmp_path: Path) -> None:
    """`auto`: the measured choice (measured here now, or read from the cache) with its reason and figures, stdout
    left to the JSON; a forced backend: said to be forced, nothing measured."""
    r = run(["config", "--json"], tmp_path / "data")
    assert r.returncode == 0, r.stderr
    choice = json.loads(r.stdout)["embedding_backend_choice"]
    assert choice["choice"] in {v["backend"] for v in choice["variants"] if v["passed"]}
    assert choice["reason"].startswith(choice["choice"] + ": the fastest here") and choice["key"]
    table = run(["config"], tmp_path / "data", COLUMNS="400")  # no wrapping in the table
    assert "embedding backend running" in table.stdout and "measured" in table.stdout
    forced = run(["config", "--json"], tmp_path / "data", CTXQA_EMBEDDING_BACKEND="onnx")
    got = json.loads(forced.stdout)["embedding_backend_choice"]
    assert got["choice"] == "onnx" and "forced by CTXQA_EMBEDDING_BACKEND" in got["reason"] and not got["variants"]


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run(["ingest", str(empty)], data)
    assert r.returncode == 0 and "0 added" in r.stderr
    r = run(["ingest", str(tmp_path / "nope")], data)
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_kill_9_mid_ingest_then_doctor(shared_data: Path, tmp_path: Path) -> None:
    """A crash at an arbitrary point leaves a state doctor reports or repairs; no ingested document is
    unsearchable after the repair."""
    data = tmp_path / "data"
    src = shared_data / "corpora" / "fastapi-docs"
    env = {**os.environ, "CTXQA_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", "CTXQA_EMBEDDING_BATCH_SIZE": "16"}
    p = subprocess.Popen([sys.executable, "-m", "ctxqa", "ingest", str(src), "-q"], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = data / "ctxqa.db"
    import sqlite3

    # Kill once some documents are committed (the process is then somewhere inside the run).
    n_at_kill = 0
    while p.poll() is None:
        time.sleep(0.1)
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as c:
                    n = c.execute("select count(*) from documents where status='ingested'").fetchone()[0]
            except sqlite3.Error:
                continue
            if n >= 8:
                n_at_kill = n
                break
    assert p.poll() is None, "ingest finished before it could be killed; use a bigger corpus"
    p.send_signal(signal.SIGKILL)
    p.wait()
    d = run(["doctor", "--json"], data)
    report = json.loads(d.stdout)
    if d.returncode != 0:  # out of step is allowed after a crash, but it must be repairable
        assert report["ok"] is False
        rep = run(["doctor", "--repair", "--json"], data)
        assert rep.returncode == 0
    d2 = run(["doctor", "--json"], data)
    assert d2.returncode == 0 and json.loads(d2.stdout)["ok"] is True
    # Every document marked ingested has all its chunks in the index.
    import faiss
    import numpy as np

    with sqlite3.connect(db) as c:
        ids = {r[0] for r in c.execute("select c.id from chunks c join documents d on d.id=c.document_id "
                                       "where d.status='ingested'")}
        n_docs = c.execute("select count(*) from documents where status='ingested'").fetchone()[0]
    assert n_at_kill >= 8 and n_docs >= n_at_kill and ids  # nothing committed before the kill was lost
    idx = faiss.read_index(str(next((data / "index").glob("*.faiss"))))
    in_index = set(faiss.vector_to_array(idx.id_map).astype(np.int64).tolist())
    assert ids <= in_index
    # And a re-run finishes the job, skipping what was committed.
    r = run(["ingest", str(src), "--json"], data)
    summary = json.loads(r.stdout)["summary"]
    assert summary["unchanged"] >= n_at_kill and summary["failed"] == 0


@pytest.mark.parametrize("database", ["sqlite", "postgres"], indirect=True)
def test_json_output_is_the_api_views(tmp_path: Path, database: str | None) -> None:
    """`search --json` and `ask --json` print the API's own views (rag/views.py), key for key, on either
    database: one definition of a hit and an answer for the CLI and the HTTP API."""
    from ctxqa.rag.views import AnswerView, SearchView

    data = tmp_path / "data"
    env = {"CTXQA_DATABASE_URL": database} if database else {}
    assert run_cli(["ingest", str(REPO / "examples" / "docs"), "-q"], data, **env).returncode == 0
    s = run_cli(["search", "How long are backups kept?", "-k", "2", "--json"], data, **env)
    assert s.returncode == 0, s.stderr
    search = json.loads(s.stdout)
    assert set(search) == set(SearchView.model_fields)
    assert search["hits"] and search["hits"][0]["source"] == "backups.md"
    a = run_cli(["ask", "How long are backups kept?", "--json", "--max-new-tokens", "24"], data, **env)
    assert a.returncode == 0, a.stderr
    answer = json.loads(a.stdout)
    assert set(answer) == set(AnswerView.model_fields)
    AnswerView.model_validate(answer)
    assert answer["chunks"][0]["source"] == "backups.md" and answer["collection"] == "default"
    d = run_cli(["doctor", "--json"], data, **env)
    assert d.returncode == 0 and json.loads(d.stdout)["ok"] is True
