"""How well a block's text supports answer sentences (word overlap), citation support scores, and attribution
of an uncited answer (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ctxqa.rag.citations.abstain import says_unknown
from ctxqa.rag.citations.blocks import block_of, citation_for
from ctxqa.rag.text import content_tokens, sentences
from ctxqa.rag.types import Block, Citation


def block_tokens(block: Block) -> set[str]:
    # The metadata counts as evidence too ("Who wrote it?" -> the author value), the block ref does not.
    meta = " ".join(v for k, v in block.context.items() if k != "block")
    return content_tokens(block.text + " " + meta)


def sentence_support(sentence: str, block_tokens: set[str]) -> float:
    toks = content_tokens(sentence)
    return len(toks & block_tokens) / len(toks) if toks else 0.0


def support(answer_text: str, block: Block) -> float:
    """Support of a block for an answer: the best over answer sentences of the fraction of the sentence's
    content tokens (see `content_tokens`) found in the block's text or metadata. In [0, 1].

    Max-over-sentences (rather than over the whole answer) lets each of several cited blocks be credited for
    the part of a multi-source answer it supports.
    """
    btoks = block_tokens(block)
    return max((sentence_support(s, btoks) for s in sentences(answer_text)), default=0.0)



def verify(answer_text: str, citations: Sequence[Citation], blocks: Sequence[Block]) -> list[Citation]:
    """Copies of `citations` with `support` set; statuses are left alone (the caller decides what low support
    means).

    support = max over the answer's sentences of |content(sentence) & content(block)| / |content(sentence)|, where
    content() is the set of lower-cased word tokens minus stopwords, lightly stemmed (`content_tokens`), and the
    block side includes its metadata values. An unverified citation (no block in the prompt) gets 0.0.
    """
    out = []
    for cit in citations:
        block = block_of(cit, blocks) if cit.status != "unverified" else None
        out.append(replace(cit, support=round(support(answer_text, block), 4) if block else 0.0))
    return out


def infer(answer_text: str, blocks: Sequence[Block], min_support: float = 0.6) -> list[Citation]:
    """Attribute an uncited answer: each sentence with at least two content tokens goes to the block that
    supports it best, if that support reaches `min_support`. One "inferred" citation per block, in prompt order,
    with the best sentence support as its `support`. Nothing is inferred for an "I don't know" answer."""
    if not blocks or says_unknown(answer_text):
        return []
    best: dict[str, float] = {}
    for sentence in sentences(answer_text):
        if len(content_tokens(sentence)) < 2:
            continue
        scored = [(sentence_support(sentence, block_tokens(b)), -i, b) for i, b in enumerate(blocks)]
        support, _, block = max(scored, key=lambda t: (t[0], t[1]))
        if support >= min_support:
            best[block.ref] = max(best.get(block.ref, 0.0), support)
    out = []
    for block in blocks:
        if block.ref in best:
            cit = citation_for({}, block, "inferred")
            out.append(replace(cit, status="inferred", raw={}, match=None, support=round(best[block.ref], 4)))
    return out
