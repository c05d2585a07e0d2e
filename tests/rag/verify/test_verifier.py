"""The verifier with the real bundled embedder (paraphrase signal) and without it (words only)."""

from __future__ import annotations

import pytest

from ctxqa.rag.types import Hit
from ctxqa.rag.verify.verifier import Passage, Verifier, is_checkable, verdict

BACKUPS = ("Daily snapshots are kept for 35 days. Monthly snapshots are kept for 13 months, then deleted "
           "automatically. Restores are requested through the on-call engineer.")
WIDGETS = "The blue widget costs 42 euros and ships from Lyon within two days. The red widget is made in Porto."


@pytest.fixture(params=["words", "embedder"])
def verifier(request: pytest.FixtureRequest, embedder) -> Verifier:  # type: ignore[no-untyped-def]
    return Verifier(embedder.encode if request.param == "embedder" else None)


def test_the_issue_example_is_unsupported(verifier: Verifier) -> None:
    """The README's first answer, as the 135M model gave it: a question, then a "1 GB" nothing contains."""
    answer = ("What is the maximum amount of data that can be backed up? The maximum amount of data that can be "
              "backed up is 1 GB.")
    v = verifier.verify(answer, [Passage(BACKUPS, 0), Passage(WIDGETS, 1)])
    assert [s.label for s in v.sentences] == ["neutral", "unsupported"]
    assert v.sentences[1].missing[0] == "1"
    assert v.grounding == "unsupported"


def test_supported_partial_and_evidence_spans(verifier: Verifier) -> None:
    answer = "Daily snapshots are kept for 35 days. The blue widget ships from Lyon. It costs 99 euros."
    v = verifier.verify(answer, [Passage(BACKUPS, 0), Passage(WIDGETS, 1)])
    labels = [s.label for s in v.sentences]
    assert labels[0] == "supported" and labels[1] == "supported" and labels[2] == "unsupported"
    assert v.grounding == "partial"
    first = v.sentences[0]
    assert first.quote and first.evidence is not None and first.evidence.passage == 0
    assert BACKUPS[first.evidence.char_start:first.evidence.char_end] == "Daily snapshots are kept for 35 days."
    assert answer[first.start:first.end] == first.text
    assert v.sentences[1].evidence is not None and v.sentences[1].evidence.passage == 1


def test_an_answer_against_the_wrong_passage_is_unsupported(verifier: Verifier) -> None:
    v = verifier.verify("Monthly snapshots are kept for 13 months.", [Passage(WIDGETS, 0)])
    assert v.grounding == "unsupported"
    assert verifier.verify("Monthly snapshots are kept for 13 months.", [Passage(BACKUPS, 0)]).grounding == "supported"


def test_evidence_spans_are_document_offsets_for_chunks() -> None:
    hit = Hit(chunk_id=7, score=1.0, document_id=3, collection="c", ordinal=2, text=WIDGETS, char_start=1000,
              char_end=1000 + len(WIDGETS), source="widgets.md", page_start=4, page_end=4, heading_path=("Prices",))
    v = Verifier().verify("The red widget is made in Porto.", [Passage.of_hit(hit, 0, "B1")], cited={"B1"})
    s = v.sentences[0]
    assert s.label == "supported" and s.cited is True
    e = s.evidence
    assert e is not None and (e.chunk_id, e.document_id, e.block_ref, e.pages, e.source) == (7, 3, "B1", [4], "widgets.md")
    assert WIDGETS[e.char_start - 1000:e.char_end - 1000] == "The red widget is made in Porto."


def test_evidence_names_the_pages_of_its_span_not_of_the_chunk() -> None:
    """A chunk across a page break: each sentence's evidence names the page it is printed on (from the page spans
    stored with the document)."""
    red = 1000 + WIDGETS.index("The red")
    spans = [[0, 100], [100, 200], [200, 300], [300, red], [red, 3000]]
    hit = Hit(chunk_id=8, score=1.0, document_id=3, collection="c", ordinal=2, text=WIDGETS, char_start=1000,
              char_end=1000 + len(WIDGETS), source="widgets.pdf", page_start=4, page_end=5,
              metadata={"_page_spans": spans})
    v = Verifier().verify("The red widget is made in Porto. The blue widget costs 42 euros.",
                          [Passage.of_hit(hit, 0, "B1")])
    pages = [s.evidence.pages for s in v.sentences if s.evidence is not None]
    assert pages == [[5], [4]]
    # A document stored without page spans: the chunk's own pages, as before.
    old = Hit(**{**hit.__dict__, "metadata": {}})
    e = Verifier().verify("The red widget is made in Porto.", [Passage.of_hit(old, 0, "B1")]).sentences[0].evidence
    assert e is not None and e.pages == [4, 5]


def test_neutral_sentences_and_the_verdict() -> None:
    assert not is_checkable("Sure!") and not is_checkable("What is kept?") and not is_checkable("Here is the answer:")
    assert is_checkable("Backups are kept.")
    assert verdict(["neutral"]) == "unsupported"  # nothing checked: nothing supported
    assert verdict(["supported", "neutral"]) == "supported"
    assert verdict(["supported", "unsupported"]) == "partial"
    assert verdict(["partial", "unsupported"]) == "partial"
    assert verdict(["unsupported"]) == "unsupported"
    assert Verifier().verify("Anything at all.", []).grounding == "unsupported"
