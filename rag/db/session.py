"""Engine and session factory; applies Alembic migrations on first use of a database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

# Found by file path, never by import name: an application with its own `migrations/` package on sys.path must
# not hand Alembic its scripts (it would build an empty database without a word). This file is
# ctxqa/rag/db/session.py in a wheel and rag/db/session.py in the repository; either way the migrations are
# two levels up.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

# PostgreSQL advisory lock key held while migrating ("ctxq" in ASCII): replicas that start together on a fresh
# database migrate one after the other (the second finds the schema at head) instead of racing to CREATE TABLE.
MIGRATION_LOCK_KEY = 0x63747871


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # WAL: readers (the API) never block on an ingest's writer; foreign keys make ON DELETE CASCADE real.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Database:
    """One engine per database URL; `session()` is a transaction scope that commits or rolls back."""

    def __init__(self, url: str, *, auto_migrate: bool = True, echo: bool = False) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, echo=echo, pool_pre_ping=True)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        self._migrated = False
        self._lock = threading.Lock()
        if auto_migrate:
            self.upgrade(only_if_needed=True)

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()

    def upgrade(self, *, only_if_needed: bool = False) -> tuple[str | None, str | None]:
        """Apply pending migrations; returns (before, after) revisions."""
        with self._lock:
            before = self.current_revision()
            head = self.head_revision()
            if not (only_if_needed and before == head):
                with self.engine.begin() as conn:
                    if conn.dialect.name == "postgresql":  # until this transaction ends
                        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                        before = MigrationContext.configure(conn).get_current_revision()  # another may have run
                    if not (only_if_needed and before == head):
                        cfg = alembic_config(self.url)
                        cfg.attributes["connection"] = conn
                        command.upgrade(cfg, "head")
            self._migrated = True
            return before, self.current_revision()

    @contextmanager
    def session(self) -> Iterator[Session]:
        s = self._factory()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def dispose(self) -> None:
        self.engine.dispose()
