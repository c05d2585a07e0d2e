"""Where a span of a PDF's text lies on its page, and page images (ingest/loaders/pdf_pages.py).

The boxes of spans on the real 10-Q filings are checked against PDFium's own text search: the characters it finds
for the span's first and last words must lie inside the boxes. Rotated and cropped pages are hand-built PDFs whose
rendered ink must fall inside the boxes of their whole text. `locate` and `merge_boxes` are pure.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from ctxqa.ingest.loaders import pdf_pages
from ctxqa.ingest.loaders.pdf import load, normalize_page
from ctxqa.ingest.loaders.pdf_pages import Box, PageOutOfRange, locate, merge_boxes, render_page, span_boxes
from ctxqa.rag.types import LoadedDocument
from tests.pdfs import make_pdf, search_char_boxes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOL = 1e-3  # fractions of the page: rounding of the char boxes


@pytest.fixture(scope="module")
def filings(shared_data: Path) -> list[tuple[Path, LoadedDocument]]:
    files = sorted((shared_data / "corpora" / "sec-10q").glob("*.pdf"))
    assert len(files) >= 2, files
    return [(f, load(f)) for f in files]


# ---------------------------------------------------------------------------------------------------------------
# Independent check: PDFium's text search and its char boxes, converted to fractions here
# ---------------------------------------------------------------------------------------------------------------


def _inside(char: tuple[float, float, float, float], boxes: list[Box]) -> bool:
    x0, y0, x1, y1 = char
    return any(b.x0 - TOL <= x0 and x1 <= b.x1 + TOL and b.y0 - TOL <= y0 and y1 <= b.y1 + TOL for b in boxes)


def _unique_words(path: Path, page_no: int, line: str, *, last: bool) -> str | None:
    """Three words at the start (or end) of `line` that PDFium finds exactly once on the page."""
    words = line.split()
    if len(words) < 3:
        return None
    phrase = " ".join(words[-3:] if last else words[:3])
    return phrase if len(search_char_boxes(path, page_no, phrase)) == 1 else None


def _spans(doc: LoadedDocument, page_no: int) -> Iterator[tuple[int, int]]:
    """Spans of a page (offsets within its text) of three lines or so, starting and ending at word boundaries,
    from several places on the page."""
    p = doc.pages[page_no - 1]
    text = doc.text[p.start:p.end]
    for frac in (0.15, 0.45, 0.75):
        m = re.compile(r"\n\S").search(text, int(len(text) * frac))
        if m is None:
            continue
        start = m.start() + 1
        end = start
        for _ in range(3):  # three lines
            nl = text.find("\n", end + 1)
            end = nl if nl != -1 else len(text)
        yield start, end


def test_span_boxes_cover_the_characters_pdfium_finds(filings: list[tuple[Path, LoadedDocument]]) -> None:
    checked = 0
    for path, doc in filings:
        n = doc.page_count or 0
        for page_no in sorted({2, n // 3, n // 2, (2 * n) // 3, n - 1}):
            p = doc.pages[page_no - 1]
            page_text = doc.text[p.start:p.end]
            assert page_text == normalize_page(page_text)
            for start, end in _spans(doc, page_no):
                pb = span_boxes(path, page_no, start, end)
                assert pb.method == "offsets", (path.name, page_no, start, end)
                assert pb.text == page_text[start:end]
                assert pb.page == page_no and (pb.width, pb.height) == (612.0, 792.0)
                lines = [ln for ln in pb.text.split("\n") if ln.strip()]
                # One box per line run: table rows split at their columns, but never inside a word.
                assert len(lines) <= len(pb.boxes) <= len(pb.text.split()), pb.boxes
                for b in pb.boxes:
                    assert 0 <= b.x0 < b.x1 <= 1 and 0 <= b.y0 < b.y1 <= 1
                    assert b.y1 - b.y0 < 0.05, b  # a line run, not a block of the page
                # The boxes given to the same span with the page text passed as ingested are the same.
                assert span_boxes(path, page_no, start, end, page_text=page_text).boxes == pb.boxes
                for line, last in ((lines[0], False), (lines[-1], True)):
                    words = _unique_words(path, page_no, line, last=last)
                    if words is None:
                        continue
                    (chars,) = search_char_boxes(path, page_no, words)
                    assert chars and all(_inside(c, pb.boxes) for c in chars), (path.name, page_no, words, pb)
                    checked += 1
    assert checked >= 12, checked  # enough spans had words PDFium finds exactly once


def test_a_line_of_prose_is_one_box(filings: list[tuple[Path, LoadedDocument]]) -> None:
    """Commas, periods and x-height words sit lower or shorter than capitals: the line is still one box, and the
    boxes of consecutive lines have the same height and do not overlap."""
    path, doc = next((p, d) for p, d in filings if "AMZN" in p.name)
    p = doc.pages[9]
    text = doc.text[p.start:p.end]
    start = text.index("As of December 31, 2021 and September 30, 2022, our cash")
    end = text.index("\n", text.index("\n", start) + 1)  # two full lines of prose
    pb = span_boxes(path, 10, start, end)
    assert pb.method == "offsets" and len(pb.boxes) == 2, pb.boxes
    first, second = pb.boxes
    assert abs((first.y1 - first.y0) - (second.y1 - second.y0)) < TOL
    assert first.y1 <= second.y0 + TOL and first.x1 > 0.9 and second.x1 > 0.5


def test_span_boxes_of_a_span_not_on_the_page_or_blank(filings: list[tuple[Path, LoadedDocument]]) -> None:
    path, doc = filings[0]
    p = doc.pages[1]
    length = p.end - p.start
    assert span_boxes(path, 2, 10, 10).method == "none"
    assert span_boxes(path, 2, length + 5, length + 50).boxes == []  # beyond the page's text: clipped away
    whole = span_boxes(path, 2, 0, length)
    assert whole.method == "offsets" and whole.text == doc.text[p.start:p.end] and len(whole.boxes) > 10
    with pytest.raises(PageOutOfRange):
        span_boxes(path, (doc.page_count or 0) + 1, 0, 10)
    with pytest.raises(PageOutOfRange):
        span_boxes(path, 0, 0, 10)


def test_page_text_from_another_extractor_is_found_by_search(filings: list[tuple[Path, LoadedDocument]]) -> None:
    """A page text that does not line up with PDFium's (as from the pypdf fallback): found by its characters."""
    path, doc = filings[0]
    p = doc.pages[2]
    page_text = doc.text[p.start:p.end]
    start = page_text.index("\n", len(page_text) // 2) + 1
    end = page_text.index("\n", start + 40)
    shifted = "A header the other extractor read.\n" + page_text
    k = len("A header the other extractor read.\n")
    pb = span_boxes(path, 3, start + k, end + k, page_text=shifted)
    assert pb.method == "search" and pb.text == page_text[start:end]
    assert pb.boxes == span_boxes(path, 3, start, end).boxes


def test_page_spans_and_texts_match_the_loader(filings: list[tuple[Path, LoadedDocument]]) -> None:
    path, doc = filings[1]
    assert pdf_pages.page_spans(path) == doc.pages
    assert len(pdf_pages.page_texts(path)) == doc.page_count


# ---------------------------------------------------------------------------------------------------------------
# Pure: locate, merge_boxes
# ---------------------------------------------------------------------------------------------------------------


def test_locate_aligned_text_gives_raw_indices() -> None:
    raw = "Net  sales\r\nincreased \x02\r\n12%  in Q3\x0c"
    page_text = normalize_page(raw)
    assert page_text == "Net sales\nincreased -\n12% in Q3"
    start = page_text.index("sales")
    idx, method = locate(page_text, raw, start, start + len("sales\nincreased -\n12%"))
    assert method == "offsets"
    assert "".join(raw[i] for i in idx) == "salesincreased\x0212%"
    assert idx[0] == raw.index("sales") and idx[-1] == raw.index("%")


def test_locate_misaligned_falls_back_to_the_nearest_occurrence() -> None:
    raw = "total revenue 10\r\nother\r\ntotal revenue 20\r\nmore\r\ntotal revenue 30"
    # The ingested text has extra words before, so ordinals do not line up; "total revenue" occurs three times.
    page_text = "Intro.\n" + normalize_page(raw)
    second = page_text.index("total revenue 20")
    idx, method = locate(page_text, raw, second, second + len("total revenue"))
    assert method == "search"
    assert idx[0] == raw.index("total revenue 20") and "".join(raw[i] for i in idx) == "totalrevenue"
    third = page_text.index("total revenue 30")
    idx, method = locate(page_text, raw, third, third + len("total revenue"))
    assert method == "search" and idx[0] == raw.index("total revenue 30")


def test_locate_absent_or_blank_span_is_none() -> None:
    raw = "Operating income\r\nNet income"
    assert locate("Something else entirely", raw, 0, 9) == ([], "none")
    assert locate(normalize_page(raw), raw, 16, 17) == ([], "none")  # only the newline
    assert locate(normalize_page(raw), raw, 3, 3) == ([], "none")


def test_merge_boxes_one_box_per_line() -> None:
    # Two lines of 10pt characters, the second below the first; a comma sits lower than the letters.
    line1 = [(72 + 6 * i, 700, 77 + 6 * i, 710) for i in range(5)] + [(102, 698, 104, 702)]
    line2 = [(72 + 6 * i, 686, 77 + 6 * i, 696) for i in range(4)]
    out = merge_boxes(line1 + line2)
    assert out == [(72, 698, 104, 710), (72, 686, 95, 696)]


def test_merge_boxes_splits_at_a_wide_gap_and_skips_empty_boxes() -> None:
    left = [(72 + 6 * i, 700, 77 + 6 * i, 710) for i in range(3)]
    right = [(300 + 6 * i, 700, 305 + 6 * i, 710) for i in range(3)]  # another table column on the same line
    generated = [(95, 700, 95, 700)]  # a space PDFium made up: no size
    out = merge_boxes(left + generated + right)
    assert out == [(72, 700, 89, 710), (300, 700, 317, 710)]
    near = [(89 + 14, 700, 108, 710)]  # a gap of 14pt (under 1.5 line heights): the same box
    assert merge_boxes(left + near) == [(72, 700, 108, 710)]
    assert merge_boxes([]) == []


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def _png(data: bytes) -> Image.Image:
    assert data.startswith(PNG_MAGIC)
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_render_page_is_a_png_of_the_page_size_times_scale(filings: list[tuple[Path, LoadedDocument]]) -> None:
    path, _ = filings[0]
    for scale in (0.5, 1.5):
        png, w, h = render_page(path, 1, scale=scale)
        img = _png(png)
        assert img.size == (w, h) and img.format == "PNG"
        assert abs(w - 612 * scale) <= 1 and abs(h - 792 * scale) <= 1
    with pytest.raises(PageOutOfRange):
        render_page(path, 999)


def test_highlight_changes_pixels_only_inside_the_boxes(filings: list[tuple[Path, LoadedDocument]]) -> None:
    path, doc = filings[0]
    p = doc.pages[4]
    text = doc.text[p.start:p.end]
    start = text.index("\n", len(text) // 3) + 1
    end = text.index("\n", text.index("\n", start) + 1)  # two lines
    boxes = span_boxes(path, 5, start, end).boxes
    assert len(boxes) >= 2
    plain, w, h = render_page(path, 5, scale=1.0)
    lit, w2, h2 = render_page(path, 5, scale=1.0, highlight=boxes)
    assert (w, h) == (w2, h2)
    a, b = _png(plain).convert("RGB"), _png(lit).convert("RGB")
    diff = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v else 0)
    px = diff.load()
    changed = [(x, y) for y in range(h) for x in range(w) if px[x, y]]
    assert changed

    def in_box(x: int, y: int) -> bool:
        return any(bx.x0 * w - 1 <= x <= bx.x1 * w + 1 and bx.y0 * h - 1 <= y <= bx.y1 * h + 1 for bx in boxes)

    assert all(in_box(x, y) for x, y in changed)
    for bx in boxes:  # and every box is painted: most of its area changed (white turns yellow)
        area = [(x, y) for y in range(int(bx.y0 * h) + 1, int(bx.y1 * h)) for x in range(int(bx.x0 * w) + 1,
                                                                                         int(bx.x1 * w))]
        assert sum(1 for x, y in area if px[x, y]) > 0.5 * len(area)


# ---------------------------------------------------------------------------------------------------------------
# Rotated and cropped pages (hand-built): the boxes of the whole text cover the ink PDFium renders
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rotate,crop", [(0, None), (90, None), (180, None), (270, None), (0, (50, 400, 562, 742)),
                                         (90, (50, 400, 562, 742))])
def test_boxes_cover_the_rendered_ink_on_rotated_and_cropped_pages(
        tmp_path: Path, rotate: int, crop: tuple[int, int, int, int] | None) -> None:
    path = tmp_path / "page.pdf"
    path.write_bytes(make_pdf(["Quarterly report of the company", "Revenue grew by 12 percent"], rotate=rotate,
                              crop=crop))
    doc = load(path)
    pb = span_boxes(path, 1, 0, len(doc.text))
    assert pb.method == "offsets" and pb.text == doc.text and len(pb.boxes) == 2
    cw, ch = (512, 342) if crop else (612, 792)
    assert (pb.width, pb.height) == ((ch, cw) if rotate in (90, 270) else (cw, ch))
    png, w, h = render_page(path, 1, scale=1.0)
    assert abs(w - pb.width) <= 1 and abs(h - pb.height) <= 1
    img = _png(png).convert("L")
    px = img.load()
    ink = [(x, y) for y in range(h) for x in range(w) if px[x, y] < 128]
    assert len(ink) > 200
    outside = [(x, y) for x, y in ink if not any(
        b.x0 * w - 1 <= x <= b.x1 * w + 1 and b.y0 * h - 1 <= y <= b.y1 * h + 1 for b in pb.boxes)]
    assert outside == []
    if rotate in (90, 270):  # lines run down the displayed page: each box is tall and narrow
        assert all(b.y1 - b.y0 > 3 * (b.x1 - b.x0) for b in pb.boxes)
    else:
        assert all(b.x1 - b.x0 > 3 * (b.y1 - b.y0) for b in pb.boxes)
