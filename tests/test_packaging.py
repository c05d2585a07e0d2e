"""One import package, `ctxqa`, laid over the repository's top-level folders."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPPED = {"ctxqa": "ctxqa", "ctxqa.rag": "rag", "ctxqa.ingest": "ingest", "ctxqa.api": "api",
          "ctxqa.migrations": "migrations"}


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_listed() -> None:
    """The package list is explicit; a new subpackage missing from it would be left out of the wheel."""
    tool = _pyproject()["tool"]["setuptools"]
    assert tool["package-dir"] == MAPPED
    on_disk = set()
    for pkg, folder in MAPPED.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            on_disk.add(".".join([pkg, *rel.parts]))
    assert on_disk == set(tool["packages"])


def test_setuptools_floor_builds_the_license_field() -> None:
    """`license = "Apache-2.0"` (an SPDX string) needs setuptools >= 77."""
    data = _pyproject()
    assert data["project"]["license"] == "Apache-2.0"
    floor = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert floor and floor[0].replace(" ", "").startswith("setuptools>=")
    assert tuple(int(x) for x in floor[0].split(">=")[1].split(".")[:1]) >= (77,)


def test_wheel_ships_one_top_level_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, text=True)
    (wheel,) = tmp_path.glob("ctxqa-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert z.read(top).decode().split() == ["ctxqa"]
        tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        assert tops == {"ctxqa"}
        # The data files the code finds at run time travel with it.
        assert "ctxqa/migrations/script.py.mako" in names
        assert "ctxqa/migrations/versions/0001_initial_schema.py" in names
        assert "ctxqa/rag/data/embed_calibration.jsonl" in names
        assert "ctxqa/api/static/index.html" in names or not (REPO / "api" / "static").exists()


def test_a_folder_with_its_own_migrations_package_gets_the_real_schema(tmp_path: Path) -> None:
    """Run from a project that has its own `migrations/` (and `api/`, `rag/`) package on sys.path: ctxqa must
    still find its own Alembic scripts (by file path) and build the real schema."""
    app = tmp_path / "someapp"
    for name in ("migrations", "api", "rag", "ingest"):
        (app / name).mkdir(parents=True)
        (app / name / "__init__.py").write_text("raise ImportError('the application\\'s own package')\n")
    (app / "migrations" / "env.py").write_text("raise SystemExit('wrong migrations')\n")
    env = {**os.environ, "PYTHONPATH": str(app), "CTXQA_DATA_DIR": str(tmp_path / "data"),
           "CTXQA_CONFIG": str(tmp_path / "none.toml")}
    r = subprocess.run([sys.executable, "-m", "ctxqa", "db", "upgrade"], cwd=app, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    import sqlite3

    con = sqlite3.connect(tmp_path / "data" / "ctxqa.db")
    tables = {row[0] for row in con.execute("select name from sqlite_master where type='table'")}
    rev = con.execute("select version_num from alembic_version").fetchone()
    con.close()
    assert {"collections", "documents", "chunks", "api_keys", "answers"} <= tables
    assert rev is not None and rev[0]
