"""End to end on CPU: real ingestion, real retrieval, the bundled SmolLM2 GGUF through llama.cpp.

A 135M model answers poorly; these tests check the machinery (prompt within the window, every citation
resolved or flagged, stream == non-stream, abstention), not wisdom.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ctxqa.rag.answer import NOT_FOUND, AskOptions
from ctxqa.rag.citations import parse


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, embedder):  # type: ignore[no-untyped-def]
    from ctxqa.context import Context
    from ctxqa.rag.config import Settings

    root = tmp_path_factory.mktemp("corpus")
    # A slice of both shared corpora: Markdown pages and one 10-Q filing (multi-page PDF).
    for f in sorted((shared_data / "corpora/fastapi-docs/tutorial").glob("query-param*.md"))[:4]:
        shutil.copy(f, root / f.name)
    shutil.copy(shared_data / "corpora/sec-10q/2023 Q1 INTC.pdf", root / "intc-10q.pdf")
    c = Context(Settings(data_dir=tmp_path_factory.mktemp("data"), max_new_tokens=96))
    c.__dict__["embedder"] = embedder
    rep = c.ingestor.ingest([root])
    assert not rep.failed
    yield c
    c.close()


def _check_machinery(ans, ctx) -> None:  # type: ignore[no-untyped-def]
    gen = ctx.generator
    assert ans.usage.prompt_tokens + 96 <= gen.context_length
    assert ans.blocks_used >= 1
    assert "BEGININPUT" in ans.prompt and "BEGININSTRUCTION" in ans.prompt
    assert "Don't make up answers if you don't know." in ans.prompt
    provided = {h.chunk_id for h in ans.hits}
    for c in ans.citations:
        assert c.status in ("verified", "unverified", "inferred")
        if c.status == "unverified":
            assert c.raw and not c.chunk_ids  # flagged, not silently trusted
        else:
            assert c.chunk_ids and set(c.chunk_ids) <= provided and c.document_id is not None
            assert 0.0 <= c.support <= 1.0
    # Every group the model wrote is accounted for (resolved or flagged), none dropped.
    if not ans.abstained:
        assert len(ans.citations) >= len(parse(ans.raw_output).groups) or not parse(ans.raw_output).groups


def test_ask_resolves_or_flags_every_citation(ctx) -> None:  # type: ignore[no-untyped-def]
    ans = ctx.answerer.answer("How do I declare an optional query parameter?")
    _check_machinery(ans, ctx)
    assert ans.hits and ans.hits[0].source.endswith(".md")
    assert set(ans.timings) >= {"embed", "search", "assemble", "generate", "parse"}


def test_pdf_citation_has_pages(ctx) -> None:  # type: ignore[no-untyped-def]
    ans = ctx.answerer.answer("What was Intel's revenue in the first quarter of 2023?",
                              AskOptions(k=4))
    _check_machinery(ans, ctx)
    assert any(h.source == "intc-10q.pdf" and h.page_start for h in ans.hits)
    assert "page:" in ans.prompt  # PDF blocks carry their page for the model to cite


def test_stream_equals_non_stream(ctx) -> None:  # type: ignore[no-untyped-def]
    q = "What is the default value of a query parameter?"
    ans = ctx.answerer.answer(q)
    events = list(ctx.answerer.stream(q))
    assert events[0].kind == "sources" and [h.chunk_id for h in events[0].hits] == [h.chunk_id for h in ans.hits]
    deltas = "".join(e.text for e in events if e.kind == "delta")
    final = events[-1].answer
    assert events[-1].kind == "final"
    assert deltas == final.raw_output == ans.raw_output
    assert final.answer == ans.answer
    assert [(c.status, c.chunk_ids, c.raw) for c in final.citations] == \
        [(c.status, c.chunk_ids, c.raw) for c in ans.citations]


def test_nothing_relevant_abstains_without_sources(ctx) -> None:  # type: ignore[no-untyped-def]
    ans = ctx.answerer.answer("What is the airspeed velocity of an unladen swallow in the Andes?")
    assert ans.abstained and ans.answer == NOT_FOUND and ans.citations == []
    assert ans.usage.completion_tokens == 0  # the model was not even asked


def test_several_questions_one_instruction_block(ctx) -> None:  # type: ignore[no-untyped-def]
    ans = ctx.answerer.answer(["How do I declare an optional query parameter?",
                               "What was Intel's revenue in the first quarter of 2023?"])
    _check_machinery(ans, ctx)
    assert ans.prompt.count("BEGININSTRUCTION") == 1
    sources = {h.source for h in ans.hits}
    assert "intc-10q.pdf" in sources and any(s.endswith(".md") for s in sources)
