"""What each index sees of a chunk: its text with a contextual header (dense), and that in a window of its
neighbours (lexical). Pure functions, shared by ingestion, the index store and the benchmarks.

- `header_parts`: the document title and heading path, minus any part the chunk already starts with. A chunk in
  the middle of a document rarely repeats the words that say what the document is about.
- `embedding_text`: header + chunk, for the embedder, never beyond its window (the header is shortened, the chunk
  never). SciFact, dense, 128-piece chunks: nDCG@10 0.6974 with the header vs 0.686 without; hybrid held-out
  +0.004 (bench/retrieval.py).
- `window_lexical_text`: for BM25, the header, the chunk and its neighbours stitched at their character offsets
  (`window_text`), then the chunk once more: the window lends a short chunk its document's vocabulary, the repeat
  keeps the chunk itself ahead of its neighbours for its own words (see rag/lexical.py for the figures).
  `lexical_texts`: that for each chunk of a document.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def header_parts(text: str, title: str | None = None, headings: Sequence[str] = ()) -> list[str]:
    """Title and headings not already present at the start of `text` (the first chunk usually begins with the
    title: repeating it would only inflate its weight)."""
    head = text[:300].lower()
    parts: list[str] = []
    for part in (title, *headings):
        part = " ".join((part or "").split())
        if part and part.lower() not in head and part not in parts:
            parts.append(part)
    return parts


def lexical_text(text: str, title: str | None = None, headings: Sequence[str] = ()) -> str:
    """What the lexical index sees for a chunk (or its window): the contextual header, then the text."""
    parts = header_parts(text, title, headings)
    return "\n".join([*parts, text]) if parts else text


def embedding_text(text: str, title: str | None = None, headings: Sequence[str] = (), *,
                   count_tokens: Callable[[str], int] | None = None, max_tokens: int = 256,
                   text_tokens: int | None = None) -> str:
    """What the embedder sees for a chunk: the contextual header, then the text, within `max_tokens` word pieces
    (special tokens included) as `count_tokens` counts them. Only the header is shortened (last words first); the
    chunk itself is never cut. `text_tokens` (the chunk's own count, known to the chunker) skips the count when
    the header cannot possibly overflow (a word piece covers at least one character)."""
    parts = header_parts(text, title, headings)
    while parts:
        candidate = "\n".join([*parts, text])
        if count_tokens is None:
            return candidate
        header_chars = len(candidate) - len(text)
        if text_tokens is not None and text_tokens + header_chars + 2 <= max_tokens:  # +2: [CLS], [SEP]
            return candidate
        if count_tokens(candidate) <= max_tokens:
            return candidate
        words = parts[-1].split()
        if len(words) > 1:
            parts[-1] = " ".join(words[:-1])
        else:
            parts.pop()
    return text


def window_text(parts: Sequence[tuple[str, int, int]]) -> str:
    """Consecutive chunks of one document, `(text, char_start, char_end)` in order, stitched back into the
    document text they cover: an overlap is taken once; a gap (whitespace the chunker skipped) becomes a line break.
    """
    out: list[str] = []
    end = None
    for text, start, stop in parts:
        if end is None or start >= end:
            if out:
                out.append("\n")
            out.append(text)
        elif stop > end:
            out.append(text[end - start:])
        end = stop if end is None else max(end, stop)
    return "".join(out)


def window_lexical_text(text: str, window: Sequence[tuple[str, int, int]], title: str | None = None,
                        headings: Sequence[str] = ()) -> str:
    """What the lexical index sees for a chunk with neighbours: header, the stitched window, the chunk again.

    SciFact, 128-piece chunks, hybrid held-out nDCG@10: 0.733 without windows, 0.743 with two neighbours each side,
    0.746 with the chunk repeated (bench/retrieval.py). Without the repeat every chunk of a short document would
    score the same for any query; with it the chunk holding the words ranks first."""
    return lexical_text(window_text(window), title, headings) + "\n" + text


def lexical_texts(chunks: Sequence[tuple[str, int, int]], window: int, title: str | None = None,
                  headings: Sequence[Sequence[str]] | None = None) -> list[str]:
    """What the lexical index sees for each of one document's chunks `(text, char_start, char_end)`, in order:
    `window_lexical_text` with `window` neighbours each side, or `lexical_text` when `window` is 0.
    `headings[j]`: chunk j's heading path."""
    heads = headings if headings is not None else [()] * len(chunks)
    if window <= 0:
        return [lexical_text(text, title, heads[j]) for j, (text, _a, _b) in enumerate(chunks)]
    return [window_lexical_text(text, chunks[max(0, j - window):j + window + 1], title, heads[j])
            for j, (text, _a, _b) in enumerate(chunks)]
