"""Quote mode: an answer made of the retrieved passages' own sentences, which cannot say anything they do not.

    select_quotes(question, hits, embed, limit=3) -> list[Quote]

Candidate sentences are those of the retrieved chunks (each once, by its span in its document). The
`EMBEDDED` best by the question's words they contain and their chunk's retrieval rank are embedded (a few dozen
sentence vectors would cost more than the 50 ms a quote answer may take on top of retrieval), and ranked by how
well they answer the question: the embedding cosine of question and sentence, plus the share of the question's
content words it contains, plus a little for the chunk's retrieval rank. The best sentences above a
relevance floor are returned, best first; a sentence that only restates the question (all of its words are the
question's) is passed over. Nothing relevant: no quotes (the caller abstains).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ctxqa.rag.text import content_tokens
from ctxqa.rag.types import Evidence, Hit
from ctxqa.rag.verify.sentences import sentence_spans

Embed = Callable[[list[str]], np.ndarray]

# Relevance floor of a quoted sentence (cosine-dominated scale): below it the sentence is not an answer.
MIN_RELEVANCE = 0.30
# A further sentence is quoted only when it comes close to the best one.
RELATIVE_FLOOR = 0.85
MIN_WORDS = 4
EMBEDDED = 12


@dataclass(frozen=True)
class Quote:
    text: str
    relevance: float
    evidence: Evidence


def _candidates(hits: Sequence[Hit]) -> list[tuple[int, Hit, int, int]]:
    """(rank, hit, start, end) of every sentence of the hits, each document span once."""
    seen: set[tuple[int, int, int]] = set()
    out = []
    for rank, h in enumerate(hits):
        for a, b in sentence_spans(h.text):
            key = (h.document_id, h.char_start + a, h.char_start + b)
            if key in seen or len(h.text[a:b].split()) < MIN_WORDS:
                continue
            seen.add(key)
            out.append((rank, h, a, b))
    return out


def select_quotes(question: str, hits: Sequence[Hit], embed: Embed | None, *, limit: int = 3,
                  min_relevance: float = MIN_RELEVANCE) -> list[Quote]:
    cands = _candidates(hits)
    if not cands:
        return []
    qtoks = content_tokens(question)
    words = [len(qtoks & content_tokens(h.text[a:b])) / max(1, len(qtoks)) for _, h, a, b in cands]
    keep = sorted(range(len(cands)), key=lambda i: (-words[i], cands[i][0], i))[:EMBEDDED]
    keep.sort()
    cands = [cands[i] for i in keep]
    texts = [h.text[a:b] for _, h, a, b in cands]
    lexical = np.array([words[i] for i in keep])
    if embed is not None:
        vecs = embed([question, *texts])
        cos = vecs[1:] @ vecs[0]
        rel = 0.75 * cos + 0.25 * lexical
    else:
        rel = lexical
    rank_bonus = np.array([0.02 * (len(hits) - r) / max(1, len(hits)) for r, _, _, _ in cands])
    score = rel + rank_bonus
    order = np.argsort(-score, kind="stable")
    picked: list[Quote] = []
    top = None
    for j in order.tolist():
        r, h, a, b = cands[j]
        if rel[j] < min_relevance:
            break
        if content_tokens(texts[j]) <= qtoks:  # restates the question, answers nothing
            continue
        if top is None:
            top = float(score[j])
        elif score[j] < RELATIVE_FLOOR * top:
            break
        picked.append(Quote(texts[j], round(float(rel[j]), 4), Evidence(
            texts[j], h.char_start + a, h.char_start + b, chunk_id=h.chunk_id, document_id=h.document_id,
            source=h.source, title=h.title, pages=h.pages_between(h.char_start + a, h.char_start + b),
            heading_path=h.heading_path)))
        if len(picked) >= limit:
            break
    return picked
