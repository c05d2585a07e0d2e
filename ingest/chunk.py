"""Structure-aware, token-exact chunking of a LoadedDocument. Pure: no I/O, no globals, deterministic.

    chunk(doc, tokenizer, size, overlap, max_tokens=None) -> list[ChunkSpec]

How it works
1. The text is tokenized once (HuggingFace fast tokenizer, offsets, no special tokens); the number of tokens
   of any span [a, b) is then two bisections over the token start offsets.
2. The text is cut into regions at section (heading) boundaries; a region smaller than `limit // 8` tokens
   (typically a heading directly followed by a sub-heading) is merged into the region after it.
3. Each region is split into units of at most `limit` tokens, coarsest first: paragraphs (blank lines), then
   sentences, then lines, then words (whitespace) and, for a single "word" longer than the limit (a base64 blob,
   a long URL), token boundaries, preferring boundaries at punctuation.
4. Units are packed greedily up to `limit` tokens. Each chunk after the first of a region starts with up to
   `overlap` tokens of the end of the previous one, starting at a sentence start when that gives at least half the
   overlap, else at a word start.
5. Chunk offsets are trimmed of surrounding whitespace (the text is never altered), every chunk gets its exact
   `token_count` as tokenized on its own (read off the whole-text tokens where that is provably identical, see
   `_counts_in_context`), and a chunk that would exceed the limit that way (only possible at token-level cuts) is
   cut again.

`limit = min(size, max_tokens - specials)` where `specials` is what the tokenizer adds around a sequence
([CLS]/[SEP]: 2), so every chunk fits the embedder without truncation.
"""

from __future__ import annotations

import re
import threading
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any

from ctxqa.rag.types import ChunkSpec, LoadedDocument, PageSpan, Section

__all__ = ["chunk", "effective_limit"]

# Text is tokenized in pieces of about this many characters, cut after a newline (or whitespace) so that no token
# straddles a cut; keeps memory bounded on huge files.
_PIECE_CHARS = 50_000

_PARA_RE = re.compile(r"\n[ \t\f\v]*\n\s*")
_SENT_RE = re.compile(r"[.!?…]+[\"'”’»)\]]*\s+|[。！？]+[」』”’)）]*\s*")
_LINE_RE = re.compile(r"\n\s*")
_WORD_RE = re.compile(r"\s+")
_WORDSTART_RE = re.compile(r"(?<=\s)\S")


def effective_limit(tokenizer: Any, size: int, max_tokens: int | None) -> int:
    """Most tokens (without specials) a chunk may have: min(size, max_tokens - special tokens)."""
    if max_tokens is None:
        return size
    try:
        specials = int(tokenizer.num_special_tokens_to_add(False))
    except Exception:  # noqa: BLE001 - not a HF tokenizer: assume [CLS] ... [SEP]
        specials = 2
    return max(1, min(size, max_tokens - specials))


_BACKENDS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_BACKENDS_LOCK = threading.Lock()


def _backend(tokenizer: Any) -> Any | None:
    """A private copy of the Rust tokenizer behind a HF fast tokenizer, with truncation and padding off: the same
    ids and offsets as the wrapper's `__call__` without its per-call Python work (~0.3 ms of the ~0.8 ms a SciFact
    abstract costs). A copy, because the wrapper sets truncation/padding on its own backend per call (MiniLM's
    tokenizer.json even ships them on, at 128)."""
    bt = getattr(tokenizer, "backend_tokenizer", None)
    if bt is None:
        return None
    try:
        with _BACKENDS_LOCK:
            own = _BACKENDS.get(tokenizer)
            if own is None:
                from tokenizers import Tokenizer

                own = Tokenizer.from_str(bt.to_str())
                own.no_truncation()
                own.no_padding()
                _BACKENDS[tokenizer] = own
        return own
    except TypeError:  # not weak-referenceable: use the wrapper
        return None


_BERT_SPACE = frozenset(" \t\n\r")  # what BERT's normaliser and pre-tokenizer treat as a word break, and keep


def _counts_in_context(tokenizer: Any) -> bool:
    """True for WordPiece tokenizers with BERT's normaliser and pre-tokenizer (MiniLM, BERT, most sentence
    embedders): every word is tokenized on its own from character-local normalisation, so a span that starts and
    ends at whitespace has exactly the tokens the whole-text tokenization places inside it. Byte-level BPE or
    SentencePiece mark word starts by the preceding space: there a chunk is counted on its own."""
    bt = _backend(tokenizer)
    if bt is None:
        return False
    pre, norm, model = bt.pre_tokenizer, bt.normalizer, bt.model
    return (type(pre).__name__ == "BertPreTokenizer" and type(model).__name__ == "WordPiece"
            and (norm is None or type(norm).__name__ == "BertNormalizer"))


def _offsets(tokenizer: Any, texts: list[str]) -> list[list[tuple[int, int]]]:
    bt = _backend(tokenizer)
    if bt is not None:
        return [e.offsets for e in bt.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]


class _Tokens:
    """Token start/end offsets of the whole text, with O(log n) counting of any span."""

    def __init__(self, text: str, tokenizer: Any) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        pieces = _pieces(text)
        if not pieces:
            return
        for (a, _b), offsets in zip(pieces, _offsets(tokenizer, [text[a:b] for a, b in pieces])):
            for s, e in offsets:
                self.starts.append(a + s)
                self.ends.append(a + e)

    def count(self, a: int, b: int) -> int:
        return bisect_left(self.starts, b) - bisect_left(self.starts, a)

    def index(self, pos: int) -> int:
        """Index of the first token starting at or after `pos`."""
        return bisect_left(self.starts, pos)


def _pieces(text: str) -> list[tuple[int, int]]:
    out = []
    a, n = 0, len(text)
    while a < n:
        b = min(n, a + _PIECE_CHARS)
        if b < n:
            cut = text.rfind("\n", a + _PIECE_CHARS // 2, b)
            if cut < 0:
                words = list(_WORD_RE.finditer(text, a + _PIECE_CHARS // 2, b))
                cut = words[-1].end() - 1 if words else b - 1
            b = cut + 1
        out.append((a, b))
        a = b
    return out


# ----------------------------------------------------------------------------------------------------------------
# Splitting into units
# ----------------------------------------------------------------------------------------------------------------


def _sentence_cuts(text: str, a: int, b: int) -> list[int]:
    cuts = []
    for m in _SENT_RE.finditer(text, a, b):
        end = m.end()
        if end >= b:
            continue
        # "1." / "a." (list markers, initials) do not end a sentence
        p = m.start()
        q = p
        while q > a and not text[q - 1].isspace():
            q -= 1
        if p - q <= 1 and text[m.start()] == ".":
            continue
        cuts.append(end)
    return cuts


def _regex_cuts(regex: re.Pattern, text: str, a: int, b: int) -> list[int]:
    return [m.end() for m in regex.finditer(text, a, b) if a < m.end() < b]


class _Splitter:
    def __init__(self, text: str, tokens: _Tokens, limit: int) -> None:
        self.text = text
        self.tokens = tokens
        self.limit = limit

    def units(self, a: int, b: int, level: int = 0) -> list[tuple[int, int]]:
        """Contiguous spans covering [a, b), each of at most `limit` tokens (token-level pieces included)."""
        if self.tokens.count(a, b) <= self.limit:
            return [(a, b)]
        if level >= 4:
            return self._token_split(a, b)
        text = self.text
        if level == 0:
            cuts = _regex_cuts(_PARA_RE, text, a, b)
        elif level == 1:
            cuts = _sentence_cuts(text, a, b)
        elif level == 2:
            cuts = _regex_cuts(_LINE_RE, text, a, b)
        else:
            cuts = _regex_cuts(_WORD_RE, text, a, b)
        if not cuts:
            return self.units(a, b, level + 1)
        out: list[tuple[int, int]] = []
        prev = a
        for c in [*cuts, b]:
            if c <= prev:
                continue
            if self.tokens.count(prev, c) <= self.limit:
                out.append((prev, c))
            else:
                out.extend(self.units(prev, c, level + 1))
            prev = c
        return out

    def _token_split(self, a: int, b: int) -> list[tuple[int, int]]:
        """Split a whitespace-free run longer than the limit at token starts, preferring punctuation boundaries."""
        starts, ends, text = self.tokens.starts, self.tokens.ends, self.text
        lo, hi = self.tokens.index(a), self.tokens.index(b)
        out: list[tuple[int, int]] = []
        prev = a
        i = lo
        while hi - i > self.limit:
            best = i + self.limit
            for j in range(i + self.limit, i + max(1, self.limit // 2) - 1, -1):
                p = starts[j]
                if ends[j - 1] < p or not text[p - 1].isalnum() or not text[p].isalnum():
                    best = j
                    break
            cut = starts[best]
            if cut > prev:
                out.append((prev, cut))
                prev = cut
            i = best
        out.append((prev, b))
        return out


# ----------------------------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------------------------


class _Packer:
    def __init__(self, text: str, tokens: _Tokens, limit: int, overlap: int) -> None:
        self.text = text
        self.tokens = tokens
        self.limit = limit
        self.overlap = overlap

    def _word_starts(self, a: int, b: int) -> list[int]:
        return [m.start() for m in _WORDSTART_RE.finditer(self.text, a, b)]

    def _first_fitting(self, candidates: Sequence[int], end: int, budget: int) -> int | None:
        """Smallest candidate position c (ascending list) with count(c, end) <= budget."""
        lo, hi = 0, len(candidates)
        count = self.tokens.count
        while lo < hi:
            mid = (lo + hi) // 2
            if count(candidates[mid], end) <= budget:
                hi = mid
            else:
                lo = mid + 1
        return candidates[lo] if lo < len(candidates) else None

    def _overlap_start(self, start: int, end: int) -> int:
        """Where the next chunk starts: inside [start, end) so that at most `overlap` tokens repeat, or `end`."""
        if self.overlap <= 0:
            return end
        sentence_starts = sorted(set(_sentence_cuts(self.text, start, end)) |
                                 set(_regex_cuts(_LINE_RE, self.text, start, end)))
        sentence_starts = [p for p in sentence_starts if start < p < end]
        s = self._first_fitting(sentence_starts, end, self.overlap)
        if s is not None and self.tokens.count(s, end) * 2 >= self.overlap:
            return s
        words = [p for p in self._word_starts(start, end) if start < p < end]
        w = self._first_fitting(words, end, self.overlap)
        if w is not None:
            return w
        return s if s is not None else end

    def pack(self, units: list[tuple[int, int]]) -> list[tuple[int, int]]:
        count = self.tokens.count
        chunks: list[tuple[int, int]] = []
        n = len(units)
        i = 0
        start = units[0][0] if units else 0
        while i < n:
            j = i
            while j < n and count(start, units[j][1]) <= self.limit:
                j += 1
            if j == i:
                # The overlap leaves no room for the next unit: repeat less (or nothing).
                ua, ub = units[i]
                words = [p for p in self._word_starts(start, ua) if start < p <= ua]
                w = self._first_fitting(words, ub, self.limit)
                start = w if w is not None else ua
                if count(start, ub) > self.limit:
                    start = ua
                continue
            end = units[j - 1][1]
            chunks.append((start, end))
            if j >= n:
                break
            nxt = self._overlap_start(start, end)
            # Only overlap when the repeated text carries tokens; otherwise start clean at the next unit.
            start = nxt if nxt < end and count(nxt, end) > 0 else units[j][0]
            i = j
        return chunks


# ----------------------------------------------------------------------------------------------------------------
# Regions, pages, headings
# ----------------------------------------------------------------------------------------------------------------


def _regions(doc: LoadedDocument, tokens: _Tokens, limit: int) -> list[tuple[int, int]]:
    n = len(doc.text)
    bounds = {0, n}
    for s in doc.sections:
        for p in (s.start, s.end):
            if 0 < p < n:
                bounds.add(p)
    ordered = sorted(bounds)
    regions = [(a, b) for a, b in zip(ordered, ordered[1:]) if doc.text[a:b].strip()]
    # Merge a tiny region (a heading with hardly any text under it) into the next one.
    tiny = max(1, limit // 8)
    merged: list[tuple[int, int]] = []
    pending: int | None = None
    for a, b in regions:
        if pending is not None:
            a = pending
            pending = None
        if tokens.count(a, b) < tiny:
            pending = a
            continue
        merged.append((a, b))
    if pending is not None:
        last_end = regions[-1][1]
        if merged:
            merged[-1] = (merged[-1][0], last_end)  # a tiny tail joins the region before it
        else:
            merged.append((pending, last_end))
    return merged


class _PageIndex:
    def __init__(self, pages: list[PageSpan]) -> None:
        self.pages = sorted((p for p in pages if p.end > p.start), key=lambda p: (p.start, p.page))
        self.starts = [p.start for p in self.pages]

    def page_at(self, pos: int, *, forward: bool) -> int | None:
        """Page holding character `pos`; in a gap between pages, the next page (forward) or the previous one."""
        if not self.pages:
            return None
        k = bisect_right(self.starts, pos) - 1
        if k >= 0 and pos < self.pages[k].end:
            return self.pages[k].page
        if forward:
            return self.pages[k + 1].page if k + 1 < len(self.pages) else self.pages[-1].page
        return self.pages[k].page if k >= 0 else self.pages[0].page


class _SectionIndex:
    def __init__(self, sections: list[Section]) -> None:
        self.sections = sorted(sections, key=lambda s: (s.start, -s.end, len(s.headings)))
        self.starts = [s.start for s in self.sections]

    def path_at(self, pos: int) -> tuple[str, ...]:
        """Heading path of the innermost section holding `pos` (the latest-starting one that covers it)."""
        for idx in range(bisect_right(self.starts, pos) - 1, -1, -1):
            s = self.sections[idx]
            if pos < s.end:
                return s.headings
        return ()


# ----------------------------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------------------------


def chunk(doc: LoadedDocument, tokenizer: Any, size: int, overlap: int,
          max_tokens: int | None = None) -> list[ChunkSpec]:
    """Cut `doc.text` into chunks of at most min(size, max_tokens - specials) tokens; see the module docstring.

    `overlap` (tokens) must be smaller than `size`; it is capped at half the effective limit.
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1 token, got {size}")
    if overlap < 0 or overlap >= size:
        raise ValueError(f"chunk overlap must be in [0, size), got {overlap} for size {size}")
    limit = effective_limit(tokenizer, size, max_tokens)
    overlap = min(overlap, limit // 2)
    text = doc.text
    if not text or not text.strip():
        return []

    tokens = _Tokens(text, tokenizer)
    splitter = _Splitter(text, tokens, limit)
    packer = _Packer(text, tokens, limit, overlap)
    spans: list[tuple[int, int]] = []
    for a, b in _regions(doc, tokens, limit):
        spans.extend(packer.pack(splitter.units(a, b)))

    # Trim whitespace by moving offsets; drop empty spans.
    trimmed: list[tuple[int, int]] = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            trimmed.append((a, b))

    # Exact token counts, as the embedder will see each chunk on its own: read off the whole-text tokens where that
    # is provably the same (WordPiece, span bounded by whitespace: ~30 % of the chunking time saved on SciFact),
    # else each chunk tokenized on its own.
    final: list[tuple[int, int, int]] = []
    counts: list[int | None] = [None] * len(trimmed)
    if _counts_in_context(tokenizer):
        n_text = len(text)
        for i, (a, b) in enumerate(trimmed):
            if (a == 0 or text[a - 1] in _BERT_SPACE) and (b == n_text or text[b] in _BERT_SPACE):
                counts[i] = tokens.count(a, b)
    todo = [i for i, n in enumerate(counts) if n is None]
    for i, counted in zip(todo, _count_many(tokenizer, [text[trimmed[i][0]:trimmed[i][1]] for i in todo])):
        counts[i] = counted
    for (a, b), n in zip(trimmed, counts):
        assert n is not None
        if n <= limit:
            final.append((a, b, n))
        else:
            final.extend(_recut(text, a, b, tokenizer, limit))

    pages = _PageIndex(doc.pages)
    sections = _SectionIndex(doc.sections)
    out: list[ChunkSpec] = []
    for a, b, n in final:
        out.append(ChunkSpec(
            ordinal=len(out),
            text=text[a:b],
            char_start=a,
            char_end=b,
            token_count=n,
            page_start=pages.page_at(a, forward=True),
            page_end=pages.page_at(b - 1, forward=False),
            heading_path=tuple(sections.path_at(a)),
        ))
    return out


def _count_many(tokenizer: Any, texts: list[str]) -> list[int]:
    if not texts:
        return []
    bt = _backend(tokenizer)
    if bt is not None:
        return [len(e.ids) for e in bt.encode_batch(texts, add_special_tokens=False)]
    enc = tokenizer(texts, add_special_tokens=False, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]


def _recut(text: str, a: int, b: int, tokenizer: Any, limit: int) -> list[tuple[int, int, int]]:
    """Cut [a, b) by re-tokenizing it until every piece fits (rare: only after token-level splits)."""
    out: list[tuple[int, int, int]] = []
    while a < b:
        enc = tokenizer(text[a:b], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        if len(offsets) <= limit:
            out.append((a, b, len(offsets)))
            break
        cut = a + offsets[limit][0]
        ws = max(text.rfind(" ", a, cut), text.rfind("\n", a, cut))
        if ws > a:
            cut = ws
        piece_end = cut
        while piece_end > a and text[piece_end - 1].isspace():
            piece_end -= 1
        if piece_end <= a:  # nothing but whitespace before the cut: cut at the token itself
            piece_end = cut = a + max(offsets[limit][0], 1)
        # the prefix is cut at a token start, so it never has more than `limit` tokens; count it exactly
        n = _count_many(tokenizer, [text[a:piece_end]])[0]
        if n > limit:  # tokenizer-specific merge across the cut: fall back to the token's own end
            piece_end = cut = a + offsets[limit - 1][1]
            n = _count_many(tokenizer, [text[a:piece_end]])[0]
        out.append((a, piece_end, n))
        a = cut
        while a < b and text[a].isspace():
            a += 1
    return out
