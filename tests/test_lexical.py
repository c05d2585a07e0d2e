"""The BM25 lexical index: same scores as bm25s, exact after incremental changes, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from rag.lexical import LexicalIndex, Tokenizer

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
    pytest.importorskip("Stemmer", reason="PyStemmer (the Snowball stemmer) is not installed")
    tok = Tokenizer()
    assert tok("The Running FOXES are running") == ["run", "fox", "run"]
    assert "snowball" in tok.ident
    assert Tokenizer(stem=False)("Running foxes") == ["running", "foxes"]
    assert tok("a I x") == []  # one-letter words and stop words are not terms


def test_scores_match_bm25s() -> None:
    bm25s = pytest.importorskip("bm25s")
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
    from rag.chunk_text import lexical_text

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
