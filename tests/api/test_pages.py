"""The evidence viewer's endpoints against a real `ctxqa serve` (api/routes/pages.py): page images, span boxes,
span text, and the web page that shows them.

One server per database (SQLite, PostgreSQL) with the quote backend (no model to load), a real 10-Q filing and a
Markdown file uploaded through /v1/documents. Spans are the chunks' own char_start/char_end, as a citation gives
them.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.api.test_api import (
    REPO,
    WIDGETS_MD,
    Server,
    assert_no_server_errors,
    create_key,
    error_of,
    make_pdf,
    start_server,
    stop_server,
)
from tests.conftest import new_pg_database

FILING = "2023 Q1 INTC.pdf"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Viewer:
    server: Server
    pdf_id: int
    md_id: int
    pdf: dict[str, Any]  # GET /v1/documents/{id}?include_chunks=true
    md: dict[str, Any]

    def client(self, key: str | None = "admin") -> httpx.Client:
        return self.server.client(key)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def viewer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           shared_data: Path) -> Iterator[Viewer]:
    root = tmp_path_factory.mktemp(f"pages-{request.param}")
    with contextlib.ExitStack() as stack:
        env = {"CTXQA_LLM_BACKEND": "quote", "CTXQA_PAGE_CACHE_MB": "64"}
        if request.param == "postgres":
            env["CTXQA_DATABASE_URL"] = stack.enter_context(new_pg_database())
        srv = start_server(root, env)
        stack.callback(stop_server, srv)
        srv.keys["admin"] = create_key(srv, "admin", admin=True)
        srv.keys["reader"] = create_key(srv, "filings-reader", collections=["filings"])
        srv.keys["other"] = create_key(srv, "elsewhere-only", collections=["elsewhere"])
        pdf_bytes = (shared_data / "corpora" / "sec-10q" / FILING).read_bytes()
        with srv.client("admin") as c:
            r = c.post("/v1/documents", data={"collection": "filings"}, files=[
                ("files", (FILING, pdf_bytes, "application/pdf")),
                ("files", ("widgets.md", WIDGETS_MD.encode(), "text/markdown"))])
            assert r.status_code == 200, r.text
            ids = {x["filename"]: x["document_id"] for x in r.json()["results"]}
            assert all(x["status"] == "added" for x in r.json()["results"]), r.text
            pdf = c.get(f"/v1/documents/{ids[FILING]}", params={"include_chunks": True}).json()
            md = c.get(f"/v1/documents/{ids['widgets.md']}", params={"include_chunks": True}).json()
        yield Viewer(srv, ids[FILING], ids["widgets.md"], pdf, md)
        assert_no_server_errors(srv)


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


def spread(chunks: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [chunks[i * (len(chunks) - 1) // (n - 1)] for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Boxes and text of chunks
# ---------------------------------------------------------------------------------------------------------------


def test_boxes_of_a_chunk_lie_on_its_pages_and_hold_its_text(viewer: Viewer) -> None:
    chunks = viewer.pdf["chunks"]
    assert viewer.pdf["pages"] == 43 and len(chunks) >= 20
    multi = [c for c in chunks if len(c["pages"]) > 1][:2]
    with viewer.client("reader") as c:
        for ch in spread(chunks, 6) + multi:
            parts = []
            for page in ch["pages"]:
                r = c.get(f"/v1/documents/{viewer.pdf_id}/pages/{page}/boxes",
                          params={"start": ch["char_start"], "end": ch["char_end"]})
                assert r.status_code == 200, r.text
                assert r.headers["etag"] and r.headers["cache-control"] == "private, no-cache"
                b = r.json()
                assert b["document_id"] == viewer.pdf_id and b["page"] == page and b["page_count"] == 43
                assert b["method"] == "offsets", (ch["id"], page, b)
                assert b["span_pages"] == ch["pages"]
                assert (b["start"], b["end"]) == (ch["char_start"], ch["char_end"])
                assert (b["width"], b["height"]) == (612.0, 792.0)
                assert b["image"] == f"/v1/documents/{viewer.pdf_id}/pages/{page}.png"
                assert b["boxes"] and all(0 <= x["x0"] < x["x1"] <= 1 and 0 <= x["y0"] < x["y1"] <= 1
                                          for x in b["boxes"])
                assert b["text"].strip() and squash(b["text"]) in squash(ch["text"])
                parts.append(b["text"])
            assert squash("".join(parts)) == squash(ch["text"]), ch["id"]  # the pages' parts make the chunk
            # The same span as text: the chunk's text, its pages, the chunk itself.
            t = c.get(f"/v1/documents/{viewer.pdf_id}/text",
                      params={"start": ch["char_start"], "end": ch["char_end"], "context": 50}).json()
            assert t["text"] == ch["text"] and t["pages"] == ch["pages"] and t["chunk_id"] == ch["id"]
            assert t["media_type"] == "application/pdf" and t["source"] == FILING


def test_boxes_of_a_span_on_another_page_are_empty_and_revalidate(viewer: Viewer) -> None:
    ch = next(c for c in viewer.pdf["chunks"] if c["pages"] == [5])
    url = f"/v1/documents/{viewer.pdf_id}/pages/6/boxes"
    params = {"start": ch["char_start"], "end": ch["char_end"]}
    with viewer.client() as c:
        r = c.get(url, params=params)
        b = r.json()
        assert r.status_code == 200 and b["method"] == "none" and b["boxes"] == [] and b["text"] == ""
        assert b["span_pages"] == [5]
        r2 = c.get(url, params=params, headers={"If-None-Match": r.headers["etag"]})
        assert r2.status_code == 304 and r2.content == b"" and r2.headers["etag"] == r.headers["etag"]
        other = c.get(url, params={**params, "end": ch["char_end"] - 1})
        assert other.headers["etag"] != r.headers["etag"]


# ---------------------------------------------------------------------------------------------------------------
# Page images
# ---------------------------------------------------------------------------------------------------------------


def test_page_image_etag_304_and_the_render_cache(viewer: Viewer) -> None:
    url = f"/v1/documents/{viewer.pdf_id}/pages/7.png"
    with viewer.client("reader") as c:
        r = c.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.headers["cache-control"] == "private, no-cache"
        etag = r.headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
        assert float(r.headers["x-render-seconds"]) > 0
        assert png_size(r.content) == (918, 1188)  # the default scale, 1.5 pixels per point of 612x792
        again = c.get(url)
        assert again.status_code == 200 and again.headers["x-render-seconds"] == "0"  # from the render cache
        assert again.content == r.content and again.headers["etag"] == etag
        nm = c.get(url, headers={"If-None-Match": etag})
        assert nm.status_code == 304 and nm.content == b"" and nm.headers["etag"] == etag
        assert "x-render-seconds" not in nm.headers
        nm = c.get(url, headers={"If-None-Match": f'"nope", W/{etag}'})
        assert nm.status_code == 304
        assert c.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200

        small = c.get(url, params={"scale": 0.5})
        assert small.status_code == 200 and png_size(small.content) == (306, 396)
        assert small.headers["etag"] != etag


def test_page_image_with_a_span_is_painted(viewer: Viewer) -> None:
    ch = next(c for c in viewer.pdf["chunks"] if c["pages"] == [9])
    url = f"/v1/documents/{viewer.pdf_id}/pages/9.png"
    with viewer.client() as c:
        plain = c.get(url)
        lit = c.get(url, params={"start": ch["char_start"], "end": ch["char_end"]})
        assert lit.status_code == 200 and lit.content != plain.content
        assert lit.headers["etag"] != plain.headers["etag"]
        a = Image.open(io.BytesIO(plain.content)).convert("RGB")
        b = Image.open(io.BytesIO(lit.content)).convert("RGB")
        assert a.size == b.size
        boxes = c.get(f"/v1/documents/{viewer.pdf_id}/pages/9/boxes",
                      params={"start": ch["char_start"], "end": ch["char_end"]}).json()["boxes"]
        w, h = a.size
        for bx in boxes:  # the middle of every box changed colour, a point outside all boxes did not
            x, y = int((bx["x0"] + bx["x1"]) / 2 * w), int((bx["y0"] + bx["y1"]) / 2 * h)
            assert a.getpixel((x, y)) != b.getpixel((x, y))
        assert a.getpixel((2, 2)) == b.getpixel((2, 2))
        empty = c.get(url, params={"start": 5, "end": 5})  # an empty span: nothing to paint
        assert empty.status_code == 200 and empty.content == plain.content


# ---------------------------------------------------------------------------------------------------------------
# Span text (any document)
# ---------------------------------------------------------------------------------------------------------------


def test_span_text_of_a_markdown_document(viewer: Viewer) -> None:
    (ch,) = [c for c in viewer.md["chunks"] if "blue widget" in c["text"]]
    phrase = "The blue widget costs 42 euros"
    i = ch["text"].index(phrase)
    start, end = ch["char_start"] + i, ch["char_start"] + i + len(phrase)
    url = f"/v1/documents/{viewer.md_id}/text"
    with viewer.client("reader") as c:
        r = c.get(url, params={"start": start, "end": end, "context": 12})
        assert r.status_code == 200, r.text
        t = r.json()
        assert t["text"] == phrase and t["chunk_id"] == ch["id"]
        assert t["before"] == ch["text"][max(0, i - 12):i]
        assert t["after"] == ch["text"][i + len(phrase):i + len(phrase) + 12]
        # The headings above the span itself (the chunk begins under the title only, before "## Prices").
        assert t["heading_path"] == ["Widget catalogue", "Prices"] and ch["heading_path"] == ["Widget catalogue"]
        assert t["pages"] == [] and t["media_type"] == "text/markdown" and t["source"] == "widgets.md"
        assert c.get(url, params={"start": start, "end": end, "context": 12},
                     headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        whole = c.get(url, params={"start": ch["char_start"], "end": ch["char_end"], "context": 0}).json()
        assert whole["text"] == ch["text"] and whole["before"] == "" and whole["after"] == ""
        ret = next(c for c in viewer.md["chunks"] if "returned within" in c["text"])
        k = ret["char_start"] + ret["text"].index("returned within")
        t = c.get(url, params={"start": k, "end": k + 15}).json()
        assert t["text"] == "returned within" and t["heading_path"] == ["Widget catalogue", "Returns"]
        past = c.get(url, params={"start": ch["char_end"] + 100, "end": ch["char_end"] + 120})
        assert past.status_code == 422 and error_of(past)["field"] == "start"


# ---------------------------------------------------------------------------------------------------------------
# Authorisation and errors
# ---------------------------------------------------------------------------------------------------------------


def test_keys_and_collections(viewer: Viewer) -> None:
    urls = [f"/v1/documents/{viewer.pdf_id}/pages/1.png", f"/v1/documents/{viewer.pdf_id}/pages/1/boxes?start=0&end=9",
            f"/v1/documents/{viewer.pdf_id}/text?start=0&end=9"]
    with viewer.client(None) as anon, viewer.client("other") as other, viewer.client("reader") as reader:
        for url in urls:
            r = anon.get(url)
            assert r.status_code == 401, (url, r.text)
            r = other.get(url)
            assert r.status_code == 403 and error_of(r)["code"] == "forbidden", (url, r.text)
            assert reader.get(url).status_code == 200, url
        # A 403 is not a way to learn which documents exist: an unknown id is 404 for every key.
        assert other.get("/v1/documents/999999/pages/1.png").status_code == 404


def test_errors_name_their_field(viewer: Viewer) -> None:
    pdf, md = viewer.pdf_id, viewer.md_id
    cases = [
        (f"/v1/documents/{pdf}/pages/44.png", 404, "page"),
        (f"/v1/documents/{pdf}/pages/44/boxes?start=0&end=5", 404, "page"),
        (f"/v1/documents/{pdf}/pages/0.png", 422, "page"),
        (f"/v1/documents/{pdf}/pages/1.png?start=9&end=3", 422, "end"),
        (f"/v1/documents/{pdf}/pages/1.png?start=9", 422, "end"),
        (f"/v1/documents/{pdf}/pages/1.png?end=9", 422, "start"),
        (f"/v1/documents/{pdf}/pages/1.png?scale=10", 422, "scale"),
        (f"/v1/documents/{pdf}/pages/1/boxes?start=9&end=3", 422, "end"),
        (f"/v1/documents/{pdf}/pages/1/boxes?start=0&end=30000", 422, "end"),
        (f"/v1/documents/{pdf}/pages/1/boxes?start=-1&end=3", 422, "start"),
        (f"/v1/documents/{pdf}/pages/1/boxes", 422, "start"),
        (f"/v1/documents/{md}/text?start=9&end=3", 422, "end"),
    ]
    with viewer.client() as c:
        for url, status, field in cases:
            r = c.get(url)
            assert r.status_code == status, (url, r.text)
            assert error_of(r).get("field") == field, (url, r.text)
        for url in (f"/v1/documents/{md}/pages/1.png", f"/v1/documents/{md}/pages/1/boxes?start=0&end=5"):
            r = c.get(url)
            assert r.status_code == 409 and error_of(r)["code"] == "not_a_pdf", r.text
            assert f"/v1/documents/{md}/text" in error_of(r)["message"]
        for url in ("/v1/documents/999999/pages/1.png", "/v1/documents/999999/text?start=0&end=1"):
            r = c.get(url)
            assert r.status_code == 404 and error_of(r)["code"] == "not_found"


# ---------------------------------------------------------------------------------------------------------------
# Kept copies: deletion, documents ingested from the command line
# ---------------------------------------------------------------------------------------------------------------


def kept_copy(server: Server, sha256: str) -> Path:
    return server.data_dir / "originals" / sha256[:2] / f"{sha256}.pdf"


def test_deleted_document_has_no_pages_and_its_copy_waits_out_the_grace(viewer: Viewer) -> None:
    with viewer.client() as c:
        r = c.post("/v1/documents", data={"collection": "filings"}, files=[
            ("files", ("short-lived.pdf", make_pdf(["Short lived report", "Deleted soon."]), "application/pdf"))])
        doc_id = r.json()["results"][0]["document_id"]
        sha = c.get(f"/v1/documents/{doc_id}").json()["sha256"]
        copy = kept_copy(viewer.server, sha)
        assert copy.is_file()
        assert c.get(f"/v1/documents/{doc_id}/pages/1.png").status_code == 200
        assert c.delete(f"/v1/documents/{doc_id}").status_code == 200
        for url in (f"/v1/documents/{doc_id}/pages/1.png", f"/v1/documents/{doc_id}/pages/1/boxes?start=0&end=5"):
            r = c.get(url)
            assert r.status_code == 404 and error_of(r)["code"] == "not_found", r.text
        # Pruned only once older than rag.originals.GRACE_S: another process may be ingesting the same bytes.
        assert copy.is_file()


def test_cli_ingested_pdf_renders_from_its_path_when_the_copy_is_gone(viewer: Viewer, tmp_path: Path) -> None:
    folder = tmp_path / "cli-docs"
    folder.mkdir()
    src = folder / "from-cli.pdf"
    src.write_bytes(make_pdf(["Ingested from the command line", "Net income was 7 million."]))
    env = {**viewer.server.env}
    subprocess.run([sys.executable, "-m", "ctxqa", "ingest", str(folder), "-c", "cli", "-q"], env=env, check=True,
                   cwd=tmp_path, timeout=300)
    with viewer.client() as c:
        (doc,) = c.get("/v1/documents", params={"collection": "cli"}).json()["documents"]
        copy = kept_copy(viewer.server, doc["sha256"])
        assert copy.is_file() and not os.path.samefile(copy, src)  # a user's file is copied, not linked
        url = f"/v1/documents/{doc['id']}/pages/1.png"
        first = c.get(url)
        assert first.status_code == 200
        copy.unlink()
        r = c.get(url, params={"scale": 1.0})  # not in the render cache: read from the file it was ingested from
        assert r.status_code == 200 and png_size(r.content) == (612, 792)
        b = c.get(f"/v1/documents/{doc['id']}/pages/1/boxes", params={"start": 0, "end": 20}).json()
        assert b["method"] == "offsets" and b["text"] == "Ingested from the co"
        src.write_bytes(make_pdf(["The file changed since it was ingested"]))
        r = c.get(url, params={"scale": 2.0})
        assert r.status_code == 404 and error_of(r)["code"] == "original_missing", r.text


# ---------------------------------------------------------------------------------------------------------------
# The web page
# ---------------------------------------------------------------------------------------------------------------


def test_web_page_and_its_static_files(viewer: Viewer) -> None:
    with httpx.Client(base_url=viewer.server.url, timeout=30) as c:  # no key: the page asks for one
        r = c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "<html" in r.text.lower()
        static = REPO / "api" / "static"
        name = "app.js" if (static / "app.js").is_file() else "style.css"
        r = c.get(f"/static/{name}")
        assert r.status_code == 200 and r.content == (static / name).read_bytes()
        assert ("javascript" if name.endswith(".js") else "text/css") in r.headers["content-type"]
        assert c.get("/static/no-such-file.js").status_code == 404
