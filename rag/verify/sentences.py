"""Sentence spans of a text (pure): the claims of an answer and the evidence units of a passage.

`sentence_spans(text)` returns (start, end) character offsets whose slices are the sentences, stripped of
surrounding whitespace and list markers, so that a viewer can highlight `text[start:end]` exactly.

A sentence ends at ".", "!" or "?" (optionally followed by closing quotes or brackets) when whitespace and an
upper-case letter, a digit or an opening quote follow; at a blank line; and at a line that starts a list item
or a heading. Not after common abbreviations ("e.g.", "Dr.", "U.S."), single initials ("J. R. R. Tolkien") or
inside numbers ("1.5", "3.2.1"). Passages tokenised with spaces before punctuation (" . ", as in Wikipedia dumps)
split the same way.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al fig figs eq no nos vol pp p approx est dept univ inc ltd
    co corp jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k u.n a.m p.m ca ph.d""".split())
# A candidate boundary: terminal punctuation, optional closers, whitespace, then what may start a sentence.
_END_RE = re.compile(r"""([.!?]+)(["'”’)\]]*)(\s+)(?=["'“‘(\[]?[A-Z0-9À-ÖØ-Þ])""")
_ITEM_RE = re.compile(r"[ \t]*(?:[-*+•]|\d{1,3}[.)]|#{1,6}|>)\s")
_MARKER_RE = re.compile(r"(?:[-*+•]|\d{1,3}[.)]|#{1,6}|>)\s+")


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the "." at `dot` ends an abbreviation or an initial rather than a sentence."""
    start = dot
    while start > 0 and (text[start - 1].isalpha() or text[start - 1] == "."):
        start -= 1
    word = text[start:dot].lower().strip(".")
    if not word:
        return False
    if len(word) == 1 and text[start].isupper():  # an initial: "J. R. R. Tolkien"
        return True
    return word in _ABBREVIATIONS


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    m = _MARKER_RE.match(text, start, end)
    if m:
        start = m.end()
    return start, end


def _line_blocks(text: str) -> list[tuple[int, int]]:
    """Runs of lines that may hold one sentence across a line break. A line break ends a run when a blank line,
    a list item or a heading follows, when the line is a heading, or when the line ends a sentence or a label."""
    blocks: list[tuple[int, int]] = []
    start = 0
    pos = text.find("\n")
    while pos >= 0:
        line_start = text.rfind("\n", 0, pos) + 1
        this = text[line_start:pos].strip()
        nxt_end = text.find("\n", pos + 1)
        nxt = text[pos + 1: nxt_end if nxt_end >= 0 else len(text)]
        if (not this or not nxt.strip() or _ITEM_RE.match(nxt) or this.startswith("#")
                or this[-1] in ".!?:" or _ITEM_RE.match(text, line_start)):
            blocks.append((start, pos))
            start = pos + 1
        pos = text.find("\n", pos + 1)
    blocks.append((start, len(text)))
    return blocks


def sentence_spans(text: str) -> list[tuple[int, int]]:
    blocks = _line_blocks(text)
    spans: list[tuple[int, int]] = []
    for b_start, b_end in blocks:
        seg_start = b_start
        for m in _END_RE.finditer(text, b_start, b_end):
            if m.group(1) == "." and _is_abbreviation(text, m.start(1)):
                continue
            end = m.end(2)
            s, e = _trim(text, seg_start, end)
            if e > s:
                spans.append((s, e))
            seg_start = m.end(3)
        s, e = _trim(text, seg_start, b_end)
        if e > s:
            spans.append((s, e))
    return spans


def sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]
