"""Building the airoboros "context-obedient" prompt: BEGININPUT blocks, one BEGININSTRUCTION, the model template.

Everything here is pure (no I/O, no globals) and tested byte-for-byte, because the models were trained on these
exact markers and line shapes:

    BEGININPUT
    BEGINCONTEXT
    block: B1
    source: docs/a.md
    ENDCONTEXT
    <chunk text>
    ENDINPUT
    BEGININSTRUCTION
    <question> Source?
    Don't make up answers if you don't know.
    ENDINSTRUCTION

Neutralisation (documented contract, relied on by the citation parser):
- Any occurrence of a format marker (BEGININPUT, ENDINPUT, BEGINCONTEXT, ENDCONTEXT, BEGININSTRUCTION,
  ENDINSTRUCTION; matched case-insensitively, also inside longer words) in chunk text, metadata or questions gets
  an underscore between its two halves, keeping the original case: ``ENDINPUT`` -> ``END_INPUT``. The marker
  byte sequence therefore never appears in user-supplied parts of the prompt, and the change is visible and
  unambiguous (the only edit is that one underscore).
- Metadata keys and values: every whitespace run (newlines included) collapses to one space, and ends are
  stripped, so one pair is always exactly one line. Colons in keys become ``_`` so the line splits on the right
  ``: ``. Keys are lower-cased (the parser lower-cases cited keys too). Empty values are omitted.
- A chunk line that merely looks like ``key: value`` after ENDCONTEXT is left alone: it is body text, and the
  models were trained not to cite anything outside BEGINCONTEXT/ENDCONTEXT.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from ctxqa.rag.profiles import Profile, render_prompt
from ctxqa.rag.types import Block, Blocks, Hit, Prompt, PromptPart

# Counts what the backend will feed: a Prompt's data parts are tokenized as plain text (no special tokens).
CountTokens = Callable[[Prompt], int]

_MARKER_RE = re.compile(r"(BEGIN|END)(INPUT|CONTEXT|INSTRUCTION)", re.IGNORECASE)
_WS_RE = re.compile(r"\s+")

# Document metadata keys copied into BEGINCONTEXT after the built-in ones, in this order (the models saw
# date, url, author, title, journal... in training; these are the "useful/standard" reference items).
DEFAULT_EXTRA_KEYS: tuple[str, ...] = ("author", "journal", "publisher")

DONT_MAKE_UP = "Don't make up answers if you don't know."


# ---------------------------------------------------------------------------------------------------------------
# Neutralisation
# ---------------------------------------------------------------------------------------------------------------


def neutralise_text(text: str) -> str:
    """Break every format marker in `text` with an underscore (``ENDINPUT`` -> ``END_INPUT``), case kept."""
    return _MARKER_RE.sub(lambda m: f"{m.group(1)}_{m.group(2)}", text)


def neutralise_value(value: str) -> str:
    """A metadata value as one safe line: whitespace runs (newlines too) become one space, markers broken."""
    return neutralise_text(_WS_RE.sub(" ", value).strip())


def neutralise_key(key: str) -> str:
    """A metadata key as one safe token run: lower-cased, one line, no colon (a colon would split the pair)."""
    return neutralise_value(key).lower().replace(":", "_")


def _stringify(value: Any) -> str:
    """Metadata values arrive as Any (YAML front matter, PDF info): make them a readable string."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (list, tuple, set)):
        return ", ".join(s for s in (_stringify(v) for v in value) if s)
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------


def _page_label(hits: Sequence[Hit]) -> str:
    pages = [p for h in hits for p in h.pages]
    if not pages:
        return ""
    lo, hi = min(pages), max(pages)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _context_for(hits: Sequence[Hit], ref: str, extra_keys: Iterable[str]) -> dict[str, str]:
    """BEGINCONTEXT pairs for a block made of `hits` (all of one document; the first hit carries its metadata)."""
    first = hits[0]
    meta: Mapping[str, Any] = first.metadata or {}
    candidates: list[tuple[str, Any]] = [
        ("block", ref),
        ("source", first.source),
        ("title", first.title if first.title else meta.get("title")),
        ("page", _page_label(hits)),
        ("date", first.date if first.date else meta.get("date")),
        ("url", first.url if first.url else meta.get("url")),
    ]
    candidates += [(k, meta.get(k)) for k in extra_keys]
    context: dict[str, str] = {}
    for key, raw in candidates:
        k = neutralise_key(key)
        v = neutralise_value(_stringify(raw))
        if k and v and k not in context:
            context[k] = v
    return context


def block_context(hit: Hit, ref: str, extra_keys: Iterable[str] = DEFAULT_EXTRA_KEYS) -> dict[str, str]:
    """The ordered, neutralised BEGINCONTEXT pairs for one hit: block, source, title, page, date, url, extras.

    `page` is "3" or "3-4" (PDF only). Empty values are omitted so the model never cites a blank.
    """
    return _context_for([hit], ref, extra_keys)


def _merge_text(hits: Sequence[Hit]) -> str:
    """Join chunks of one document in ordinal order without repeating their overlap.

    Chunk text is `document_text[char_start:char_end]`, so offsets tell exactly how much of the next chunk
    is already present; a gap (a chunk between them was not retrieved... or offsets jump) is marked with "\\n".
    """
    text = hits[0].text
    end = hits[0].char_end
    for nxt in hits[1:]:
        if nxt.char_start < end:
            text += nxt.text[end - nxt.char_start :]
        elif nxt.char_start == end:
            text += nxt.text
        else:
            text += "\n" + nxt.text
        end = max(end, nxt.char_end)
    return text


def _group_hits(hits: Sequence[Hit], merge_adjacent: bool) -> list[list[Hit]]:
    """Group hits into blocks, ordered by the best (lowest) rank of their members.

    With merging, hits of one document whose ordinals are consecutive form one run (in ordinal order),
    wherever they sit in the ranking. Duplicate chunk ids keep their first (best) occurrence.
    """
    seen: set[int] = set()
    ranked: list[tuple[int, Hit]] = []
    for rank, hit in enumerate(hits):
        if hit.chunk_id not in seen:
            seen.add(hit.chunk_id)
            ranked.append((rank, hit))
    if not merge_adjacent:
        return [[h] for _, h in ranked]

    by_doc: dict[int, list[tuple[int, Hit]]] = {}
    for rank, hit in ranked:
        by_doc.setdefault(hit.document_id, []).append((rank, hit))
    runs: list[tuple[int, list[Hit]]] = []
    for members in by_doc.values():
        members.sort(key=lambda rh: rh[1].ordinal)
        current: list[tuple[int, Hit]] = [members[0]]
        for rank_hit in members[1:]:
            if rank_hit[1].ordinal == current[-1][1].ordinal + 1:
                current.append(rank_hit)
            else:
                runs.append((min(r for r, _ in current), [h for _, h in current]))
                current = [rank_hit]
        runs.append((min(r for r, _ in current), [h for _, h in current]))
    runs.sort(key=lambda run: run[0])
    return [run for _, run in runs]


def _make_blocks(groups: Sequence[Sequence[Hit]], extra_keys: Iterable[str]) -> list[Block]:
    extra = tuple(extra_keys)
    blocks = []
    for i, group in enumerate(groups, start=1):
        ref = f"B{i}"
        blocks.append(
            Block(
                ref=ref,
                hits=list(group),
                context=_context_for(group, ref, extra),
                text=neutralise_text(_merge_text(group)).strip(),
            )
        )
    return blocks


def render_block(block: Block) -> str:
    """One BEGININPUT ... ENDINPUT block (no trailing newline). Context and text must already be neutralised."""
    lines = ["BEGININPUT", "BEGINCONTEXT"]
    lines += [f"{k}: {v}" for k, v in block.context.items()]
    lines += ["ENDCONTEXT", block.text, "ENDINPUT"]
    return "\n".join(lines)


def render_blocks(blocks: Blocks | Sequence[Block]) -> str:
    """All blocks in prompt order, separated by one newline; "" when there are none."""
    items = blocks.blocks if isinstance(blocks, Blocks) else blocks
    return "\n".join(render_block(b) for b in items)


def build_blocks(
    hits: list[Hit],
    budget_tokens: int,
    count_tokens: CountTokens,
    merge_adjacent: bool = True,
    extra_keys: Iterable[str] = DEFAULT_EXTRA_KEYS,
) -> Blocks:
    """Pack rank-ordered hits into blocks that fit `budget_tokens` (as measured on the rendered blocks).

    Hits are admitted strictly in rank order: the result holds the longest rank prefix whose blocks fit, so the
    lowest-ranked hits are the ones dropped, and packing stops at the first hit that would overflow. Adjacent
    chunks of one document in the admitted prefix are merged into one block placed at its best member's rank.
    The whole rendering is re-counted for each prefix because token counts are not additive across boundaries.
    """
    extra = tuple(extra_keys)
    best: list[Block] = []
    best_tokens = 0
    admitted = 0
    for k in range(1, len(hits) + 1):
        candidate = _make_blocks(_group_hits(hits[:k], merge_adjacent), extra)
        tokens = count_tokens(Prompt((PromptPart(render_blocks(candidate), data=True),)))
        if tokens > budget_tokens:
            break
        best, best_tokens, admitted = candidate, tokens, k
    return Blocks(blocks=best, dropped=len(hits) - admitted, tokens=best_tokens)


# ---------------------------------------------------------------------------------------------------------------
# Instruction and the full prompt
# ---------------------------------------------------------------------------------------------------------------


def _clean_question(question: str) -> str:
    q = neutralise_text(_WS_RE.sub(" ", question).strip())
    if not q:
        raise ValueError("a question is empty")
    return q


def build_instruction(questions: Sequence[str], ask_sources: bool = True, dont_make_up: bool = True) -> str:
    """The single BEGININSTRUCTION block.

    One question reads like the model card's ``What color are bluberries? Source?``; several are numbered one
    per line (so the model answers each in turn) followed by one request for sources. The closing sentence
    "Don't make up answers if you don't know." is the card's recipe against unsupported answers.
    """
    if not questions:
        raise ValueError("at least one question is required")
    cleaned = [_clean_question(q) for q in questions]
    if len(cleaned) == 1:
        lines = [f"{cleaned[0]} Source?" if ask_sources else cleaned[0]]
    else:
        lines = [f"{i}. {q}" for i, q in enumerate(cleaned, start=1)]
        if ask_sources:
            lines.append("Cite your sources for each answer.")
    if dont_make_up:
        lines.append(DONT_MAKE_UP)
    return "\n".join(["BEGININSTRUCTION", *lines, "ENDINSTRUCTION"])


def build_prompt(blocks: Blocks | Sequence[Block], questions: Sequence[str], ask_sources: bool = True) -> str:
    """The user-turn content: rendered blocks, then the instruction (no template around it)."""
    instruction = build_instruction(questions, ask_sources=ask_sources)
    rendered = render_blocks(blocks)
    return f"{rendered}\n{instruction}" if rendered else instruction


def pack_prompt(
    hits: list[Hit],
    questions: Sequence[str],
    profile: Profile,
    count_tokens: CountTokens,
    context_length: int,
    max_new_tokens: int,
    *,
    system: str | None = None,
    ask_sources: bool = True,
    merge_adjacent: bool = True,
) -> tuple[Prompt, Blocks]:
    """The final templated prompt and its blocks, guaranteed to satisfy
    ``count_tokens(prompt) + max_new_tokens <= context_length``. The user turn (blocks and instruction) is a
    data part of the Prompt: the backend never reads special tokens out of retrieved text or the question.

    The block budget starts as context minus generation minus the template-with-instruction-only; since token
    counts of pieces do not add up exactly, the assembled prompt is re-counted and the budget shrunk by the
    overflow until it fits (at worst with zero blocks). ValueError when even the bare instruction cannot fit.
    """
    if max_new_tokens < 0 or context_length <= 0:
        raise ValueError("context_length must be positive and max_new_tokens non-negative")
    bare = render_prompt(profile, build_prompt([], questions, ask_sources), system)
    bare_tokens = count_tokens(bare)
    if bare_tokens + max_new_tokens > context_length:
        raise ValueError(
            f"the question does not fit the model context: template and instruction take {bare_tokens} tokens, "
            f"plus {max_new_tokens} new tokens, exceeding the context length of {context_length}; "
            "shorten the question or lower max_new_tokens"
        )
    budget = context_length - max_new_tokens - bare_tokens
    while True:
        blocks = build_blocks(hits, budget, count_tokens, merge_adjacent=merge_adjacent)
        prompt = render_prompt(profile, build_prompt(blocks, questions, ask_sources), system)
        overflow = count_tokens(prompt) + max_new_tokens - context_length
        if overflow <= 0:
            return prompt, blocks
        if not blocks.blocks:  # pragma: no cover - the bare prompt was checked to fit above
            raise ValueError("the prompt does not fit the model context even without input blocks")
        budget = min(budget, blocks.tokens) - overflow
