"""The BM25 lexical index: same scores as bm25s, exact after incremental changes, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from ctxqa.rag.index.lexical import LexicalIndex, Tokenizer
from ctxqa.rag.types import LoadedDocument

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Foxes are small omnivorous mammals; a fox hunts rodents.",
    "Dogs were domesticated from wolves thousands of years ago.",
    "Vitamin D deficiency is associated with bone fractures in elderly patients.",
    "Bone density decreases with age; fractures become more common.",
    "The stock market fell sharply after the interest rate decision.",
    "Interest rates were raised to fight inflation.",
    "A lazy afternoon: the dog sleeps while the fox watches.",
]
QUERIES = ["lazy dog", "fox hunting rodents", "bone fractures vitamin", "interest rate inflation", "wolves"]


def test_tokenizer_stems_lowercases_and_drops_stopwords() -> None:
    tok = Tokenizer()
    assert tok("The Running FOXES are running") == ["run", "fox", "run"]
    assert "snowball" in tok.ident
    assert Tokenizer(stem=False)("Running foxes") == ["running", "foxes"]
    assert tok("a I x") == []  # one-letter words and stop words are not terms


def test_scores_match_bm25s() -> None:
    import bm25s

    tok = Tokenizer()
    idx = LexicalIndex.build(list(range(100, 100 + len(DOCS))), DOCS, k1=1.5, b=0.75, tokenizer=tok)
    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    corpus_tokens = [tok(d) for d in DOCS]
    vocab = {t: i for i, t in enumerate(sorted({t for d in corpus_tokens for t in d}))}
    ref.index(bm25s.tokenization.Tokenized(ids=[[vocab[t] for t in d] for d in corpus_tokens], vocab=vocab),
              show_progress=False)
    for q in QUERIES:
        q_ids = [vocab[t] for t in dict.fromkeys(tok(q)) if t in vocab]
        expected = ref.get_scores(q_ids)
        scores, ids = idx.search(q, k=len(DOCS))
        got = np.zeros(len(DOCS))
        got[ids - 100] = scores
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _all_scores(idx: LexicalIndex, q: str) -> dict[int, float]:
    scores, ids = idx.search(q, k=1000)
    return dict(zip(ids.tolist(), scores.tolist()))


def test_incremental_changes_equal_a_fresh_build() -> None:
    idx = LexicalIndex()
    idx.add([1, 2, 3, 4], DOCS[:4])
    idx.add([5, 6, 7, 8], DOCS[4:])
    idx.remove([2, 6])
    idx.add([3], ["Completely new text about wolves and foxes."])  # update in place (same id)
    idx.add([9], [DOCS[1]])
    texts = {1: DOCS[0], 3: "Completely new text about wolves and foxes.", 4: DOCS[3], 5: DOCS[4], 7: DOCS[6],
             8: DOCS[7], 9: DOCS[1]}
    fresh = LexicalIndex.build(list(texts), list(texts.values()))
    assert idx.ntotal == fresh.ntotal == 7
    assert sorted(idx.ids().tolist()) == sorted(texts)
    for q in QUERIES:
        a, b = _all_scores(idx, q), _all_scores(fresh, q)
        assert a.keys() == b.keys()
        for cid in a:
            assert a[cid] == pytest.approx(b[cid], rel=1e-6)
    assert 2 not in _all_scores(idx, "omnivorous mammals")
    assert 9 in _all_scores(idx, "omnivorous mammals")


def test_compaction_after_many_deletes_keeps_results() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words, 20)) for _ in range(400)]
    idx = LexicalIndex()
    idx.add(range(400), texts)
    idx.remove(range(0, 300))  # 75 % dead: triggers compaction
    assert idx._row_ids.n == 100  # rows were renumbered densely
    fresh = LexicalIndex.build(range(300, 400), texts[300:])
    for q in ("w1 w2 w3", "w250", "w17 w18"):
        assert _all_scores(idx, q) == pytest.approx(_all_scores(fresh, q))


def test_allowed_ids_restrict_before_top_k() -> None:
    idx = LexicalIndex.build(range(len(DOCS)), DOCS)
    scores, ids = idx.search("fox dog", k=2)
    assert len(ids) == 2
    allowed = np.array([2, 6, 99])  # 2 mentions dogs; 6 does not match; 99 does not exist
    scores, ids = idx.search("fox dog", k=2, allowed_ids=allowed)
    assert ids.tolist() == [2]
    assert idx.search("fox", k=5, allowed_ids=np.array([], dtype=np.int64))[1].tolist() == []


def test_no_match_and_empty_query() -> None:
    idx = LexicalIndex.build(range(len(DOCS)), DOCS)
    assert idx.search("zzzzqqq", k=5)[1].tolist() == []
    assert idx.search("the a of", k=5)[1].tolist() == []  # stop words only
    assert LexicalIndex().search("fox", k=5)[1].tolist() == []


def test_save_load_roundtrip_and_stale_detection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    idx = LexicalIndex()
    idx.add(range(len(DOCS)), DOCS)
    idx.remove([1])
    idx.add([20], ["wolves wolves wolves"])  # in the delta, merged on save
    path = tmp_path / "c.bm25"
    idx.save(path, generation=7)
    loaded = LexicalIndex.load(path)
    assert loaded is not None and loaded.generation == 7 and loaded.ntotal == idx.ntotal
    for q in QUERIES:
        assert _all_scores(loaded, q) == pytest.approx(_all_scores(idx, q))
    loaded.add([21], ["another fox"])  # a loaded index keeps taking changes
    assert 21 in _all_scores(loaded, "fox")
    # Saved with other parameters or another tokenizer: not trusted (the store rebuilds it).
    assert LexicalIndex.load(path, k1=2.0) is None
    assert LexicalIndex.load(path, tokenizer=Tokenizer(stem=False)) is None
    path.write_bytes(b"garbage")
    assert LexicalIndex.load(path) is None
    assert LexicalIndex.load(tmp_path / "missing.bm25") is None


def test_lexical_text_adds_title_and_headings_once() -> None:
    from ctxqa.rag.index.chunk_text import lexical_text

    assert lexical_text("body text", "Guide", ["Install", "Linux"]) == "Guide\nInstall\nLinux\nbody text"
    assert lexical_text("Guide\n\nbody", "Guide", []) == "Guide\n\nbody"  # first chunk already starts with it
    assert lexical_text("body", None, ["Guide", "Guide"]) == "Guide\nbody"
    assert lexical_text("body", "", ()) == "body"


def test_search_scores_returns_scores_of_requested_ids() -> None:
    idx = LexicalIndex.build(range(len(DOCS)), DOCS)
    full = _all_scores(idx, "lazy dog fox")
    scores, ids, also = idx.search_scores("lazy dog fox", k=1, also=np.array([7, 3, 2, 99]))
    assert len(ids) == 1
    assert also.tolist() == pytest.approx([full[7], 0.0, full[2], 0.0])
    _, ids, also = idx.search_scores("lazy dog fox", k=3, allowed_ids=np.array([3]), also=np.array([0]))
    assert ids.tolist() == [] and also.tolist() == pytest.approx([full[0]])


# -- window_terms: the document tokenized once, each window a slice of its terms ---------------------------------

def _check_window_terms(tok: Tokenizer, chunks, title, heads, *, fast: bool) -> None:  # type: ignore[no-untyped-def]
    from ctxqa.rag.index.chunk_text import lexical_text, window_lexical_text

    for window in (0, 1, 2):
        got = tok.window_terms(chunks, window, title, heads)
        want = [tok(window_lexical_text(t, chunks[max(0, j - window):j + window + 1], title, heads[j]) if window
                    else lexical_text(t, title, heads[j])) for j, (t, _a, _b) in enumerate(chunks)]
        assert got == want, f"window {window}"
    from ctxqa.rag.index.lexical import _stitch

    assert (_stitch(chunks) is not None) is fast  # whether the one-pass path could be taken


def _spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[str, int, int]]:
    return [(text[a:b], a, b) for a, b in spans]


def test_window_terms_equal_tokenizing_each_window_on_edge_cases() -> None:
    tok = Tokenizer()
    text = "Alpha beta gamma. Delta epsilon zeta eta.\n\nTheta iota kappa lambda mu nu xi omicron pi rho."
    # Overlapping chunks cut mid-word (token-level cuts), a gap, adjacent chunks (no whitespace between).
    spans = [(0, 17), (12, 25), (23, 41), (43, 60), (60, 72), (70, len(text))]
    heads = [(), ("Intro",), ("Intro",), ("Body", "Greek"), ("Body",), ()]
    _check_window_terms(tok, _spans(text, spans), "Alpha the title", heads, fast=True)
    # Title already at the start of the window: not repeated (header_parts sees the window).
    _check_window_terms(tok, _spans(text, spans), "alpha beta", heads, fast=True)
    # A word clipped at both ends of one chunk; one-letter and stop-word clips.
    word = "abcdefghijklmnopqrstuvwxyz the a"
    _check_window_terms(tok, _spans(word, [(0, 5), (3, 9), (8, 26), (25, 29), (27, 32)]), None, [()] * 5,
                        fast=True)
    # Lower-casing that changes length ("İ" -> "i̇") or depends on context (final sigma): tokenized one by one.
    for odd in ("İstanbul İzmir and more words here", "ΟΔΟΣ ΣΟΦΙΑΣ and ΑΣ.Β more words"):
        _check_window_terms(tok, _spans(odd, [(0, 12), (8, 20), (20, len(odd))]), "T", [()] * 3, fast=True)
    # Out of order, or a chunk inside the one before: windows stitch differently, so each is tokenized alone.
    _check_window_terms(tok, _spans(text, [(0, 25), (5, 12), (23, 41)]), None, [()] * 3, fast=False)
    _check_window_terms(tok, _spans(text, [(12, 25), (0, 17)]), None, [()] * 2, fast=False)
    # Text that does not match its offsets (not what the chunker makes): the slow path, same result.
    _check_window_terms(tok, [("one two", 0, 7), ("three four", 5, 9)], None, [()] * 2, fast=False)
    assert tok.window_terms([], 2) == []
    assert tok.window_terms([("solo words", 0, 10)], 2, "Solo title") == [["solo", "titl", "solo", "word", "solo",
                                                                            "word"]]


def test_window_terms_equal_tokenizing_each_window_on_real_documents(shared_data, embedder) -> None:  # type: ignore[no-untyped-def]
    """Real chunking of real documents (Markdown site, a 10-Q PDF, SciFact abstracts), 128-piece chunks with
    overlap: the one-pass terms are the per-window terms, list for list."""
    import json
    import random

    from ctxqa.ingest.chunk import chunk
    from ctxqa.ingest.loaders import load
    from ctxqa.rag.index.chunk_text import lexical_texts

    tok = Tokenizer()
    files = sorted((shared_data / "corpora" / "fastapi-docs").rglob("*.md"))
    files = random.Random(0).sample(files, 12) + sorted((shared_data / "corpora" / "sec-10q").glob("*.pdf"))[:1]
    docs = [load(p) for p in files]
    with open(shared_data / "eval" / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        for line, _ in zip(f, range(40)):
            row = json.loads(line)
            docs.append(LoadedDocument(text=f"{row['title']}\n{row['text']}", media_type="text/plain"))
    fast = 0
    for doc in docs:
        specs = chunk(doc, embedder.tokenizer, 128, 16, max_tokens=embedder.max_tokens)
        chunks = [(sp.text, sp.char_start, sp.char_end) for sp in specs]
        heads = [sp.heading_path for sp in specs]
        for window in (0, 2):
            got = tok.window_terms(chunks, window, doc.title, heads)
            assert got == [tok(t) for t in lexical_texts(chunks, window, doc.title, heads)]
        from ctxqa.rag.index.lexical import _stitch

        fast += _stitch(chunks) is not None
    assert fast == len(docs)  # the chunker's output always takes the one-pass path
