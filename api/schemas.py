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
from ctxqa.rag.types import RetrievalMode
from ctxqa.rag.views import CitationView, HitView, SentenceView, UsageView

# Hard ceilings of the schema; the configurable limits (Settings.max_question_chars, max_top_k,
# max_new_tokens_limit) are checked per request and are usually lower.
MAX_QUESTIONS = 8
SCHEMA_MAX_TEXT = 100_000
SCHEMA_MAX_K = 1000
SCHEMA_MAX_NEW_TOKENS = 1_000_000

Mode = RetrievalMode
AnswerMode = Literal["generate", "quote"]


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


class AskRequest(_Model):
    question: str | list[str] = Field(
        description="One question, or several answered together (at most 8).",
        examples=["How do I declare a query parameter?"])
    collection: str | None = Field(None, min_length=1, max_length=200, description="Default: the configured default collection.")
    top_k: int | None = Field(None, ge=1, le=SCHEMA_MAX_K, description="Chunks to retrieve (limit: max_top_k).")
    mode: AnswerMode | None = Field(None, description=(
        "generate: the model answers (checked sentence by sentence); quote: the documents' own sentences that "
        "best answer the question, verbatim, no model. Default: quote when the backend is 'quote'."))
    retrieval: Mode | None = Field(None, description="Retrieval mode: dense, lexical or hybrid; default from the settings.")
    filters: ApiFilters | None = Field(None, description="Metadata filters, passed to retrieval as given.")
    max_new_tokens: int | None = Field(None, ge=1, le=SCHEMA_MAX_NEW_TOKENS,
                                       description="Generation budget (limit: max_new_tokens_limit).")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy (deterministic).")
    stream: bool = Field(False, description="Server-Sent Events: sources, token deltas, then the final answer.")

    def question_list(self) -> list[str]:
        return [self.question] if isinstance(self.question, str) else list(self.question)


class VerifyRequest(_Model):
    answer: str = Field(description="The answer to check (any text: a model's, a person's).",
                        examples=["Daily snapshots are kept for 35 days."])
    passages: list[Annotated[str, Field(max_length=SCHEMA_MAX_TEXT)]] | None = Field(
        None, max_length=64, description="Check against these texts. Or give `question` (and `collection`).")
    question: str | None = Field(None, description="Check against what this question retrieves.")
    collection: str | None = Field(None, min_length=1, max_length=200)
    top_k: int | None = Field(None, ge=1, le=SCHEMA_MAX_K)
    filters: ApiFilters | None = None


class VerifyResponse(BaseModel):
    grounding: Literal["supported", "partial", "unsupported", "abstained"]
    sentences: list[SentenceView]
    chunks: list[HitView] = Field(default_factory=list, description="The retrieved chunks checked against "
                                                                   "(question form only).")
    collection: str | None = None


class SourcesEvent(BaseModel):
    """SSE `event: sources`."""

    collection: str
    chunks: list[HitView]


class DeltaEvent(BaseModel):
    """SSE `event: delta`."""

    text: str


class SentenceEvent(BaseModel):
    """SSE `event: sentence`: a sentence of the answer, checked as soon as it was complete."""

    text: str = Field(description="The answer text since the previous sentence event, up to this sentence's end.")
    sentence: SentenceView


class SearchRequest(_Model):
    query: str = Field(examples=["path parameters"])
    collection: str | None = Field(None, min_length=1, max_length=200)
    top_k: int | None = Field(None, ge=1, le=SCHEMA_MAX_K)
    mode: Mode | None = None
    filters: ApiFilters | None = None


# ---------------------------------------------------------------------------------------------------------------
# Documents and collections
# ---------------------------------------------------------------------------------------------------------------


class DocumentOut(BaseModel):
    id: int
    collection: str
    source: str
    title: str | None = None
    title_source: str | None = Field(None, description="Where the title came from: metadata, first page, file name.")
    date: str | None = Field(None, description="The document's date (ISO): a report's period end, a publication date.")
    date_source: str | None = Field(None, description="Where the date came from: metadata, first page, file name, "
                                                      "file date.")
    period: str | None = Field(None, description="The quarter a report covers, e.g. \"2023 Q2\".")
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
    grounding: Literal["supported", "partial", "unsupported", "abstained"] | None = Field(
        None, description="The verdict given with the answer (null for answers logged before verification).")
    sentences: list[dict[str, Any]] = Field(default_factory=list, description="Each sentence's label and evidence.")
    mode: Literal["generate", "quote"] | None = None


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
    mode: AnswerMode | None = Field(None, description="generate or quote (see /v1/ask).")
    retrieval: Mode | None = Field(None, description="dense, lexical or hybrid.")


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
    usage: UsageView
    citations: list[CitationView] = Field(description="ctxqa extension: the answer's resolved citations.")
    answer_id: int | None = Field(None, description="ctxqa extension: GET /v1/answers/{id}.")
    grounding: Literal["supported", "partial", "unsupported", "abstained"] = Field(
        description="ctxqa extension: the verdict (unsupported sentences are also marked in the content).")


# ---------------------------------------------------------------------------------------------------------------
# The evidence viewer: where a span lies on a PDF page, and the text around a span
# ---------------------------------------------------------------------------------------------------------------


class BoxOut(BaseModel):
    """A rectangle as fractions of the displayed page (0..1, origin top left): lay it over an image of any size."""

    x0: float
    y0: float
    x1: float
    y1: float


class PageBoxesOut(BaseModel):
    document_id: int
    page: int
    page_count: int
    width: float = Field(description="The page's width in PDF points (1/72 inch), as displayed.")
    height: float
    start: int = Field(description="The span asked for, in the document's text.")
    end: int
    span_pages: list[int] = Field(description="Every page the span touches.")
    boxes: list[BoxOut] = Field(description="One box per line run of the span's characters on this page.")
    method: Literal["offsets", "search", "none"] = Field(description=(
        "offsets: aligned with the text as ingested; search: found by its characters (the text layer differs from "
        "the ingested text); none: the span is not on this page or has no visible characters here."))
    text: str = Field(description="The part of the span that lies on this page.")
    image: str = Field(description="The page image's URL (GET it with the same key).")


class SpanTextOut(BaseModel):
    document_id: int
    source: str
    title: str | None = None
    media_type: str
    start: int
    end: int
    text: str = Field(description="The span itself.")
    before: str = Field(description="Up to `context` characters of the document before the span.")
    after: str = Field(description="Up to `context` characters after it.")
    chunk_id: int | None = Field(None, description="The chunk that holds most of the span.")
    heading_path: list[str] = Field(default_factory=list, description="Headings above the span.")
    pages: list[int] = Field(default_factory=list, description="Pages the span touches (PDF).")
