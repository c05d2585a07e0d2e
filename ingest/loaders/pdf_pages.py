"""Where a span of a PDF's text lies on its page, and the page as an image: what the evidence viewer shows.

A span is given in the document's text as ingested (ingest/loaders/pdf.py: normalised page texts joined with a
blank line). To find it on the page, the page's text is read again with PDFium and normalised the same way; the
normalisation only drops or merges whitespace and control characters, so the k-th visible (non-space) character
of the normalised text is the k-th visible character PDFium reports, whose box PDFium knows. Characters' boxes
(the font's full height at the character, so a comma or an x-height word lines up with its capitals) are merged
into one rectangle per line run. When the texts do not line up (a document extracted with the pypdf
fallback, or a file that changed), the span's visible characters are searched for on the page instead, nearest
to where they should be.

Boxes are fractions of the page (0..1, origin top-left, as the page is displayed), so a client can lay them over
an image of any size.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ctxqa.ingest.loaders.base import _CONTROL_RE, LoadError
from ctxqa.ingest.loaders.pdf import PDFIUM_LOCK, assemble, normalize_page
from ctxqa.rag.types import PageSpan

# Characters of one line whose gap exceeds this many times the line height start a new box (columns, tables).
_GAP_FACTOR = 1.5
# Boxes are padded by this fraction of the line height (the boxes are the font's ascent to descent already).
_PAD = 0.04
# A character's font-height box taller than this many times its font size is not trusted (broken font metrics):
# its glyph's own tight box is used instead.
_LOOSE_MAX = 3.0
HIGHLIGHT_RGBA = (255, 213, 0, 96)  # translucent yellow: the text under it stays readable
# How a span was found on its page: aligned with the ingested text, found by its characters, or not at all.
Method = Literal["offsets", "search", "none"]


@dataclass(frozen=True)
class Box:
    """A rectangle on the page as fractions of its width and height, origin at the top left."""

    x0: float
    y0: float
    x1: float
    y1: float

    def as_dict(self) -> dict[str, float]:
        return {"x0": round(self.x0, 5), "y0": round(self.y0, 5), "x1": round(self.x1, 5), "y1": round(self.y1, 5)}


@dataclass
class PageBoxes:
    page: int
    width: float  # the page's size in PDF points, as displayed (rotation applied)
    height: float
    boxes: list[Box] = field(default_factory=list)
    method: Method = "none"  # offsets: aligned with the ingested text; search: found by its characters; none
    text: str = ""  # the page text the boxes cover (normalised)


class PageOutOfRange(ValueError):
    pass


def _open(path: Path, password: str | None) -> Any:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(path), password=password or None)
    except pdfium.PdfiumError as e:
        if getattr(e, "err_code", None) == 4 or "password" in str(e).lower():
            raise LoadError(path, "encrypted", "the PDF is password-protected: its pages cannot be shown",
                            "ingest an unencrypted copy to view its pages") from None
        raise LoadError(path, "corrupt", f"PDFium cannot open it ({e})") from None


def page_texts(path: Path, password: str | None = None) -> list[str]:
    """Every page's normalised text, exactly as the PDF loader reads it with PDFium."""
    with PDFIUM_LOCK:
        pdf = _open(path, password)
        try:
            out: list[str] = []
            for i in range(len(pdf)):
                page = pdf[i]
                try:
                    tp = page.get_textpage()
                    try:
                        out.append(normalize_page(tp.get_text_range()))
                    finally:
                        tp.close()
                finally:
                    page.close()
            return out
        finally:
            pdf.close()


def page_spans(path: Path, password: str | None = None) -> list[PageSpan]:
    """Where each page lies in the document's text (for documents ingested before the spans were stored)."""
    return assemble(page_texts(path, password))[1]


def _visible(c: str) -> bool:
    return not c.isspace() and not _CONTROL_RE.match(c)


def _raw_visible(raw: str) -> list[tuple[int, str]]:
    """(PDFium character index, character) of every visible character of a page, as the loader keeps them."""
    out = []
    for i, c in enumerate(raw):
        if c in ("\x02", "\ufffe"):
            c = "-"  # PDFium's hyphens (normalize_page does the same)
        if _visible(c):
            out.append((i, c))
    return out


def _ordinal(text: str, pos: int) -> int:
    """How many visible characters of `text` come before `pos`."""
    return sum(1 for c in text[:pos] if _visible(c))


def locate(page_text: str, raw: str, start: int, end: int) -> tuple[list[int], Method]:
    """PDFium character indices of page_text[start:end] in the page's raw text, and how they were found.

    Pure: `page_text` is the page's normalised text as ingested, `raw` what PDFium reports for the page now."""
    want = [c for c in page_text[start:end] if _visible(c)]
    if not want:
        return [], "none"
    vis = _raw_visible(raw)
    k0 = _ordinal(page_text, start)
    got = vis[k0:k0 + len(want)]
    if [c for _, c in got] == want:
        return [i for i, _ in got], "offsets"
    # Not aligned: find the visible characters on the page, the occurrence nearest the expected place.
    hay = "".join(c for _, c in vis)
    needle = "".join(want)
    best, pos = -1, hay.find(needle)
    while pos != -1:
        if best == -1 or abs(pos - k0) < abs(best - k0):
            best = pos
        pos = hay.find(needle, pos + 1)
    if best == -1:
        return [], "none"
    return [i for i, _ in vis[best:best + len(needle)]], "search"


def merge_boxes(chars: Sequence[tuple[float, float, float, float]]) -> list[tuple[float, float, float, float]]:
    """Merge character boxes (left, bottom, right, top in PDF points, reading order) into one box per line run.

    Pure. A character joins the current box when it overlaps it vertically by half of the smaller height and
    starts no further than _GAP_FACTOR line heights to its right."""
    out: list[list[float]] = []
    for x0, y0, x1, y1 in chars:
        if x1 <= x0 or y1 <= y0:
            continue  # zero-size boxes (generated spaces)
        if out:
            cur = out[-1]
            h = min(cur[3] - cur[1], y1 - y0)
            overlap = min(cur[3], y1) - max(cur[1], y0)
            if overlap >= 0.5 * h and x0 - cur[2] <= _GAP_FACTOR * h and x0 >= cur[0] - h:
                cur[0], cur[1], cur[2], cur[3] = min(cur[0], x0), min(cur[1], y0), max(cur[2], x1), max(cur[3], y1)
                continue
        out.append([x0, y0, x1, y1])
    return [(a, b, c, d) for a, b, c, d in out]


def _char_indices(tp: Any, text_indices: list[int], text_len: int) -> list[int]:
    """PDFium character indices of positions in the page's text (they differ where PDFium's text output inserts
    or leaves out characters; for most pages they are the same)."""
    import pypdfium2.raw as pdfium_c

    n = tp.count_chars()
    if text_len == n:
        return [i for i in text_indices if i < n]
    out = []
    for i in text_indices:
        ci = pdfium_c.FPDFText_GetCharIndexFromTextIndex(tp, i)
        if 0 <= ci < n:
            out.append(ci)
    return out


def _char_box(tp: Any, i: int) -> tuple[float, float, float, float]:
    """Character i's box (left, bottom, right, top): its glyph's box widened to the font's height at that place,
    so every character of a line has the same top and bottom (a comma's tight box sits below the letters')."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    x0, y0, x1, y1 = tp.get_charbox(i)
    if x1 <= x0 or y1 <= y0:
        return x0, y0, x1, y1  # a generated character (no glyph): merge_boxes skips it
    try:
        lx0, ly0, lx1, ly1 = tp.get_charbox(i, loose=True)
    except pdfium.PdfiumError:
        return x0, y0, x1, y1
    size = pdfium_c.FPDFText_GetFontSize(tp, i)
    if ly1 <= ly0 or (size > 0 and ly1 - ly0 > _LOOSE_MAX * size):
        return x0, y0, x1, y1
    return min(x0, lx0), min(y0, ly0), max(x1, lx1), max(y1, ly1)


def _to_view(box: tuple[float, float, float, float], page: Any) -> Box:
    """PDF user space (origin bottom-left of the media box) to fractions of the displayed page."""
    left, bottom, right, top = box
    h = top - bottom
    left, bottom, right, top = left - _PAD * h, bottom - _PAD * h, right + _PAD * h, top + _PAD * h
    x0, y0, x1, y1 = page.get_bbox()  # the crop box: what is displayed
    w, ht = x1 - x0, y1 - y0
    rot = page.get_rotation() % 360
    fx0, fx1 = (left - x0) / w, (right - x0) / w
    fy0, fy1 = (y1 - top) / ht, (y1 - bottom) / ht  # top-left origin
    if rot == 90:
        fx0, fy0, fx1, fy1 = 1 - fy1, fx0, 1 - fy0, fx1
    elif rot == 180:
        fx0, fy0, fx1, fy1 = 1 - fx1, 1 - fy1, 1 - fx0, 1 - fy0
    elif rot == 270:
        fx0, fy0, fx1, fy1 = fy0, 1 - fx1, fy1, 1 - fx0

    def clamp(v: float) -> float:
        return min(1.0, max(0.0, v))

    return Box(clamp(fx0), clamp(fy0), clamp(fx1), clamp(fy1))


@contextmanager
def _open_page(path: Path, page_no: int, password: str | None) -> Iterator[Any]:
    """Page `page_no` (1-based) of the PDF, opened and closed under the PDFium lock."""
    with PDFIUM_LOCK:
        pdf = _open(path, password)
        try:
            if not 1 <= page_no <= len(pdf):
                raise PageOutOfRange(f"page {page_no} does not exist: the PDF has {len(pdf)} page(s)")
            page = pdf[page_no - 1]
            try:
                yield page
            finally:
                page.close()
        finally:
            pdf.close()


def span_boxes(path: Path, page_no: int, start: int, end: int, *, page_text: str | None = None,
               password: str | None = None) -> PageBoxes:
    """Boxes over page_text[start:end] on page `page_no` (1-based). `page_text` is the page's text as ingested
    (None: read it again now, which is the same text for a document the default PDFium loader read)."""
    with _open_page(path, page_no, password) as page:
        w, h = page.get_size()
        tp = page.get_textpage()
        try:
            raw = tp.get_text_range()
            text = page_text if page_text is not None else normalize_page(raw)
            start, end = max(0, start), min(len(text), end)
            idx, method = locate(text, raw, start, end) if end > start else ([], "none")
            chars = [_char_box(tp, ci) for ci in _char_indices(tp, idx, len(raw))]
        finally:
            tp.close()
        boxes = [_to_view(b, page) for b in merge_boxes(chars)]
        return PageBoxes(page_no, float(w), float(h), boxes, method, text[start:end] if end > start else "")


def render_page(path: Path, page_no: int, *, scale: float = 1.5, highlight: Sequence[Box] = (),
                password: str | None = None) -> tuple[bytes, int, int]:
    """The page as a PNG (`scale` pixels per PDF point), with `highlight` boxes painted over it.
    Returns (png bytes, width px, height px)."""
    from PIL import Image, ImageDraw

    with _open_page(path, page_no, password) as page:
        bitmap = page.render(scale=scale)
        try:
            img = bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()
    if highlight:
        overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        W, H = img.size
        for b in highlight:
            draw.rectangle([b.x0 * W, b.y0 * H, b.x1 * W, b.y1 * H], fill=HIGHLIGHT_RGBA)
        img = Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
    buf = io.BytesIO()
    # compress_level 6 and no optimize pass: optimize costs ~3x the time for a few percent on page images.
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), img.size[0], img.size[1]
