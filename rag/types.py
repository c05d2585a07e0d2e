"""Domain objects shared by ingestion, the query path and the API.

Small dataclasses with no behaviour beyond convenience accessors: every step of the data flow takes and
returns these, and the API converts them to its own schemas rather than leaking ORM rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ctxqa.rag.spans import pages_of

# Retrieval modes and hybrid fusion methods: declared once, used by Settings, search options, the CLI and the API.
RetrievalMode = Literal["dense", "lexical", "hybrid"]
Fusion = Literal["rrf", "weighted"]
MODES: tuple[str, ...] = get_args(RetrievalMode)
FUSIONS: tuple[str, ...] = get_args(Fusion)

# ---------------------------------------------------------------------------------------------------------------
# Ingestion side
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageSpan:
    """Characters [start, end) of the extracted document text came from 1-based page `page`."""

    page: int
    start: int
    end: int


@dataclass(frozen=True)
class Section:
    """Characters [start, end) of the extracted text sit under the heading path `headings`.

    `headings` is the full path from the top, e.g. ("Tutorial", "Query Parameters", "Defaults").
    A heading's own line belongs to its section.
    """

    headings: tuple[str, ...]
    start: int
    end: int


@dataclass
class LoadedDocument:
    """What a loader extracts from one file.

    `text` is the full extracted text; `pages` (PDF only) and `sections` map character ranges back to
    pages and headings. `metadata` holds what the document says about itself (front matter, HTML <title>,
    PDF info): title, date, url, author... The pipeline adds source/sidecar/CLI metadata on top.
    """

    text: str
    media_type: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    pages: list[PageSpan] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    page_count: int | None = None
    empty_pages: list[int] = field(default_factory=list)  # 1-based pages with no text layer
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk as the chunker produced it: `text == document_text[char_start:char_end]`."""

    ordinal: int
    text: str
    char_start: int
    char_end: int
    token_count: int
    page_start: int | None = None
    page_end: int | None = None
    heading_path: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------------------
# Query side
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Hit:
    """One retrieved chunk with everything the prompt and the citation mapper need."""

    chunk_id: int
    score: float
    document_id: int
    collection: str
    ordinal: int
    text: str
    char_start: int
    char_end: int
    source: str
    title: str | None = None
    date: str | None = None
    url: str | None = None
    page_start: int | None = None
    page_end: int | None = None
    heading_path: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)  # document metadata merged with chunk metadata
    title_source: str | None = None  # where the title came from: metadata, first page, file name
    date_source: str | None = None  # where the date came from: metadata, first page, file name, file date
    period: str | None = None  # the quarter a report covers ("2023 Q2")
    # Per-retriever evidence (e.g. {"dense": 0.61, "lexical": 12.3, "dense_rank": 1, "lexical_rank": 4}).
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def pages(self) -> list[int]:
        if self.page_start is None:
            return []
        end = self.page_end if self.page_end is not None else self.page_start
        return list(range(self.page_start, end + 1))

    def pages_between(self, start: int, end: int) -> list[int]:
        """The pages that the document characters [start, end) lie on, from the page spans stored with the
        document (`_page_spans`, the ones the page viewer uses). A chunk that crosses a page break cites both
        pages; a sentence's evidence inside it is often on one. Without stored spans, the chunk's own pages."""
        spans = self.metadata.get("_page_spans")
        if self.page_start is None or not isinstance(spans, list):
            return self.pages
        return pages_of([(int(a), int(b)) for a, b in spans], start, end) or self.pages


@dataclass
class Block:
    """One BEGININPUT block of the prompt: one chunk, or a run of adjacent chunks of one document."""

    ref: str  # short block reference, e.g. "B1"; cited back by the model as `block: B1`
    hits: list[Hit]
    context: dict[str, str]  # the BEGINCONTEXT key: value lines, in order, already neutralised
    text: str  # the block body, already neutralised

    @property
    def chunk_ids(self) -> list[int]:
        return [h.chunk_id for h in self.hits]

    @property
    def document_id(self) -> int:
        return self.hits[0].document_id


@dataclass
class Blocks:
    """Result of packing hits into the token budget."""

    blocks: list[Block]
    dropped: int  # hits that did not fit (lowest-ranked first)
    tokens: int  # tokens used by the rendered blocks


@dataclass(frozen=True)
class PromptPart:
    """A piece of a rendered prompt. `data` parts (retrieved text, the question) are always tokenized as plain
    text; template parts are the model format's own text and may spell its special tokens (``<|im_start|>``)."""

    text: str
    data: bool = False


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt that remembers which characters are data.

    The backends tokenize it as one string, except that special-token spellings are honoured in template parts
    only: a document that contains ``</s>`` or ``<|im_end|>`` can never end the turn (DESIGN.md: retrieved text is
    data). A plain `str` given to a backend is all template (trusted text, e.g. a hand-written chat prompt).
    """

    parts: tuple[PromptPart, ...]

    @classmethod
    def template(cls, text: str) -> Prompt:
        return cls((PromptPart(text),))

    @classmethod
    def of(cls, prompt: str | Prompt) -> Prompt:
        return prompt if isinstance(prompt, Prompt) else cls.template(prompt)

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts)

    def __str__(self) -> str:
        return self.text


CitationStatus = Literal["verified", "unverified", "inferred"]


@dataclass
class Citation:
    """A cited source resolved to what ctxqa provided (or flagged when it matches nothing)."""

    status: CitationStatus  # verified: model-given and matched; unverified: matched nothing; inferred: ctxqa-attributed
    raw: dict[str, str]  # the key: value pairs the model wrote (empty for inferred)
    block_ref: str | None = None
    chunk_ids: list[int] = field(default_factory=list)
    document_id: int | None = None
    source: str | None = None
    title: str | None = None
    pages: list[int] = field(default_factory=list)
    char_start: int | None = None
    char_end: int | None = None
    match: str | None = None  # how it was matched: "exact", "ref", "tolerant", "partial", None
    support: float = 0.0  # 0..1: how well the cited chunk supports the answer's best-supported sentence
    # Whether the cited block supports any sentence of the answer (None: not checked, e.g. unverified).
    supports_answer: bool | None = None


Grounding = Literal["supported", "partial", "unsupported", "abstained"]
SentenceLabel = Literal["supported", "partial", "unsupported", "neutral"]


@dataclass
class Evidence:
    """The passage text that best supports a sentence: where it is, exactly.

    For a retrieved chunk: the block, chunk, document, pages and the character span in the document's text
    (`char_start`/`char_end`, what a viewer highlights). For a passage given to /v1/verify: its index and the
    span within it."""

    text: str
    char_start: int
    char_end: int
    passage: int | None = None  # index among the passages checked against
    block_ref: str | None = None
    chunk_id: int | None = None
    document_id: int | None = None
    source: str | None = None
    title: str | None = None
    pages: list[int] = field(default_factory=list)
    heading_path: tuple[str, ...] = ()


@dataclass
class SentenceCheck:
    """One sentence (claim) of an answer, with its label, support score and best evidence."""

    text: str
    start: int  # span of the sentence in the answer text
    end: int
    label: SentenceLabel  # neutral: nothing to check ("Sure.", a question); not counted in the verdict
    score: float
    evidence: Evidence | None = None
    quote: bool = False  # a near-verbatim copy of its evidence
    missing: tuple[str, ...] = ()  # numbers and names of the sentence that no passage contains
    cited: bool | None = None  # whether the model cited the block of this evidence (None: cited nothing)


@dataclass
class Verification:
    grounding: Grounding
    sentences: list[SentenceCheck] = field(default_factory=list)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Answer:
    question: str
    answer: str
    citations: list[Citation]
    hits: list[Hit]
    blocks_used: int
    blocks_dropped: int
    abstained: bool
    model: str
    usage: Usage = field(default_factory=Usage)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    raw_output: str = ""
    prompt: str = ""
    grounding: Grounding = "unsupported"
    sentences: list[SentenceCheck] = field(default_factory=list)
    # The passages that best answer the question (quote mode), shown beside an answer that is not supported.
    evidence: list[SentenceCheck] = field(default_factory=list)
    mode: Literal["generate", "quote"] = "generate"
    # Set when the unsupported-answer policy replaced the model's answer: the verdict of what it said.
    replaced: Grounding | None = None
