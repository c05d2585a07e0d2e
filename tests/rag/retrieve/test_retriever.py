"""Retrieval end to end on a real SQLite database, real faiss, the real bundled embedder.

Documents are inserted the way ingestion does it (one transaction that bumps the collection generation, then
`store.apply` with the committed change), without going through loaders or the chunker.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Chunk, Collection, Document
from ctxqa.rag.errors import InvalidInput
from ctxqa.rag.retrieve.filters import Filters
from ctxqa.rag.retrieve.retriever import DEFAULT_ABSTAIN_THRESHOLD, Retriever, mmr_select

# Every test that builds a context runs on SQLite and on PostgreSQL (tests/conftest.py: pytest_generate_tests).
DATABASES = ("sqlite", "postgres")
COLL = "t"

SPACE = [
    "The Hubble Space Telescope orbits Earth and photographs distant galaxies.",
    "Mars rovers study the red planet's geology and search for signs of ancient water.",
    "A light-year is the distance light travels in one year, about 9.46 trillion kilometres.",
]
COOKING = [
    "To bake sourdough bread, feed the starter, mix flour and water, and proof the dough overnight.",
    "Risotto needs arborio rice, warm stock added gradually, and constant stirring.",
]


def add_documents(ctx: Any, docs: list[dict[str, Any]], collection: str = COLL) -> dict[str, int]:
    """Insert documents (each: source, chunks [texts], optional meta/title/mtime) like the ingest pipeline does;
    returns source → document id."""
    emb = ctx.embedder
    with ctx.db.session() as s:
        coll = repo.ensure_collection(s, collection, emb.name, emb.dim)
    ctx.store.get(coll)
    texts = [t for d in docs for t in d["chunks"]]
    vecs = emb.encode(texts)
    out: dict[str, int] = {}
    add_ids: list[int] = []
    i = 0
    with ctx.db.session() as s:
        for d in docs:
            body = "\n\n".join(d["chunks"])
            doc = Document(collection_id=coll.id, source=d["source"], path=None, title=d.get("title", d["source"]),
                           sha256="0" * 64, media_type="text/plain", size=len(body), meta=d.get("meta", {}),
                           mtime=d.get("mtime"), chunk_count=len(d["chunks"]))
            s.add(doc)
            s.flush()
            pos = 0
            for ordinal, text in enumerate(d["chunks"]):
                row = Chunk(document_id=doc.id, collection_id=coll.id, ordinal=ordinal, text=text, char_start=pos,
                            char_end=pos + len(text), token_count=len(text.split()), meta={},
                            embedding=vecs[i].tobytes(), heading_path=[])
                pos += len(text) + 2
                i += 1
                s.add(row)
                s.flush()
                add_ids.append(row.id)
            out[d["source"]] = doc.id
        repo.bump_generation(s, coll.id)
        s.flush()
        gen = int(s.scalar(select(Collection.generation).where(Collection.id == coll.id)))
    ctx.store.apply(coll, gen, add_ids=np.asarray(add_ids), add_vecs=np.frombuffer(
        b"".join(Chunk_bytes for Chunk_bytes in (v.tobytes() for v in vecs)), dtype=np.float32).reshape(len(vecs), -1),
        save=False)
    ctx.store.save(coll)
    return out


def delete_documents(ctx: Any, doc_ids: list[int], collection: str = COLL, apply: bool = True) -> list[int]:
    with ctx.db.session() as s:
        coll = repo.require_collection(s, collection)
        docs = list(s.scalars(select(Document).where(Document.id.in_(doc_ids))))
        removed = repo.delete_documents(s, docs)
        s.flush()
        gen = int(s.scalar(select(Collection.generation).where(Collection.id == coll.id)))
    if apply:
        ctx.store.apply(coll, gen, remove_ids=removed)
    return removed


def coll_of(ctx: Any, name: str = COLL) -> Collection:
    with ctx.db.session() as s:
        return repo.require_collection(s, name)


@pytest.fixture()
def ctx(make_ctx):  # type: ignore[no-untyped-def]
    c = make_ctx()
    docs = [{"source": f"space/{i}.txt", "chunks": [t], "meta": {"topic": "space", "year": 2020 + i}}
            for i, t in enumerate(SPACE)]
    docs += [{"source": f"food/{i}.md", "chunks": [t], "meta": {"topic": "food", "date": f"2021-0{i + 1}-15"}}
             for i, t in enumerate(COOKING)]
    docs.append({"source": "codes/parts.txt", "chunks": [
        "Replacement part XQ-7734 fits the left hinge of the cabinet door.",
        "Order form for spare parts: fill in the catalogue number and the quantity.",
    ]})
    c.test_docs = add_documents(c, docs)
    return c


def test_modes_dense_lexical_hybrid(ctx) -> None:  # type: ignore[no-untyped-def]
    r: Retriever = ctx.retriever
    # A paraphrase without shared words: dense finds it, lexical cannot.
    dense = r.search("telescope pictures of remote star clusters", collection=COLL, k=3, mode="dense")
    assert dense.hits[0].source == "space/0.txt"
    assert set(dense.hits[0].scores) == {"dense", "dense_rank"}
    assert dense.mode == "dense" and "embed" in dense.timings
    lex = r.search("pictures of remote star clusters", collection=COLL, k=3, mode="lexical")
    assert all(h.source != "space/0.txt" for h in lex.hits)
    assert "embed" not in lex.timings  # lexical mode does not embed the query
    # An exact rare token: lexical ranks it first with a BM25 score.
    lex = r.search("XQ-7734", collection=COLL, k=3, mode="lexical")
    assert lex.hits[0].text.startswith("Replacement part XQ-7734")
    assert lex.hits[0].scores["lexical"] > 0 and lex.hits[0].scores["lexical_rank"] == 1
    # Its neighbour in the same document matches through its lexical window (Settings.lexical_window), below it;
    # nothing else shares a term.
    assert [h.source for h in lex.hits] == ["codes/parts.txt"] * 2
    assert lex.hits[1].text.startswith("Order form") and lex.hits[1].score < lex.hits[0].score
    hyb = r.search("XQ-7734 cabinet hinge", collection=COLL, k=4, mode="hybrid")
    top = hyb.hits[0]
    assert top.text.startswith("Replacement part XQ-7734")
    assert {"dense", "lexical", "fused"} <= set(top.scores)
    assert top.score == pytest.approx(top.scores["fused"])
    for fusion in ("rrf", "weighted"):
        res = r.search("XQ-7734 cabinet hinge", collection=COLL, k=4, mode="hybrid", fusion=fusion)
        assert res.hits[0].text.startswith("Replacement part XQ-7734")
        assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)
        # every hit carries its dense cosine (also lexical-only candidates): abstention relies on it
        assert all("dense" in h.scores for h in res.hits)
    # Weights: lexical weight 0 → the ranking of a hybrid search follows the dense one.
    only_dense = r.search("sourdough bread starter", collection=COLL, k=5, mode="hybrid", weights=(1.0, 0.0))
    dense = r.search("sourdough bread starter", collection=COLL, k=5, mode="dense")
    assert [h.chunk_id for h in only_dense.hits] == [h.chunk_id for h in dense.hits]


def test_bad_arguments(ctx) -> None:  # type: ignore[no-untyped-def]
    """Each bad option is refused with an error that names the option (the API reports that field)."""
    r = ctx.retriever
    cases = [({"mode": "fuzzy"}, "mode"), ({"fusion": "max"}, "fusion"), ({"weights": {"sparse": 1.0}}, "weights"),
             ({"weights": (0, 0)}, "weights"), ({"filters": {"nonsense": 1}}, "filters"),
             ({"filters": {"date_from": "2022-01-01", "date_to": "2021-01-01"}}, "filters"),
             ({"rerank": True}, "rerank"), ({"k": -1}, "k"), ({"mmr_lambda": 2.0}, "mmr_lambda")]
    for kwargs, field in cases:
        with pytest.raises(InvalidInput) as info:
            r.search("x", collection=COLL, **kwargs)
        assert info.value.field == field, kwargs
    with pytest.raises(repo.NotFound) as missing:
        r.search("x", collection="missing")
    assert missing.value.field == "collection"


def test_filters_apply_before_truncation(make_ctx) -> None:  # type: ignore[no-untyped-def]
    c = make_ctx()
    # 40 documents about telescopes, 8 about bread under "recipes/": the bread ones rank last for a telescope
    # query, yet a filtered search must still return k of them.
    docs = [{"source": f"astro/{i}.txt", "chunks": [f"Telescope observation log {i}: galaxies and nebulae."]}
            for i in range(40)]
    docs += [{"source": f"recipes/{i}.txt", "chunks": [f"Bread recipe {i}: flour, water, salt and yeast."],
              "meta": {"lang": "en" if i % 2 else "fr", "year": str(2000 + i)},
              "mtime": datetime(2020, 1, 1 + i, tzinfo=UTC)} for i in range(8)]
    ids = add_documents(c, docs)
    r = c.retriever
    for mode in ("dense", "lexical", "hybrid"):
        res = r.search("telescope galaxies", collection=COLL, k=5, mode=mode if mode != "lexical" else "hybrid",
                       filters={"source_prefix": "recipes/"}, candidates=5)
        assert len(res.hits) == 5 and all(h.source.startswith("recipes/") for h in res.hits)
    res = r.search("bread", collection=COLL, k=10, mode="lexical", filters=Filters(source_glob="recipes/[0-2].txt"))
    assert sorted(h.source for h in res.hits) == ["recipes/0.txt", "recipes/1.txt", "recipes/2.txt"]
    res = r.search("bread", collection=COLL, k=10, filters={"metadata": {"lang": "en"}})
    assert len(res.hits) == 4 and all(h.metadata["lang"] == "en" for h in res.hits)
    res = r.search("bread", collection=COLL, k=10, filters={"metadata": {"year": 2003}})  # "2003" stored
    assert [h.source for h in res.hits] == ["recipes/3.txt"]
    res = r.search("bread", collection=COLL, k=10, filters={"date_from": "2020-01-03", "date_to": "2020-01-05"})
    assert sorted(h.source for h in res.hits) == ["recipes/2.txt", "recipes/3.txt", "recipes/4.txt"]
    wanted = [ids["astro/3.txt"], ids["recipes/5.txt"]]
    res = r.search("bread telescope", collection=COLL, k=10, filters={"document_ids": wanted})
    assert sorted(h.document_id for h in res.hits) == sorted(wanted)
    res = r.search("bread", collection=COLL, k=10, filters={"source_prefix": "nothing/"})
    assert res.hits == []
    # Several collections at once, merged by score.
    add_documents(c, [{"source": "other.txt", "chunks": ["Bread recipe with rye flour."]}], collection="u")
    res = r.search("rye bread", collection=[COLL, "u"], k=3, mode="dense")
    assert res.hits[0].collection == "u" and {h.collection for h in res.hits} == {COLL, "u"}
    res = r.search("rye bread", collection=[COLL, "u"], k=10)
    assert {h.collection for h in res.hits} == {COLL, "u"}
    assert [h.score for h in res.hits] == sorted((h.score for h in res.hits), reverse=True)


def test_deletes_and_updates_reach_both_indexes(ctx) -> None:  # type: ignore[no-untyped-def]
    r = ctx.retriever
    doc_id = ctx.test_docs["codes/parts.txt"]
    assert r.search("XQ-7734", collection=COLL, k=3, mode="lexical").hits
    removed = delete_documents(ctx, [doc_id])
    assert len(removed) == 2
    for mode in ("dense", "lexical", "hybrid"):
        hits = r.search("XQ-7734 spare parts catalogue", collection=COLL, k=10, mode=mode).hits
        assert not {h.chunk_id for h in hits} & set(removed), mode
    coll = coll_of(ctx)
    ctx.store.save(coll)
    assert ctx.store.check(coll).ok and ctx.store.check_lexical(coll).ok
    # A second process (fresh store) sees the same state from the saved files.
    from ctxqa.rag.index.store import IndexStore

    fresh = IndexStore(ctx.settings, ctx.db)
    lex = fresh.get_lexical(coll)
    assert not set(lex.ids().tolist()) & set(removed)
    # Re-adding the text finds it again, under new chunk ids.
    add_documents(ctx, [{"source": "codes/parts2.txt", "chunks": ["Part XQ-7734 is back in stock."]}])
    hits = r.search("XQ-7734", collection=COLL, k=3, mode="lexical").hits
    assert [h.source for h in hits] == ["codes/parts2.txt"]


def test_crash_between_commit_and_index_write_is_repaired(ctx) -> None:  # type: ignore[no-untyped-def]
    doc_id = ctx.test_docs["codes/parts.txt"]
    removed = delete_documents(ctx, [doc_id], apply=False)  # committed, indexes never told
    coll = coll_of(ctx)
    assert not ctx.store.check_lexical(coll).ok  # doctor sees it
    from ctxqa.rag.index.store import IndexStore

    store = IndexStore(ctx.settings, ctx.db)  # a new process: stale files are rebuilt on use
    r = Retriever(ctx.settings, ctx.db, store, ctx.embedder)
    hits = r.search("XQ-7734", collection=COLL, k=5, mode="lexical").hits
    assert not {h.chunk_id for h in hits} & set(removed)
    assert store.check_lexical(coll).ok and store.check(coll).ok
    # `rebuild` (reindex / doctor --repair) rebuilds both files.
    store.lexical_path(coll.id).unlink()
    assert not store.check_lexical(coll).ok
    idx = store.rebuild(coll)
    assert idx.ntotal == store.get_lexical(coll).ntotal and store.check_lexical(coll).ok


def test_max_per_document_and_mmr(make_ctx) -> None:  # type: ignore[no-untyped-def]
    c = make_ctx()
    dup = "Aspirin reduces the risk of heart attack by inhibiting platelet aggregation."
    add_documents(c, [
        {"source": "a.txt", "chunks": [dup, dup.replace("reduces", "lowers"), dup.replace("Aspirin", "ASA")]},
        {"source": "b.txt", "chunks": ["Statins lower cholesterol and the risk of heart attack."]},
        {"source": "c.txt", "chunks": ["Regular exercise strengthens the heart."]},
    ])
    r = c.retriever
    q = "aspirin heart attack risk"
    plain = r.search(q, collection=COLL, k=3)
    assert [h.source for h in plain.hits] == ["a.txt"] * 3
    capped = r.search(q, collection=COLL, k=3, max_per_document=1)
    assert [h.source for h in capped.hits][:2] == ["a.txt", "b.txt"] and len(capped.hits) == 3
    diverse = r.search(q, collection=COLL, k=3, mmr=True, mmr_lambda=0.5)
    assert diverse.hits[0].source == "a.txt"
    assert len({h.source for h in diverse.hits}) >= 2  # the near-duplicates no longer fill the top 3
    same = r.search(q, collection=COLL, k=3, mmr=True, mmr_lambda=1.0)  # pure relevance = no MMR
    assert [h.chunk_id for h in same.hits] == [h.chunk_id for h in plain.hits]


def test_mmr_select_pure() -> None:
    v = {1: np.array([1.0, 0.0]), 2: np.array([1.0, 0.0]), 3: np.array([0.0, 1.0])}
    ranked = [(1, 0.9), (2, 0.89), (3, 0.5)]
    assert [c for c, _ in mmr_select(ranked, v, 2, 1.0)] == [1, 2]
    assert [c for c, _ in mmr_select(ranked, v, 2, 0.5)] == [1, 3]


def test_neighbour_expansion(make_ctx) -> None:  # type: ignore[no-untyped-def]
    c = make_ctx()
    chunks = ["Chapter one introduces the lighthouse keeper.",
              "He lights the lamp every evening at dusk.",
              "The secret code of the lighthouse is ORCA-51.",
              "In winter the storms flood the lower rooms.",
              "The keeper retires after forty years."]
    add_documents(c, [{"source": "story.txt", "chunks": chunks},
                      {"source": "other.txt", "chunks": ["Unrelated text about gardening and ORCA-51 roses."]}])
    r = c.retriever
    hits = r.search("lighthouse secret code ORCA-51", collection=COLL, k=1, mode="lexical").hits
    assert [h.ordinal for h in hits] == [2]
    out = r.expand_neighbours(hits, window=1)
    assert [(h.source, h.ordinal) for h in out] == [("story.txt", 1), ("story.txt", 2), ("story.txt", 3)]
    assert out[0].scores["neighbour_of"] == hits[0].chunk_id and out[0].score == hits[0].score
    out2 = r.expand_neighbours(hits, window=2)
    assert [h.ordinal for h in out2] == [0, 1, 2, 3, 4]
    # A token budget: the hit always stays, neighbours are added nearest first while they fit.
    words = len(chunks[2].split())
    budget = words + len(chunks[1].split())
    out3 = r.expand_neighbours(hits, window=2, budget_tokens=budget)
    assert [h.ordinal for h in out3] == [1, 2]
    assert r.expand_neighbours(hits, window=2, budget_tokens=1) == hits
    # Two hits of one document that are neighbours of each other are not duplicated.
    two = r.search("lighthouse", collection=COLL, k=5, mode="lexical",
                   filters={"source_prefix": "story"}).hits
    out4 = r.expand_neighbours(two, window=1)
    assert len({h.chunk_id for h in out4}) == len(out4)
    # The prompt builder merges the expanded run into one block.
    from ctxqa.rag.prompt import build_blocks

    blocks = build_blocks(out, 10_000, lambda t: len(str(t).split()))
    assert len(blocks.blocks) == 1 and "He lights the lamp" in blocks.blocks[0].text


def test_abstention_threshold(ctx) -> None:  # type: ignore[no-untyped-def]
    r = ctx.retriever
    assert r.abstain_threshold == DEFAULT_ABSTAIN_THRESHOLD
    relevant = r.search("How far does light travel in a year?", collection=COLL, k=3)
    assert r.is_relevant(relevant.hits)
    assert Retriever.relevance(relevant.hits) == max(h.scores["dense"] for h in relevant.hits)
    for q in ("What is the capital of Mongolia?", "Who won the 1998 football world cup final?",
              "How do I renew my driving licence?"):
        res = r.search(q, collection=COLL, k=3)
        assert res.hits  # retrieval always returns the nearest chunks...
        assert not r.is_relevant(res.hits), (q, Retriever.relevance(res.hits))  # ...but they are not relevant
    assert not r.is_relevant([])
    assert r.is_relevant(relevant.hits, threshold=-1.0)
    assert not r.is_relevant(relevant.hits, threshold=1.01)


def test_unanswerable_question_gets_no_sources(ctx) -> None:  # type: ignore[no-untyped-def]
    """Through the answer pipeline: below the threshold no hit reaches the prompt and `ask` abstains."""
    from ctxqa.rag import answer

    class FakeGen:  # never generates: it only counts tokens for the prompt packer
        name = "fake"
        context_length = 2048

        def count_tokens(self, text: object) -> int:  # a str or a Prompt
            return len(str(text).split())

    ans = answer.Answerer(ctx.settings, ctx.retriever, lambda: FakeGen())
    prep = ans.prepare("What is the capital of Mongolia?", answer.AskOptions(collection=COLL))
    assert prep.abstain and not prep.blocks.blocks
    prep = ans.prepare("How far does light travel in a year?", answer.AskOptions(collection=COLL))
    assert not prep.abstain and prep.blocks.blocks


def _tiny_cross_encoder(path: Path, embedder: Any) -> Path:
    """A small randomly initialised BERT cross-encoder (no download): 2 layers, the bundled tokenizer."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=embedder.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=512, num_labels=1)
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(path)
    embedder.tokenizer.save_pretrained(path)
    CrossEncoder(str(path), device="cpu", num_labels=1)  # loads
    return path


def test_cross_encoder_rerank(make_ctx, embedder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ctxqa.rag.retrieve.rerank import Reranker, RerankerError

    model_dir = _tiny_cross_encoder(tmp_path / "ce", embedder)
    c = make_ctx(cross_encoder_model=str(model_dir), rerank_depth=10)
    add_documents(c, [{"source": f"d{i}.txt", "chunks": [t]} for i, t in enumerate(SPACE + COOKING)])
    r = c.retriever
    q = "planets and telescopes"
    res = r.search(q, collection=COLL, k=5)
    assert all("rerank" in h.scores for h in res.hits)
    expected = Reranker(model_dir).score(q, [h.text for h in res.hits])
    assert [h.score for h in res.hits] == pytest.approx(sorted(expected.tolist(), reverse=True), rel=1e-5)
    assert [h.scores["rerank"] for h in res.hits] == [h.score for h in res.hits]
    off = r.search(q, collection=COLL, k=5, rerank=False)
    assert all("rerank" not in h.scores for h in off.hits)
    with pytest.raises(RerankerError):
        Reranker(tmp_path / "nope")


def test_fusion_functions() -> None:
    from ctxqa.rag.retrieve.retriever import Candidates, fuse_rrf, fuse_weighted, rank_fused

    dense = Candidates(np.array([1, 2, 3]), np.array([0.9, 0.8, 0.1]))
    lex = Candidates(np.array([3, 4]), np.array([12.0, 3.0]))
    rrf = fuse_rrf({"dense": dense, "lexical": lex}, {"dense": 1.0, "lexical": 1.0}, rrf_k=60)
    assert rrf[3] == pytest.approx(1 / 63 + 1 / 61) and rrf[1] == pytest.approx(1 / 61)
    assert [c for c, _ in rank_fused(rrf)] == [3, 1, 2, 4]
    rrf_w = fuse_rrf({"dense": dense, "lexical": lex}, {"dense": 1.0, "lexical": 0.0}, rrf_k=60)
    assert [c for c, _ in rank_fused(rrf_w)] == [1, 2, 3]
    # Weighted: min-max per retriever over the union; exact scores given for every candidate.
    full = {"dense": {1: 0.9, 2: 0.8, 3: 0.1, 4: 0.5}, "lexical": {1: 0.0, 2: 0.0, 3: 12.0, 4: 3.0}}
    w = fuse_weighted(full, {"dense": 0.5, "lexical": 0.5})
    assert w[1] == pytest.approx(0.5) and w[3] == pytest.approx(0.5) and w[4] == pytest.approx(0.5 * 0.5 + 0.125)
    assert fuse_weighted(full, {"dense": 1.0, "lexical": 0.0})[2] == pytest.approx(0.875)


def test_lexical_index_sees_title_and_headings(make_ctx) -> None:  # type: ignore[no-untyped-def]
    c = make_ctx()
    add_documents(c, [{"source": "zebra.txt", "title": "Okapi field notes",
                       "chunks": ["First paragraph about the forest.", "Second paragraph about stripes."]},
                      {"source": "other.txt", "chunks": ["Notes about stripes on shirts."]}])
    hits = c.retriever.search("okapi stripes", collection=COLL, k=3, mode="lexical").hits
    assert (hits[0].source, hits[0].ordinal) == ("zebra.txt", 1)  # "okapi" is only in the document title


def test_auto_index_switches_to_ivf_when_the_collection_grows(make_ctx, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ctxqa.rag.index import store, vector

    monkeypatch.setattr(vector, "IVF_MIN_VECTORS", 4)
    monkeypatch.setattr(store, "IVF_MIN_VECTORS", 4)
    c = make_ctx(index_type="auto", index_auto_threshold=6)
    add_documents(c, [{"source": f"{i}.txt", "chunks": [f"Note number {i} about topic {i % 3}."]} for i in range(4)])
    coll = coll_of(c)
    assert c.store.get(coll).index_type == "flat"
    add_documents(c, [{"source": f"b{i}.txt", "chunks": [f"Second batch note {i}."]} for i in range(4)])
    idx = c.store.get(coll)
    assert idx.index_type == "ivf" and idx.ntotal == 8
    hits = c.retriever.search("second batch note 2", collection=COLL, k=3, mode="dense").hits
    assert hits[0].source == "b2.txt"
    assert c.store.check(coll).ok
