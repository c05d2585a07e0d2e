"""The web page's assets as shipped: everything they reference is served by ctxqa itself and every module they
import exists (tests/test_packaging.py checks that the wheel carries them). The browser test (test_web_page.py)
checks the same at run time by watching every request the page makes."""

from __future__ import annotations

import re
from pathlib import Path

from ctxqa.api.routes.web import STATIC_DIR

ASSETS = sorted(p for p in STATIC_DIR.iterdir() if p.is_file())
EXTERNAL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import\s+url\(\s*['"]?(?:https?:)?//""", re.I)


def test_there_are_assets_and_an_index() -> None:
    names = {p.name for p in ASSETS}
    assert {"index.html", "app.js", "style.css"} <= names


def test_no_asset_references_another_host() -> None:
    for p in ASSETS:
        hits = EXTERNAL.findall(p.read_text())
        assert not hits, f"{p.name} references another host: {hits}"


def test_every_reference_and_import_resolves_to_a_shipped_file() -> None:
    names = {p.name for p in ASSETS}
    html = (STATIC_DIR / "index.html").read_text()
    for ref in re.findall(r"""(?:src|href)="(/static/[^"]+)\"""", html):
        assert Path(ref).name in names, ref
    for p in ASSETS:
        if p.suffix == ".js":
            for mod in re.findall(r"""from\s+["'](\./[^"']+)["']""", p.read_text()):
                assert Path(mod).name in names, f"{p.name} imports {mod}, which is not shipped"


def test_no_inline_script_or_style_the_policy_would_block() -> None:
    """The Content-Security-Policy allows scripts and styles from files only: none inline in the page."""
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert "<style" not in html and " style=" not in html and not re.search(r"\son[a-z]+=", html)
