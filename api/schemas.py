"""Request and response models of the HTTP API.

Responses are built from the domain dataclasses in `rag.types` (and from plain values read inside a database
session), never from ORM rows, so the wire format is stable and nothing internal leaks (file paths on the server,
embeddings, the `_added` bookkeeping in document metadata).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ctxqa.rag.retrieve.filters import Filters
from ctxqa.rag.types import Answer, Citation, Hit

# Hard ceilings of the schema; the configurable limits (Settings.max_question_chars, max_top_k,
# max_new_tokens_limit) are checked per request and are usually lower.
MAX_QUESTIONS = 8
SCHEMA_MAX_TEXT = 100_000
SCHEMA_MAX_K = 1000
SCHEMA_MAX_NEW_TOKENS = 1_000_000

Mode = Literal["dense", "lexical", "hybrid"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiFilters(Filters):
    """Metadata filters (all must hold), passed to retrieval as given: `source_prefix`, `source_glob`,
    `document_ids`, `date_from`/`date_to` (inclusive, the document's date) and `metadata` (key = value, a list
    value means any of)."""

    document_ids: tuple[Annotated[int, Field(ge=1, le=2**31 - 1)], ...] | None = Field(
        None, max_length=10_000, description="Only these documents.")


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str = Field(description="Dotted location of the bad input, e.g. 'top_k' or 'questions.1'.")
    message: str
    type: str | None = None


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable error code, e.g. 'validation_error', 'not_found'.")
    message: str
    field: str | None = Field(None, description="The request field at fault, when there is one.")
    fields: list[FieldError] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---------------------------------------------------------------------------------------------------------------
# Hits, citations, answers
# ---------------------------------------------------------------------------------------------------------------


def public_metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (meta or {}).items() if not str(k).startswith("_")}


class HitOut(BaseModel):
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
    def from_hit(cls, h: Hit) -> HitOut:
        return cls(chunk_id=h.chunk_id, document_id=h.document_id, collection=h.collection, score=float(h.score),
                   scores={k: float(v) for k, v in (h.scores or {}).items()}, source=h.source, title=h.title,
                   date=h.date, url=h.url, pages=h.pages, heading_path=list(h.heading_path), ordinal=h.ordinal,
                   char_start=h.char_start, char_end=h.char_end, text=h.text,
                   metadata=public_metadata(h.metadata))


class CitationOut(BaseModel):
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
    def from_citation(cls, c: Citation) -> CitationOut:
        return cls(status=c.status, document_id=c.document_id, source=c.source, title=c.title, pages=list(c.pages),
                   chunk_ids=list(c.chunk_ids), char_start=c.char_start, char_end=c.char_end, block=c.block_ref,
                   match=c.match, support=round(float(c.support), 6), raw=dict(c.raw))


class UsageOut(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AskRequest(_Model):
    question: str | list[str] = Field(
        description="One question, or several answered together (at most 8).",
        examples=["How do I declare a query parameter?"])
    collection: str | None = Field(None, min_length=1, max_length=200, description="Default: the configured default collection.")
    top_k: int | None = Field(None, ge=1, le=SCHEMA_MAX_K, description="Chunks to retrieve (limit: max_top_k).")
    mode: Mode | None = Field(None, description="Retrieval mode; default from the settings.")
    filters: ApiFilters | None = Field(None, description="Metadata filters, passed to retrieval as given.")
    max_new_tokens: int | None = Field(None, ge=1, le=SCHEMA_MAX_NEW_TOKENS,
                                       description="Generation budget (limit: max_new_tokens_limit).")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy (deterministic).")
    stream: bool = Field(False, description="Server-Sent Events: sources, token deltas, then the final answer.")

    def question_list(self) -> list[str]:
        return [self.question] if isinstance(self.question, str) else list(self.question)


class AskResponse(BaseModel):
    id: int | None = Field(None, description="Answer log id: GET /v1/answers/{id}.")
    question: str
    answer: str
    abstained: bool
    citations: list[CitationOut]
    chunks: list[HitOut] = Field(description="Retrieved chunks with scores, best first.")
    blocks_used: int
    blocks_dropped: int
    model: str
    usage: UsageOut
    timings: dict[str, float]
    collection: str

    @classmethod
    def from_answer(cls, a: Answer, collection: str, answer_id: int | None = None) -> AskResponse:
        return cls(id=answer_id, question=a.question, answer=a.answer, abstained=a.abstained,
                   citations=[CitationOut.from_citation(c) for c in a.citations],
                   chunks=[HitOut.from_hit(h) for h in a.hits], blocks_used=a.blocks_used,
                   blocks_dropped=a.blocks_dropped, model=a.model,
                   usage=UsageOut(prompt_tokens=a.usage.prompt_tokens, completion_tokens=a.usage.completion_tokens,
                                  total_tokens=a.usage.prompt_tokens + a.usage.completion_tokens),
                   timings={k: round(float(v), 6) for k, v in a.timings.items()}, collection=collection)


class SourcesEvent(BaseModel):
    """SSE `event: sources`."""

    collection: str
    chunks: list[HitOut]


class DeltaEvent(BaseModel):
    """SSE `event: delta`."""

    text: str


class SearchRequest(_Model):
    query: str = Field(examples=["path parameters"])
    collection: str | None = Field(None, min_length=1, max_length=200)
    top_k: int | None = Field(None, ge=1, le=SCHEMA_MAX_K)
    mode: Mode | None = None
    filters: ApiFilters | None = None


class SearchResponse(BaseModel):
    query: str
    collection: str
    hits: list[HitOut]
    timings: dict[str, float]


# ---------------------------------------------------------------------------------------------------------------
# Documents and collections
# ---------------------------------------------------------------------------------------------------------------


class DocumentOut(BaseModel):
    id: int
    collection: str
    source: str
    title: str | None = None
    media_type: str
    size: int
    sha256: str
    pages: int | None = Field(None, description="Page count (PDF), else null.")
    empty_pages: int = 0
    chunk_count: int
    status: str
    error: str | None = None
    ingested_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ChunkOut(BaseModel):
    id: int
    ordinal: int
    pages: list[int]
    heading_path: list[str]
    token_count: int
    char_start: int
    char_end: int
    text: str


class DocumentDetail(DocumentOut):
    chunks: list[ChunkOut] | None = Field(None, description="Present with ?include_chunks=true.")


class DocumentList(BaseModel):
    total: int
    offset: int
    limit: int
    documents: list[DocumentOut]


class UploadResult(BaseModel):
    filename: str = Field(description="The uploaded file name, sanitised; it becomes the document's source.")
    status: str = Field(description="added | updated | unchanged | skipped | failed")
    reason: str | None = None
    document_id: int | None = None
    media_type: str | None = Field(None, description="Type sniffed from the content (the client's is ignored).")
    size: int = 0
    pages: int = 0
    chunks: int = 0


class UploadResponse(BaseModel):
    collection: str
    results: list[UploadResult]
    summary: dict[str, int]
    timings: dict[str, float]


class CollectionOut(BaseModel):
    name: str
    embedding_model: str
    embedding_dim: int
    index_type: str
    documents: int
    chunks: int
    created_at: datetime | None = None


class CollectionCreate(_Model):
    name: str = Field(min_length=1, max_length=200, examples=["handbook"])
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = "auto"


class CollectionList(BaseModel):
    collections: list[CollectionOut]


class Deleted(BaseModel):
    deleted: bool = True
    id: int | None = None
    name: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Answer log, health
# ---------------------------------------------------------------------------------------------------------------


class AnswerLogOut(BaseModel):
    id: int
    created_at: datetime | None = None
    collection: str | None = None
    question: str
    answer: str
    abstained: bool
    citations: list[dict[str, Any]]
    model: str
    usage: dict[str, Any]
    timings: dict[str, Any]
    key_name: str | None = None


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]
    detail: dict[str, str] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible chat completions
# ---------------------------------------------------------------------------------------------------------------


class ChatContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[ChatContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text or "" for p in self.content if p.type in ("text", "input_text"))


class ChatRequest(BaseModel):
    # OpenAI clients send fields ctxqa does not use (top_p, n, user, ...): accepted and ignored.
    model_config = ConfigDict(extra="allow")
    model: str | None = Field(None, max_length=500, description="Accepted for compatibility; ctxqa answers with "
                              "its configured model.")
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    stream: bool | None = False
    max_tokens: int | None = Field(None, ge=1, le=SCHEMA_MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=SCHEMA_MAX_NEW_TOKENS)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    # ctxqa extensions
    collection: str | None = Field(None, min_length=1, max_length=200)
    top_k: int | None = Field(None, ge=1, le=SCHEMA_MAX_K)
    filters: ApiFilters | None = None
    mode: Mode | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    finish_reason: str = "stop"


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageOut
    citations: list[CitationOut] = Field(description="ctxqa extension: the answer's resolved citations.")
    answer_id: int | None = Field(None, description="ctxqa extension: GET /v1/answers/{id}.")
