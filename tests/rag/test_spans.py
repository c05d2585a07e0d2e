"""Spans of a document's text (rag/spans.py): rebuilding a stretch from its chunks, the pages a span touches."""

from __future__ import annotations

from ctxqa.ingest.loaders.pdf import assemble
from ctxqa.rag.spans import clip_to_page, heading_path_at, pages_of, stitch

TEXT = "The blue widget costs 42 euros.\n\nIt ships from Lyon within two days."


def slices(text: str, cuts: list[tuple[int, int]]) -> list[tuple[int, str]]:
    return [(a, text[a:b]) for a, b in cuts]


def test_stitch_rebuilds_any_stretch_from_overlapping_slices_in_any_order() -> None:
    pieces = slices(TEXT, [(40, len(TEXT)), (0, 20), (15, 45)])
    for start, end in [(0, len(TEXT)), (3, 18), (16, 44), (19, 41), (0, 1), (len(TEXT) - 1, len(TEXT))]:
        assert stitch(pieces, start, end) == TEXT[start:end]
    assert stitch(pieces[::-1], 0, len(TEXT)) == TEXT


def test_stitch_fills_gaps_with_spaces_so_offsets_stay_true() -> None:
    pieces = slices(TEXT, [(0, 10), (20, 30)])
    out = stitch(pieces, 5, 25)
    assert len(out) == 20
    assert out == TEXT[5:10] + " " * 10 + TEXT[20:25]
    assert stitch(pieces, 12, 18) == " " * 6  # wholly uncovered
    assert stitch([], 0, 4) == "    "


def test_stitch_of_an_empty_or_reversed_span_is_empty() -> None:
    pieces = slices(TEXT, [(0, len(TEXT))])
    assert stitch(pieces, 7, 7) == ""
    assert stitch(pieces, 9, 3) == ""
    assert stitch(pieces, len(TEXT) - 3, len(TEXT) + 10) == TEXT[-3:] + " " * 10  # past the end: blank


def test_pages_of_and_clip_to_page_on_assembled_pages() -> None:
    text, spans, _ = assemble(["Page one text.", "Second page here.", "", "Fourth."])
    ps = [(p.start, p.end) for p in spans]
    assert ps == [(0, 14), (16, 33), (35, 35), (37, 44)]
    assert pages_of(ps, 0, 5) == [1]
    assert pages_of(ps, 10, 20) == [1, 2]  # across the page separator
    assert pages_of(ps, 0, len(text)) == [1, 2, 3, 4]  # the empty page 3 lies inside the span
    assert pages_of(ps, 20, 34) == [2]  # up to the empty page, not across it
    assert pages_of(ps, 14, 16) == []  # only the separator
    assert pages_of(ps, 5, 5) == [1]  # an empty span: the page it falls on
    assert pages_of(ps, 14, 14) == [1]  # at a page's end
    assert pages_of(ps, 35, 35) == [3]
    assert pages_of(ps, 100, 120) == []

    assert clip_to_page(ps, 1, 10, 20) == (10, 14)
    assert clip_to_page(ps, 2, 10, 20) == (0, 4)
    assert clip_to_page(ps, 4, 0, len(text)) == (0, 7)
    assert clip_to_page(ps, 2, 0, 5) == (0, 0)  # elsewhere
    assert clip_to_page(ps, 3, 0, len(text)) == (0, 0)  # an empty page


def test_heading_path_at_is_the_innermost_section_holding_the_position() -> None:
    # As the Markdown loader finds them: the title's section is only its own line; nested sections cover their
    # subsections; a section with no heading below the title ends where the next one starts.
    sections = [(152, 222, ("Widget catalogue", "Returns")), (0, 20, ("Widget catalogue",)),
                (20, 152, ("Widget catalogue", "Prices")), (60, 100, ("Widget catalogue", "Prices", "Blue"))]
    assert heading_path_at(sections, 0) == ["Widget catalogue"]
    assert heading_path_at(sections, 19) == ["Widget catalogue"]
    assert heading_path_at(sections, 20) == ["Widget catalogue", "Prices"]
    assert heading_path_at(sections, 70) == ["Widget catalogue", "Prices", "Blue"]
    assert heading_path_at(sections, 100) == ["Widget catalogue", "Prices"]  # after the subsection
    assert heading_path_at(sections, 200) == ["Widget catalogue", "Returns"]
    assert heading_path_at(sections, 222) == []  # past the end
    assert heading_path_at([], 5) == []
    outer = [(0, 500, ("Guide",)), (100, 200, ("Guide", "Install"))]
    assert heading_path_at(outer, 300) == ["Guide"]  # an outer section resumes after an inner one
