"""Hand-built PDFs for tests: small, exact, and with text where the test says."""

from __future__ import annotations

from pathlib import Path

import pypdfium2 as pdfium


def make_pdf(lines: list[str], *, rotate: int = 0, crop: tuple[int, int, int, int] | None = None) -> bytes:
    """A minimal valid one-page PDF (612x792 points) with the given text lines (Helvetica 12pt), built by hand;
    optionally /Rotate'd and with a /CropBox."""
    text = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(
        "(" + ln.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") '" for ln in lines) + " ET"
    extra = (f" /Rotate {rotate}" if rotate else "") + (" /CropBox [{} {} {} {}]".format(*crop) if crop else "")
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]{extra} /Contents 4 0 R "
         f"/Resources << /Font << /F1 5 0 R >> >> >>").encode(),
        b"<< /Length %d >>\nstream\n" % len(text) + text.encode("latin-1") + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def search_char_boxes(path: Path, page_no: int, words: str) -> list[list[tuple[float, float, float, float]]]:
    """Every place PDFium's own search finds `words` on the page: the fraction boxes (x0, y0, x1, y1, top-left
    origin) of its visible characters. Only for unrotated pages (the filings' pages are)."""
    pdf = pdfium.PdfDocument(str(path))
    try:
        page = pdf[page_no - 1]
        assert page.get_rotation() == 0
        left, bottom, right, top = page.get_bbox()
        w, h = right - left, top - bottom
        tp = page.get_textpage()
        searcher = tp.search(words, match_case=True)
        found = []
        while (hit := searcher.get_next()) is not None:
            index, count = hit
            boxes = []
            for i in range(index, index + count):
                x0, y0, x1, y1 = tp.get_charbox(i)
                if x1 > x0 and y1 > y0 and not tp.get_text_range(i, 1).isspace():  # a space glyph: not painted
                    boxes.append(((x0 - left) / w, (top - y1) / h, (x1 - left) / w, (top - y0) / h))
            found.append(boxes)
        return found
    finally:
        pdf.close()
