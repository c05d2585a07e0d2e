"""JSON views of the domain objects (hits, citations, answers, search results), defined once and used by both the
CLI's `--json` and the HTTP API, plus the one plain-text rendering of an answer's sources list.

Views are built from the dataclasses in `ctxqa.rag.types`, never from ORM rows, so the wire format is stable and
nothing internal leaks (file paths on the server, embeddings, `_`-prefixed bookkeeping in document metadata).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ctxqa.rag.types import Answer, Citation, Hit


def public_metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (meta or {}).items() if not str(k).startswith("_")}


class HitView(BaseModel):
    chunk_id: int
    document_id: int
    collection: str
    score: float
    scores: dict[str, float] = Field(default_factory=dict, description="Per-retriever scores and ranks.")
    source: str
    title: str | None = None
    date: str | None = None
    url: str | None = None
    pages: list[int] = Field(default_factory=list)
    heading_path: list[str] = Field(default_factory=list)
    ordinal: int
    char_start: int
    char_end: int
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_hit(cls, h: Hit) -> HitView:
        return cls(chunk_id=h.chunk_id, document_id=h.document_id, collection=h.collection, score=float(h.score),
                   scores={k: float(v) for k, v in (h.scores or {}).items()}, source=h.source, title=h.title,
                   date=h.date, url=h.url, pages=h.pages, heading_path=list(h.heading_path), ordinal=h.ordinal,
                   char_start=h.char_start, char_end=h.char_end, text=h.text,
                   metadata=public_metadata(h.metadata))


class CitationView(BaseModel):
    status: Literal["verified", "unverified", "inferred"] = Field(
        description="verified: the model cited it and it matches a provided chunk; unverified: it matches "
                    "nothing that was provided; inferred: ctxqa attributed it (the model cited nothing).")
    document_id: int | None = None
    source: str | None = None
    title: str | None = None
    pages: list[int] = Field(default_factory=list)
    chunk_ids: list[int] = Field(default_factory=list)
    char_start: int | None = None
    char_end: int | None = None
    block: str | None = Field(None, description="The prompt block the citation resolved to (B1, B2, ...).")
    match: str | None = None
    support: float = Field(0.0, description="0..1: how well the cited chunk supports the answer text.")
    raw: dict[str, str] = Field(default_factory=dict, description="What the model wrote for this source.")

    @classmethod
    def from_citation(cls, c: Citation) -> CitationView:
        return cls(status=c.status, document_id=c.document_id, source=c.source, title=c.title, pages=list(c.pages),
                   chunk_ids=list(c.chunk_ids), char_start=c.char_start, char_end=c.char_end, block=c.block_ref,
                   match=c.match, support=round(float(c.support), 6), raw=dict(c.raw))


class UsageView(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AnswerView(BaseModel):
    id: int | None = Field(None, description="Answer log id: GET /v1/answers/{id}.")
    question: str
    answer: str
    abstained: bool
    citations: list[CitationView]
    chunks: list[HitView] = Field(description="Retrieved chunks with scores, best first.")
    blocks_used: int
    blocks_dropped: int
    model: str
    usage: UsageView
    timings: dict[str, float]
    collection: str
    raw_output: str = Field("", description="The model's text as generated (before the sources were parsed off).")

    @classmethod
    def from_answer(cls, a: Answer, collection: str, answer_id: int | None = None) -> AnswerView:
        return cls(id=answer_id, question=a.question, answer=a.answer, abstained=a.abstained,
                   citations=[CitationView.from_citation(c) for c in a.citations],
                   chunks=[HitView.from_hit(h) for h in a.hits], blocks_used=a.blocks_used,
                   blocks_dropped=a.blocks_dropped, model=a.model,
                   usage=UsageView(prompt_tokens=a.usage.prompt_tokens, completion_tokens=a.usage.completion_tokens,
                                  total_tokens=a.usage.prompt_tokens + a.usage.completion_tokens),
                   timings={k: round(float(v), 6) for k, v in a.timings.items()}, collection=collection,
                   raw_output=a.raw_output)


class SearchView(BaseModel):
    query: str
    collection: str
    hits: list[HitView]
    timings: dict[str, float]

    @classmethod
    def from_result(cls, query: str, collection: str, hits: list[Hit], timings: dict[str, float]) -> SearchView:
        return cls(query=query, collection=collection, hits=[HitView.from_hit(h) for h in hits],
                   timings={k: round(float(v), 6) for k, v in timings.items()})


def pages_label(pages: list[int]) -> str:
    """", p. 3" / ", pp. 3-5" / "" """
    if not pages:
        return ""
    return f", p. {pages[0]}" if len(pages) == 1 else f", pp. {pages[0]}-{pages[-1]}"


_STATUS_LABEL = {"verified": "", "inferred": " [inferred]", "unverified": " [unverified: matches no provided block]"}


def source_line(i: int, c: Citation) -> str:
    """One numbered entry of the sources list: "[1] docs/backups.md, p. 3 — Backups [inferred]"."""
    where = c.source or ", ".join(f"{k}: {v}" for k, v in c.raw.items()) or "?"
    title = f" — {c.title}" if c.title and c.title != c.source else ""
    return f"[{i}] {where}{pages_label(list(c.pages))}{title}{_STATUS_LABEL.get(c.status, '')}"


def sources_text(citations: list[Citation]) -> str:
    """The sources list under an answer ("Sources:" and one line per citation), or "" when nothing is cited."""
    if not citations:
        return ""
    return "Sources:\n" + "\n".join(source_line(i, c) for i, c in enumerate(citations, 1))
