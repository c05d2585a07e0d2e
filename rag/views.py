"""JSON views of the domain objects (hits, citations, answers, search results), defined once and used by both the
CLI's `--json` and the HTTP API, plus the one plain-text rendering of an answer's sources list.

Views are built from the dataclasses in `ctxqa.rag.types`, never from ORM rows, so the wire format is stable and
nothing internal leaks (file paths on the server, embeddings, `_`-prefixed bookkeeping in document metadata).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ctxqa.rag.types import Answer, Citation, Evidence, Hit, SentenceCheck


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
    title_source: str | None = Field(None, description="Where the title came from: metadata, first page, file name.")
    date_source: str | None = Field(None, description="Where the date came from: metadata, first page, file name, "
                                                      "file date.")
    period: str | None = Field(None, description="The quarter a report covers, e.g. \"2023 Q2\".")
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
                   date=h.date, url=h.url, title_source=h.title_source, date_source=h.date_source, period=h.period,
                   pages=h.pages, heading_path=list(h.heading_path), ordinal=h.ordinal,
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
    support: float = Field(0.0, description="0..1: the best support the cited chunk gives a sentence of the answer.")
    supports_answer: bool | None = Field(None, description=(
        "Whether the cited chunk supports any sentence of the answer; false: the model cited a passage that "
        "backs none of what it said."))
    raw: dict[str, str] = Field(default_factory=dict, description="What the model wrote for this source.")

    @classmethod
    def from_citation(cls, c: Citation) -> CitationView:
        return cls(status=c.status, document_id=c.document_id, source=c.source, title=c.title, pages=list(c.pages),
                   chunk_ids=list(c.chunk_ids), char_start=c.char_start, char_end=c.char_end, block=c.block_ref,
                   match=c.match, support=round(float(c.support), 6), supports_answer=c.supports_answer,
                   raw=dict(c.raw))


class EvidenceView(BaseModel):
    """Where a sentence's support is: the exact span to highlight."""

    text: str
    char_start: int = Field(description="Start of the span in the document's text (or in the given passage).")
    char_end: int
    passage: int | None = Field(None, description="Index of the passage (in the prompt, or in the request).")
    block: str | None = None
    chunk_id: int | None = None
    document_id: int | None = None
    source: str | None = None
    title: str | None = None
    pages: list[int] = Field(default_factory=list)
    heading_path: list[str] = Field(default_factory=list)

    @classmethod
    def from_evidence(cls, e: Evidence) -> EvidenceView:
        return cls(text=e.text, char_start=e.char_start, char_end=e.char_end, passage=e.passage, block=e.block_ref,
                   chunk_id=e.chunk_id, document_id=e.document_id, source=e.source, title=e.title,
                   pages=list(e.pages), heading_path=list(e.heading_path))


class SentenceView(BaseModel):
    text: str
    start: int = Field(description="Span of the sentence in the answer text.")
    end: int
    label: Literal["supported", "partial", "unsupported", "neutral"] = Field(description=(
        "supported / partial / unsupported by the best evidence; neutral: nothing to check (a question, 'Sure.')."))
    score: float = Field(description="0..1 support of the best evidence.")
    quote: bool = Field(False, description="A near-verbatim copy of its evidence.")
    missing: list[str] = Field(default_factory=list, description="Numbers and names no passage contains.")
    cited: bool | None = Field(None, description="Whether the model cited the evidence's block (null: it cited nothing).")
    evidence: EvidenceView | None = None

    @classmethod
    def from_check(cls, c: SentenceCheck) -> SentenceView:
        return cls(text=c.text, start=c.start, end=c.end, label=c.label, score=round(float(c.score), 4),
                   quote=c.quote, missing=list(c.missing), cited=c.cited,
                   evidence=EvidenceView.from_evidence(c.evidence) if c.evidence is not None else None)


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
    grounding: Literal["supported", "partial", "unsupported", "abstained"] = Field(description=(
        "The verdict: supported (every checked sentence is), partial, unsupported (none is), or abstained."))
    sentences: list[SentenceView] = Field(default_factory=list, description="Each sentence with its evidence.")
    evidence: list[SentenceView] = Field(default_factory=list, description=(
        "When the answer is not supported: the passages that best answer the question (quote mode's choice)."))
    mode: Literal["generate", "quote"] = "generate"
    replaced: Literal["supported", "partial", "unsupported", "abstained"] | None = Field(None, description=(
        "Set when the unsupported-answer policy replaced the model's answer: the verdict of what it said."))

    @classmethod
    def from_answer(cls, a: Answer, collection: str, answer_id: int | None = None) -> AnswerView:
        return cls(id=answer_id, question=a.question, answer=a.answer, abstained=a.abstained,
                   citations=[CitationView.from_citation(c) for c in a.citations],
                   chunks=[HitView.from_hit(h) for h in a.hits], blocks_used=a.blocks_used,
                   blocks_dropped=a.blocks_dropped, model=a.model,
                   usage=UsageView(prompt_tokens=a.usage.prompt_tokens, completion_tokens=a.usage.completion_tokens,
                                  total_tokens=a.usage.prompt_tokens + a.usage.completion_tokens),
                   timings={k: round(float(v), 6) for k, v in a.timings.items()}, collection=collection,
                   raw_output=a.raw_output, grounding=a.grounding,
                   sentences=[SentenceView.from_check(c) for c in a.sentences],
                   evidence=[SentenceView.from_check(c) for c in a.evidence], mode=a.mode, replaced=a.replaced)


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
    flag = " [supports none of the answer]" if c.supports_answer is False else ""
    return f"[{i}] {where}{pages_label(list(c.pages))}{title}{_STATUS_LABEL.get(c.status, '')}{flag}"


UNSUPPORTED_MARK = "[unsupported]"


def marked_answer(a: Answer) -> str:
    """The answer text with every unsupported sentence followed by a visible "[unsupported]" (and a partly
    supported one by "[partly supported]"): what a client that shows plain text must show."""
    out, pos = [], 0
    for s in a.sentences:
        if s.label in ("unsupported", "partial"):
            out.append(a.answer[pos:s.end])
            out.append(f" {UNSUPPORTED_MARK}" if s.label == "unsupported" else " [partly supported]")
            pos = s.end
    out.append(a.answer[pos:])
    return "".join(out)


def evidence_text(a: Answer) -> str:
    """The passages that answer the question, under an answer that is not supported ("" when none)."""
    if not a.evidence or a.grounding == "supported":
        return ""
    lines = ["Passages that answer the question:"]
    for s in a.evidence:
        e = s.evidence
        where = (e.source or "?") + pages_label(list(e.pages)) if e is not None else "?"
        lines.append(f'- "{s.text}" ({where})')
    return "\n".join(lines)


def sources_text(citations: list[Citation]) -> str:
    """The sources list under an answer ("Sources:" and one line per citation), or "" when nothing is cited."""
    if not citations:
        return ""
    return "Sources:\n" + "\n".join(source_line(i, c) for i, c in enumerate(citations, 1))
