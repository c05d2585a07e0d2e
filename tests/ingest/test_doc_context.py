"""Document context on real documents: the shared 10-Q filings, Markdown pages, and made-up edge cases."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from ctxqa.ingest.doc_context import document_context, worth_showing
from ctxqa.ingest.loaders import load
from ctxqa.rag.types import LoadedDocument, PageSpan

NOW = datetime(2026, 1, 2, tzinfo=UTC)


def test_titles_worth_showing() -> None:
    for bad in ("0001045810-23-000175", "04.01.2023 10Q Document", "Microsoft Word - report.docx", "Document1",
                "untitled", "report_final_v2.pdf", "3f2a9c1e8b7d6a5f4e3d", "", "  ", "12"):
        assert not worth_showing(bad), bad
    for good in ("Backup policy", "NVIDIA Corporation Annual Report 2023", "Query Parameters", "FORM 10-Q"):
        assert worth_showing(good), good


@pytest.mark.parametrize(("name", "title", "day", "period"), [
    ("eval/sec10q-nvda/docs/2023 Q2 NVDA.pdf", "NVIDIA CORPORATION FORM 10-Q", date(2023, 7, 30), "2023 Q2"),
    ("eval/sec10q-nvda/docs/2022 Q3 NVDA.pdf", "NVIDIA CORPORATION FORM 10-Q", date(2022, 10, 30), "2022 Q3"),
    ("corpora/sec-10q/2023 Q1 INTC.pdf", "INTEL CORPORATION FORM 10-Q", date(2023, 4, 1), "2023 Q1"),
    ("corpora/sec-10q/2022 Q3 AMZN.pdf", "AMAZON.COM, INC FORM 10-Q", date(2022, 9, 30), "2022 Q3"),
])
def test_filings(shared_data: Path, name: str, title: str, day: date, period: str) -> None:
    f = shared_data / name
    doc = load(f)
    assert not worth_showing(doc.title or doc.metadata.get("title"))  # an accession number / a tool's name
    c = document_context(doc, f.name, {}, NOW)
    assert (c.title, c.title_source, c.date, c.period) == (title, "first page", day, period)
    assert c.date_source in ("metadata", "first page")
    header = c.header
    assert header.startswith(title) and "quarterly period ended" in header and f.stem in header


def test_markdown_keeps_its_own_title_and_nothing_more(shared_data: Path) -> None:
    f = shared_data / "corpora/fastapi-docs/tutorial/query-params.md"
    c = document_context(load(f), "tutorial/query-params.md", {}, NOW)
    assert (c.title, c.title_source, c.header) == ("Query Parameters", "metadata", "Query Parameters")
    assert (c.date, c.date_source, c.period) == (NOW.date(), "file date", None)


def _doc(text: str, title: str | None = None, **meta: object) -> LoadedDocument:
    return LoadedDocument(text=text, media_type="application/pdf", title=title, metadata=dict(meta),
                          pages=[PageSpan(1, 0, len(text))])


def test_fallbacks_heading_then_file_name_and_dates_from_text_and_name() -> None:
    c = document_context(_doc("Quarterly Sales Review\nprepared by the team.\nPublished: March 3, 2024\nbody."),
                         "notes/scan_0001.pdf", {}, NOW)
    assert (c.title, c.title_source, c.date, c.date_source) == ("Quarterly Sales Review", "first page",
                                                               date(2024, 3, 3), "first page")
    c = document_context(_doc("lower case words only, nothing like a title."), "2021 Q4 board minutes.pdf", {}, NOW)
    assert (c.title, c.title_source, c.period, c.date_source) == ("2021 Q4 board minutes", "file name", "2021 Q4",
                                                                 "file name")
    assert c.date == date(2021, 12, 31)
    c = document_context(_doc("text"), "report-2020-05-17.pdf", {}, NOW)
    assert (c.date, c.date_source) == (date(2020, 5, 17), "file name")


def test_what_the_user_says_wins() -> None:
    c = document_context(_doc("For the quarterly period ended July 30, 2023\nACME CORP\n", "0001-23-00001"),
                         "x.pdf", {"title": "Acme Q2", "date": "2023-08-01"}, NOW)
    assert (c.title, c.title_source, c.date, c.date_source) == ("Acme Q2", "metadata", date(2023, 8, 1), "metadata")
    assert c.period == "2023 Q2" and "ACME CORP" in c.header


def test_a_quarter_the_file_name_names_wins_over_the_computed_one() -> None:
    # Apple-style fiscal naming: the quarter ended July 1, 2023 filed as its fiscal Q3.
    c = document_context(_doc("For the quarterly period ended July 1, 2023\nAPPLE INC.\n"), "2023 Q3 AAPL.pdf", {}, NOW)
    assert c.period == "2023 Q3" and c.date == date(2023, 7, 1)
