"""Shared fixtures: real SQLite/PostgreSQL databases, the real bundled embedder, the shared data folder."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CTXQA_SHARED", REPO.parent / "shared")).resolve()
DATA = SHARED / "data"
PG_ADMIN = os.environ.get("CTXQA_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"shared data: {DATA} ({'present' if DATA.is_dir() else 'MISSING'})"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data folder not found at {DATA} (set CTXQA_SHARED)")
    return DATA


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    from ctxqa.rag.embed.embedder import Embedder

    return Embedder()


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except Exception as e:  # noqa: BLE001
        return f"PostgreSQL not reachable at {PG_ADMIN}: {e}"


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database per test (created and dropped), so migrations start from nothing."""
    why = _pg_available()
    if why:
        pytest.skip(why)
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


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ctxqa.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture()
def make_ctx(tmp_path: Path, embedder):  # type: ignore[no-untyped-def]
    """Build a Context on a temp data dir sharing the session's embedder (loading it once per run)."""
    from ctxqa.context import Context
    from ctxqa.rag.config import Settings

    made = []

    def factory(**overrides):  # type: ignore[no-untyped-def]
        overrides.setdefault("data_dir", tmp_path / "data")
        ctx = Context(Settings(**overrides))
        ctx.__dict__["embedder"] = embedder
        made.append(ctx)
        return ctx

    yield factory
    for c in made:
        c.close()
