"""Shared fixtures: real SQLite/PostgreSQL databases, the real bundled embedder, the shared data folder."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from ctxqa.context import apply_process_defaults

apply_process_defaults()

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CTXQA_SHARED", REPO.parent / "shared")).resolve()
DATA = SHARED / "data"
PG_ADMIN = os.environ.get("CTXQA_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The run's own cache of exported embedding models (and the embedding backend's measurements), never the
# user's ~/.cache/ctxqa: tests and the servers and CLIs they start all read it through this variable.
CACHE_DIR = Path(tempfile.mkdtemp(prefix="ctxqa-test-cache-"))
os.environ["CTXQA_EMBEDDING_CACHE_DIR"] = str(CACHE_DIR)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for the servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test whose prerequisite is missing here; in CI (CI=true), where everything must be present, fail."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: every prerequisite must be present)")
    pytest.skip(reason)


def pytest_report_header(config: pytest.Config) -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return [f"shared data: {DATA} ({'present' if DATA.is_dir() else 'MISSING'})",
            f"cpu: {cpu} ({os.cpu_count()} cores, {platform.machine()}); embedding cache: {CACHE_DIR}"]


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(CACHE_DIR, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Apply the declared markers from what a test uses: `postgres` for PostgreSQL fixtures (or a postgres
    parameter), `slow` for the real language model (a served API or the answer pipeline)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        params = set(map(str, callspec.params.values())) if callspec is not None else set()
        if "pg_url" in names or "postgres" in params or "pg_session_url" in names:
            item.add_marker(pytest.mark.postgres)
        if names & {"server", "corpus", "fuzz_server", "answer_ctx", "llm"}:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        skip_or_fail(f"shared data folder not found at {DATA} (set CTXQA_SHARED)")
    return DATA


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    from ctxqa.rag.embed.embedder import Embedder

    return Embedder(cache_dir=CACHE_DIR)


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except Exception as e:  # noqa: BLE001
        return f"PostgreSQL not reachable at {PG_ADMIN}: {e}"


@contextlib.contextmanager
def new_pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database (created, then dropped), so migrations start from nothing; its URL."""
    why = _pg_available()
    if why:
        skip_or_fail(why)
    import psycopg

    name = f"ctxqa_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = dict(p.split("=", 1) for p in PG_ADMIN.split())
    url = f"postgresql+psycopg://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:" \
          f"{params.get('port', '5432')}/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database per test."""
    with new_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ctxqa.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture()
def make_ctx(tmp_path: Path, embedder, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Build a Context on a temp data dir sharing the session's embedder (loading it once per run). A test
    module that sets `DATABASES = ("sqlite", "postgres")` runs each of its tests on both databases (through the
    `database` fixture); otherwise SQLite."""
    from ctxqa.context import Context
    from ctxqa.rag.config import Settings

    made = []
    database_url = request.getfixturevalue("database") if "database" in request.fixturenames else None

    def factory(**overrides):  # type: ignore[no-untyped-def]
        overrides.setdefault("data_dir", tmp_path / "data")
        if database_url is not None:
            overrides.setdefault("database_url", database_url)
        ctx = Context(Settings(**overrides))
        ctx.__dict__["embedder"] = embedder
        made.append(ctx)
        return ctx

    yield factory
    for c in made:
        c.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`DATABASES = ("sqlite", "postgres")` in a test module: every test using `make_ctx` runs on each."""
    dbs = getattr(metafunc.module, "DATABASES", None)
    if dbs and "make_ctx" in metafunc.fixturenames and "database" not in metafunc.fixturenames:
        metafunc.fixturenames.append("database")
    if dbs and "database" in metafunc.fixturenames:
        metafunc.parametrize("database", list(dbs), indirect=True)


@pytest.fixture()
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """The database URL of a `DATABASES` test: None (SQLite in the data dir) or a fresh PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield None
        return
    with new_pg_database() as url:
        yield url
