"""Period- and recency-aware ranking: the pure rerank, then real filings through the real pipeline."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from ctxqa.rag.periods import DocumentPeriod, parse_question
from ctxqa.rag.retrieve.period_rank import period_rerank

Q2 = DocumentPeriod(date(2023, 7, 30), (2023, 2))
Q3 = DocumentPeriod(date(2023, 10, 29), (2023, 3))
UNDATED = DocumentPeriod()


def test_a_named_quarter_lifts_its_document_without_filtering_the_others() -> None:
    ranked = [(1, 0.9), (2, 0.8), (3, 0.1)]
    docs = {1: (10, Q3, True), 2: (20, Q2, True), 3: (30, UNDATED, False)}
    out, ev = period_rerank(ranked, parse_question("gross margin in Q2 2023"), docs, period_weight=0.5,
                            recency_weight=0.3)
    assert [c for c, _ in out] == [2, 1, 3]  # lifted past the other quarter, nothing dropped
    assert ev[2]["period"] == 1.0 and 1 in ev and ev[1]["period"] == 0.5  # same year: half
    assert 3 not in ev


def test_latest_lifts_the_newest_dated_document_only() -> None:
    ranked = [(1, 0.9), (2, 0.85), (3, 0.1)]  # the lift is a share of the spread of the candidates' scores
    docs = {1: (10, Q2, True), 2: (20, Q3, True), 3: (30, UNDATED, False)}
    out, ev = period_rerank(ranked, parse_question("in the most recent 10-Q"), docs, period_weight=0.5,
                            recency_weight=0.3)
    assert [c for c, _ in out] == [2, 1, 3] and ev == {2: {"period": 0.0, "recent": 1.0}}
    # Dates that are only the files' own dates say nothing about which report is newest.
    out, ev = period_rerank(ranked, parse_question("the latest report"),
                            {1: (10, Q2, False), 2: (20, Q3, False), 3: (30, UNDATED, False)},
                            period_weight=0.5, recency_weight=0.3)
    assert out == ranked and ev == {}


def test_no_period_in_the_question_changes_nothing() -> None:
    ranked = [(1, 0.2), (2, 0.9)]
    out, ev = period_rerank(ranked, parse_question("how do I declare query parameters"),
                            {1: (1, Q2, True), 2: (2, Q3, True)}, period_weight=0.5, recency_weight=0.3)
    assert out == ranked and ev == {}


@pytest.fixture(scope="module")
def filings(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, embedder):  # type: ignore[no-untyped-def]
    from ctxqa.context import Context
    from ctxqa.rag.config import Settings

    root = tmp_path_factory.mktemp("filings")
    for f in sorted((shared_data / "eval/sec10q-nvda/docs").glob("*.pdf")) + [
            shared_data / "corpora/sec-10q/2023 Q1 INTC.pdf"]:
        shutil.copy(f, root / f.name)
    ctx = Context(Settings(data_dir=tmp_path_factory.mktemp("data")))
    ctx.__dict__["embedder"] = embedder
    assert not ctx.ingestor.ingest([root]).failed
    yield ctx, root
    ctx.close()


@pytest.mark.parametrize(("question", "expected"), [
    ("What was NVIDIA's operating cash flow as revealed in the Q3 2022 10-Q?", "2022 Q3 NVDA.pdf"),
    ("How did NVIDIA's operating expenses compare to its revenues in Q1 2023?", "2023 Q1 NVDA.pdf"),
    ("What were the main contributors to NVIDIA's net income in the second quarter of 2023?", "2023 Q2 NVDA.pdf"),
    ("What was NVIDIA's gross margin as stated in the most recent 10-Q report?", "2023 Q3 NVDA.pdf"),
    ("What was Intel's revenue for the quarter ended April 1, 2023?", "2023 Q1 INTC.pdf"),
])
def test_the_right_filing_comes_first(filings, question: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    ctx, _ = filings
    hits = ctx.retriever.search(question, k=10).hits
    assert hits[0].source == expected, [h.source for h in hits[:5]]
    assert hits[0].title_source == "first page" and hits[0].period and hits[0].date_source


def test_without_the_lift_the_quarter_is_not_found_by_content_alone(filings) -> None:  # type: ignore[no-untyped-def]
    """The lift is what does it: with it off, the most recent filing is not reliably first (the filings say the
    same things quarter after quarter)."""
    ctx, _ = filings
    q = "What was NVIDIA's gross margin as stated in the most recent 10-Q report?"
    on = ctx.retriever.search(q, k=10).hits[0]
    ctx.settings.period_weight = ctx.settings.recency_weight = 0.0
    try:
        off = ctx.retriever.search(q, k=10).hits
    finally:
        ctx.settings.period_weight, ctx.settings.recency_weight = 0.5, 0.3
    assert on.scores.get("recent") == 1.0 and "recent" not in off[0].scores


def test_new_rules_reread_documents_and_keep_unchanged_vectors(filings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """When the document-context rules change (CONTEXT_VERSION), the next ingest reads every document again;
    chunks whose embedded text did not change keep their ids and vectors, and the indexes stay in step."""
    from sqlalchemy import select

    from ctxqa.ingest import pipeline
    from ctxqa.rag.db import repo
    from ctxqa.rag.db.models import Chunk

    ctx, root = filings
    with ctx.db.session() as s:
        before = {c.id: c.embedding for c in s.scalars(select(Chunk))}
    assert ctx.ingestor.ingest([root]).summary()["unchanged"] == 5  # same rules: nothing to do
    monkeypatch.setattr(pipeline, "CONTEXT_VERSION", pipeline.CONTEXT_VERSION + 1)
    rep = ctx.ingestor.ingest([root])
    assert rep.summary()["updated"] == 5 and not rep.failed
    assert rep.chunks_reused == len(before)  # the same headers: every vector reused, none embedded again
    with ctx.db.session() as s:
        after = {c.id: c.embedding for c in s.scalars(select(Chunk))}
    assert after == before
    with ctx.db.session() as s:
        coll = repo.require_collection(s, ctx.settings.default_collection)
    assert ctx.store.check(coll).ok and ctx.store.check_lexical(coll).ok
