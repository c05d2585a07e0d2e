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
from ctxqa.rag.generate.base import Completion
from ctxqa.rag.verify.sentences import sentences


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
    # The same verification either way, and every sentence was announced once, in order, as it completed.
    assert final.grounding == ans.grounding
    assert [(x.text, x.label) for x in final.sentences] == [(x.text, x.label) for x in ans.sentences]
    announced = [e for e in events if e.kind == "sentence"]
    assert [(e.sentence.start, e.sentence.label) for e in announced] == [(x.start, x.label) for x in final.sentences]
    assert "".join(e.text for e in announced) == final.answer[: final.sentences[-1].end] if final.sentences else True


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


# ---------------------------------------------------------------------------------------------------------------
# Known model outputs through Answerer.finish: exact statuses and verdicts (nothing left to the 135M model)
# ---------------------------------------------------------------------------------------------------------------

QUESTION = "What was Intel's revenue in the first quarter of 2023?"


def _prepared(ctx):  # type: ignore[no-untyped-def]
    prep = ctx.answerer.prepare(QUESTION, AskOptions(k=4))
    assert prep.blocks.blocks, "the question retrieves the 10-Q"
    return prep


def _completion(text: str) -> Completion:
    return Completion(text=text, prompt_tokens=500, completion_tokens=40, finish_reason="stop", time_prefill=0.1,
                      time_generate=0.2)


def _quotable(prep):  # type: ignore[no-untyped-def]
    """The first block with a prose sentence (8+ words on one line), and that sentence: what a faithful model
    would say from it."""
    for block in prep.blocks.blocks:
        for hit in block.hits:
            for sent in sentences(hit.text):
                if len(sent.split()) >= 8 and "\n" not in sent and sent.endswith("."):
                    return block, sent
    raise AssertionError("no prose sentence in any block")


def test_finish_good_hallucinated_and_duplicate_groups(ctx) -> None:  # type: ignore[no-untyped-def]
    prep = _prepared(ctx)
    b1, good = _quotable(prep)
    output = (f"{good} Intel also sold 9,999 submarines to the Moon Authority in 2023.\n\n"
              f"Source:\nblock: {b1.ref}\n\nSource:\nsource: nowhere/invented.pdf\npage: 77\n\n"
              f"Source:\nblock: {b1.ref}\n")
    ans = ctx.answerer.finish(prep, _completion(output))
    assert [(c.status, c.block_ref) for c in ans.citations] == [("verified", b1.ref), ("unverified", None)]
    assert ans.citations[0].supports_answer is True and ans.citations[1].supports_answer is None
    assert [(s.text, s.label) for s in ans.sentences] == [
        (good, "supported"), ("Intel also sold 9,999 submarines to the Moon Authority in 2023.", "unsupported")]
    assert ans.sentences[0].quote and ans.sentences[0].cited is True
    assert ans.sentences[0].evidence is not None and ans.sentences[0].evidence.block_ref == b1.ref
    assert "9999" in ans.sentences[1].missing
    assert ans.grounding == "partial" and not ans.abstained and ans.replaced is None
    assert ans.evidence  # the passages that answer it are shown beside a partly supported answer


def test_finish_cited_block_that_supports_nothing_is_marked(ctx) -> None:  # type: ignore[no-untyped-def]
    prep = _prepared(ctx)
    b1, _ = _quotable(prep)
    ans = ctx.answerer.finish(prep, _completion(
        f"Quantum penguins run the treasury of Atlantis since 1850.\n\nSource:\nblock: {b1.ref}\n"))
    assert [(c.status, c.supports_answer) for c in ans.citations] == [("verified", False)]
    assert ans.grounding == "unsupported" and [s.label for s in ans.sentences] == ["unsupported"]
    # Its nearest (unsupporting) passage is shown; "cited" says whether the model cited that passage's block.
    ev = ans.sentences[0].evidence
    assert ev is not None and ans.sentences[0].cited == (ev.block_ref == b1.ref)


def test_finish_uncited_supported_answer_gets_inferred_citations(ctx) -> None:  # type: ignore[no-untyped-def]
    prep = _prepared(ctx)
    b1, good = _quotable(prep)
    ans = ctx.answerer.finish(prep, _completion(good))
    assert ans.grounding == "supported" and [s.cited for s in ans.sentences] == [None]
    assert [(c.status, c.block_ref, c.supports_answer) for c in ans.citations] == [("inferred", b1.ref, True)]


def test_unsupported_policies(ctx) -> None:  # type: ignore[no-untyped-def]
    prep = _prepared(ctx)
    made_up = _completion("The revenue was 1 GB of bananas.")
    answerer = ctx.answerer
    try:
        answerer.settings.unsupported = "abstain"
        ans = answerer.finish(prep, made_up)
        assert ans.answer == NOT_FOUND and ans.abstained and ans.grounding == "abstained"
        assert ans.replaced == "unsupported" and ans.citations == [] and ans.evidence
        assert ans.raw_output == made_up.text
        answerer.settings.unsupported = "quote"
        ans = answerer.finish(prep, made_up)
        assert ans.mode == "quote" and ans.grounding == "supported" and ans.replaced == "unsupported"
        assert ans.sentences and all(s.label == "supported" and s.quote for s in ans.sentences)
        answerer.settings.unsupported = "flag"
        ans = answerer.finish(prep, made_up)
        assert ans.answer == "The revenue was 1 GB of bananas." and ans.grounding == "unsupported"
        assert ans.evidence and ans.replaced is None
    finally:
        answerer.settings.unsupported = "flag"


def test_quote_mode_needs_no_model(ctx) -> None:  # type: ignore[no-untyped-def]
    from ctxqa.rag.answer import Answerer

    def no_model():  # type: ignore[no-untyped-def]
        raise AssertionError("quote mode loaded the model")

    answerer = Answerer(ctx.settings, ctx.retriever, no_model)
    ans = answerer.answer(QUESTION, AskOptions(k=4, mode="quote"))
    assert ans.mode == "quote" and ans.model == "quote" and ans.grounding == "supported"
    assert ans.citations and all(c.match == "quote" and c.chunk_ids for c in ans.citations)
    hits = {h.chunk_id: h for h in ans.hits}
    for s in ans.sentences:  # verbatim, and where the evidence says
        assert ans.answer[s.start:s.end] == s.text
        e = s.evidence
        assert e is not None and e.chunk_id in hits
        h = hits[e.chunk_id]
        assert h.text[e.char_start - h.char_start:e.char_end - h.char_start] == s.text
    two = answerer.answer([QUESTION, "How do I declare an optional query parameter?"], AskOptions(mode="quote"))
    assert two.answer.startswith(QUESTION + "\n") and "How do I declare an optional query parameter?\n" in two.answer
    none = answerer.answer("What is the airspeed velocity of an unladen swallow?", AskOptions(mode="quote"))
    assert none.abstained and none.answer == NOT_FOUND and none.grounding == "abstained"
