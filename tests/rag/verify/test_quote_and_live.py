from __future__ import annotations

from ctxqa.rag.types import Hit
from ctxqa.rag.verify.live import LiveSentences
from ctxqa.rag.verify.quote import select_quotes
from ctxqa.rag.verify.verifier import Passage, Verifier

BACKUPS = ("# Backups\n\nBackups run every night at 02:00 UTC. Daily snapshots are kept for 35 days. Monthly "
           "snapshots are kept for 13 months, then deleted automatically.")
ONCALL = "The on-call engineer answers pages within 15 minutes. Rotations change every Monday at 09:00."


def hit(text: str, chunk_id: int, start: int = 0) -> Hit:
    return Hit(chunk_id=chunk_id, score=1.0, document_id=chunk_id, collection="c", ordinal=0, text=text,
               char_start=start, char_end=start + len(text), source=f"doc{chunk_id}.md", page_start=2, page_end=2)


def test_quotes_are_verbatim_sentences_that_answer(embedder) -> None:  # type: ignore[no-untyped-def]
    hits = [hit(ONCALL, 1), hit(BACKUPS, 2, start=500)]
    quotes = select_quotes("How long are daily backups kept?", hits, embedder.encode)
    assert quotes and quotes[0].text == "Daily snapshots are kept for 35 days."
    e = quotes[0].evidence
    assert (e.chunk_id, e.document_id, e.pages) == (2, 2, [2])
    assert BACKUPS[e.char_start - 500:e.char_end - 500] == quotes[0].text
    assert all(q.evidence.chunk_id == 2 for q in quotes)  # nothing from the on-call page


def test_no_quotes_when_nothing_answers(embedder) -> None:  # type: ignore[no-untyped-def]
    assert select_quotes("What is the capital of Mongolia?", [hit(ONCALL, 1)], embedder.encode) == []
    assert select_quotes("anything", [], embedder.encode) == []


def test_live_sentences_match_the_final_verification(embedder) -> None:  # type: ignore[no-untyped-def]
    v = Verifier(embedder.encode)
    index = v.index([Passage(BACKUPS, 0, block_ref="B1")])
    raw = ("Daily snapshots are kept for 35 days. Monthly snapshots are kept for 13 months. They cost 5 euros.\n"
           "Source:\nblock: B1")
    live = LiveSentences(v, index)
    streamed = []
    for i in range(0, len(raw), 7):  # token-sized deltas
        streamed.extend(live.feed(raw[i:i + 7]))
    answer = "Daily snapshots are kept for 35 days. Monthly snapshots are kept for 13 months. They cost 5 euros."
    final = live.reuse(v.verify(answer, index, {"B1"}).sentences, {"B1"})
    # The stream checked every sentence but the last before the end, each piece exactly the answer's text.
    assert "".join(piece for piece, _ in streamed) == answer[: streamed[-1][1].end]
    assert [c.text for _, c in streamed] == [s.text for s in final[: len(streamed)]]
    assert [s.label for s in final] == ["supported", "supported", "unsupported"]
    assert all(s.cited for s in final[:2])
    assert [c.label for _, c in streamed] == [s.label for s in final[: len(streamed)]]
