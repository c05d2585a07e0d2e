"""The layers point one way: ctxqa.rag <- ctxqa.ingest <- ctxqa.api <- the CLI and the process wiring.

Walks every module's imports with `ast` (module-level, inside functions, and under TYPE_CHECKING alike: a type
import is a dependency too) and fails on any import of a layer above the importing module's own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Folder in the repository -> import package, and the layer rank of each package (higher may import lower).
FOLDERS = {"rag": "ctxqa.rag", "ingest": "ctxqa.ingest", "api": "ctxqa.api", "migrations": "ctxqa.migrations",
           "ctxqa": "ctxqa"}
RANK = {"ctxqa.rag": 0, "ctxqa.migrations": 1, "ctxqa.ingest": 1, "ctxqa.api": 2, "ctxqa": 3}
BARE = ("rag", "ingest", "api", "migrations")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for folder, pkg in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([pkg, *parts]), path))
    return out


def _layer(module: str) -> str:
    for pkg in ("ctxqa.rag", "ctxqa.ingest", "ctxqa.api", "ctxqa.migrations"):
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return "ctxqa"


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


MODULES = _modules()


def test_every_product_module_was_found() -> None:
    names = {m for m, _ in MODULES}
    assert {"ctxqa.rag.config", "ctxqa.ingest.pipeline", "ctxqa.api.app", "ctxqa.cli.main", "ctxqa.context"} <= names


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_no_module_imports_a_layer_above_its_own(module: str, path: Path) -> None:
    own = RANK[_layer(module)]
    bad = []
    for line, name in _imports(path, module):
        top = name.split(".")[0]
        if top in BARE:
            bad.append(f"{path.relative_to(REPO)}:{line}: bare `{name}` (import ctxqa.{name})")
        elif top == "ctxqa" and RANK[_layer(name)] > own:
            bad.append(f"{path.relative_to(REPO)}:{line}: {module} ({_layer(module)}) imports {name} ({_layer(name)})")
    assert not bad, "\n".join(bad)


def test_the_walker_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a core module that imports the API is reported."""
    f = tmp_path / "bad.py"
    f.write_text("def f():\n    from ctxqa.api.app import create_app\n    from ..api import deps\n")
    names = [n for _, n in _imports(f, "ctxqa.rag.bad")]
    assert names == ["ctxqa.api.app", "ctxqa.api"]
    assert RANK[_layer(names[0])] > RANK[_layer("ctxqa.rag.bad")]
