"""Spans of a document's text: rebuilding a stretch of the text from its chunks, and which pages a span touches.

The full text of a document is not stored; its chunks are exact slices of it (they overlap, and whitespace between
them may be left out), so any stretch is rebuilt from the chunks that cover it. Pure functions.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence


def stitch(pieces: Sequence[tuple[int, str]], start: int, end: int) -> str:
    """The text of [start, end) from (offset, text) slices of it, in any order. A gap no slice covers becomes
    spaces of the same length, so offsets stay true."""
    if end <= start:
        return ""
    buf = [" "] * (end - start)
    for off, text in pieces:
        a, b = max(start, off), min(end, off + len(text))
        if a < b:
            buf[a - start:b - start] = text[a - off:b - off]
    return "".join(buf)


def pages_of(page_spans: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """1-based pages whose text overlaps [start, end) (an empty span: the page it falls on)."""
    out = []
    for i, (a, b) in enumerate(page_spans, start=1):
        if (start < b and end > a) or (start == end and a <= start <= b):
            out.append(i)
    return out


def clip_to_page(page_spans: Sequence[tuple[int, int]], page: int, start: int, end: int) -> tuple[int, int]:
    """[start, end) as offsets within page `page`'s text, clipped to it ((0, 0) if it lies elsewhere)."""
    a, b = page_spans[page - 1]
    s, e = max(start, a), min(end, b)
    return (s - a, e - a) if s < e else (0, 0)


def heading_path_at(sections: Sequence[tuple[int, int, Sequence[str]]], pos: int) -> list[str]:
    """The heading path at `pos` from (start, end, headings) sections, in any order: that of the innermost
    section holding it (the latest-starting one that covers it), as the chunker finds a chunk's. [] if none."""
    ordered = sorted(sections, key=lambda s: (s[0], -s[1], len(s[2])))
    starts = [s[0] for s in ordered]
    for i in range(bisect_right(starts, pos) - 1, -1, -1):
        start, end, headings = ordered[i]
        if pos < end:
            return list(headings)
    return []
