"""Retrieval quality and latency on BEIR SciFact (../shared/data/eval/scifact: 5,183 abstracts, 809 train queries).

    python bench/retrieval.py [--latency-queries 300] [--lexical-compare] [--quick]

What it does
1. Builds a ctxqa collection in a fresh SQLite database (bench/results/scifact/): one Document per abstract
   (text = title + blank line + abstract), chunked by ctxqa's chunker (ingest/chunk.py, Settings' chunk size and
   overlap), Chunk rows with embeddings of `embedding_text` (chunk under its title, as ingestion embeds it) from
   the bundled MiniLM embedder on the default backend (cached in bench/results/*.npy), then `IndexStore` builds
   the faiss and BM25 indexes (lexical windows included) exactly as `ctxqa reindex` does.
2. Splits the train queries deterministically into a tuning part (30 %) and a held-out part (70 %). Every
   parameter chosen here (BM25 k1/b, lexical window, RRF k and weights, weighted-fusion weights) is chosen on
   the tuning part only; the held-out numbers are what the defaults are judged by. All-query numbers are reported too.
3. Scores each configuration with the standard BEIR measures (as pytrec_eval computes them: linear gain graded
   nDCG@10, Recall@10, Recall@100, MRR@10). A document's rank is that of its best chunk (max-pooling).
   The ranking goes through the same functions `Retriever.search` uses (fuse_rrf / fuse_weighted over the
   VectorIndex and LexicalIndex candidates); the default configuration is also run end to end through
   `Retriever.search` (database fetch included) to check it gives the same numbers and to time it.
4. Latency, one query at a time like the API: query embedding (`Embedder.encode_query`) and search (dense +
   lexical + fusion, and with the database fetch of the hits) separately, p50/p95.

Results: bench/results/retrieval.json and Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ctxqa.rag.config import Settings  # noqa: E402
from ctxqa.rag.db import repo  # noqa: E402
from ctxqa.rag.db.models import Chunk, Document  # noqa: E402
from ctxqa.rag.db.session import Database  # noqa: E402
from ctxqa.rag.embed.embedder import Embedder  # noqa: E402
from ctxqa.rag.index.chunk_text import embedding_text  # noqa: E402
from ctxqa.rag.index.lexical import LexicalIndex  # noqa: E402
from ctxqa.rag.index.store import IndexStore, _collection_texts  # noqa: E402
from ctxqa.rag.retrieve.retriever import Candidates, Retriever, fuse_rrf, fuse_weighted, rank_fused  # noqa: E402

DATA = Path(os.environ.get("CTXQA_SHARED", ROOT.parent / "shared")) / "data" / "eval" / "scifact"
RESULTS = ROOT / "bench" / "results"
WORK = RESULTS / "scifact"
CHUNK_SIZE, CHUNK_OVERLAP = Settings().chunk_size, Settings().chunk_overlap
DEPTH = 300  # candidates per retriever for evaluation (Recall@100 needs > 100 distinct documents)


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def load_scifact() -> tuple[list[dict], dict[str, str], dict[str, dict[str, int]]]:
    corpus = [json.loads(line) for line in (DATA / "corpus.jsonl").open()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (DATA / "queries_train.jsonl").open())}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with (DATA / "qrels" / "train.tsv").open() as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            qrels[qid][did] = int(score)
    queries = {q: t for q, t in queries.items() if q in qrels}
    return corpus, queries, dict(qrels)


def doc_text(d: dict) -> str:
    title, text = d.get("title", "").strip(), d.get("text", "").strip()
    return f"{title}\n\n{text}" if title else text


def split_queries(qids: list[str], tune_fraction: float = 0.3) -> tuple[list[str], list[str]]:
    """Deterministic split by a hash of the query id."""
    tune = [q for q in qids if int(hashlib.sha256(q.encode()).hexdigest(), 16) % 1000 < tune_fraction * 1000]
    held = [q for q in qids if q not in set(tune)]
    return tune, held


def chunk_corpus(corpus: list[dict], embedder: Embedder) -> tuple[list[dict], list[Any]]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    """Chunk specs per document with ctxqa's chunker (cached)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = RESULTS / f"scifact_chunks_{CHUNK_SIZE}_{CHUNK_OVERLAP}.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("n_docs") == len(corpus):
            return corpus, data["chunks"]
    from ctxqa.ingest.chunk import chunk
    from ctxqa.rag.types import LoadedDocument

    out = []
    for d in corpus:
        specs = chunk(LoadedDocument(text=doc_text(d), media_type="text/plain"), embedder.tokenizer, CHUNK_SIZE,
                      CHUNK_OVERLAP, max_tokens=embedder.max_tokens)
        out.append([[sp.text, sp.char_start, sp.char_end, sp.token_count] for sp in specs])
    cache.write_text(json.dumps({"n_docs": len(corpus), "chunks": out}))
    return corpus, out


def embed_cached(name: str, texts: list[str], embedder: Embedder) -> np.ndarray:
    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = RESULTS / f"{name}_{embedder.backend}_{key}.npy"
    if path.exists():
        return np.load(path)
    t = time.perf_counter()
    vecs = embedder.encode(texts)
    print(f"embedded {len(texts)} texts for {name} in {time.perf_counter() - t:.0f}s", flush=True)
    np.save(path, vecs)
    return vecs


def build_collection(settings: Settings, corpus: list[dict], chunks: list[Any], vecs: np.ndarray,
                     embedder: Embedder) -> tuple[Database, IndexStore, dict[int, str]]:
    """Fresh SQLite database + indexes; returns chunk id → corpus doc id."""
    if WORK.exists():
        shutil.rmtree(WORK)
    db = Database(settings.db_url)
    store = IndexStore(settings, db)
    t = time.perf_counter()
    doc_of_chunk: dict[int, str] = {}
    with db.session() as s:
        coll = repo.create_collection(s, "scifact", embedder.name, embedder.dim)
        i = 0
        for d, specs in zip(corpus, chunks):
            doc = Document(collection_id=coll.id, source=d["_id"], title=d.get("title") or None,
                           sha256=hashlib.sha256(doc_text(d).encode()).hexdigest(), media_type="text/plain",
                           size=len(doc_text(d)), meta={"corpus_id": d["_id"]}, chunk_count=len(specs))
            s.add(doc)
            s.flush()
            rows = []
            for ordinal, (text, a, b, ntok) in enumerate(specs):
                rows.append(Chunk(document_id=doc.id, collection_id=coll.id, ordinal=ordinal, text=text,
                                  char_start=a, char_end=b, token_count=ntok, meta={}, heading_path=[],
                                  embedding=vecs[i].tobytes()))
                i += 1
            s.add_all(rows)
            s.flush()
            for r in rows:
                doc_of_chunk[r.id] = d["_id"]
        repo.bump_generation(s, coll.id)
    t_db = time.perf_counter() - t
    t = time.perf_counter()
    with db.session() as s:
        coll = repo.require_collection(s, "scifact")
    store.rebuild_lexical(coll)
    t_lex = time.perf_counter() - t
    t = time.perf_counter()
    store.get(coll)
    t_vec = time.perf_counter() - t
    print(f"collection: {len(doc_of_chunk)} chunks; database {t_db:.1f}s, BM25 index {t_lex:.1f}s, "
          f"faiss {t_vec:.1f}s", flush=True)
    return db, store, doc_of_chunk


# ---------------------------------------------------------------------------------------------------------------
# Metrics (BEIR / pytrec_eval definitions)
# ---------------------------------------------------------------------------------------------------------------


def ndcg_at(ranked: list[str], rel: dict[str, int], k: int = 10) -> float:
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in rel.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: list[str], rel: dict[str, int], k: int) -> float:
    relevant = {d for d, r in rel.items() if r > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranked: list[str], rel: dict[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranked[:k]):
        if rel.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def evaluate(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]], qids: list[str]) -> dict[str, float]:
    m = {"nDCG@10": [], "Recall@10": [], "Recall@100": [], "MRR@10": []}
    for q in qids:
        r = runs.get(q, [])
        m["nDCG@10"].append(ndcg_at(r, qrels[q]))
        m["Recall@10"].append(recall_at(r, qrels[q], 10))
        m["Recall@100"].append(recall_at(r, qrels[q], 100))
        m["MRR@10"].append(mrr_at(r, qrels[q]))
    return {k: float(np.mean(v)) for k, v in m.items()}


def docs_ranking(ranked_chunks: list[int], doc_of: dict[int, str]) -> list[str]:
    """Max-pool chunks to documents: a document takes the rank of its best chunk."""
    seen: dict[str, None] = {}
    for cid in ranked_chunks:
        d = doc_of.get(cid)
        if d is not None and d not in seen:
            seen[d] = None
    return list(seen)


# ---------------------------------------------------------------------------------------------------------------
# Candidate generation once per query; fusion variants on top
# ---------------------------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, vindex: Any, lindex: LexicalIndex, doc_of: dict[int, str], queries: dict[str, str],
                 qvecs: dict[str, np.ndarray]) -> None:
        self.vindex, self.lindex, self.doc_of = vindex, lindex, doc_of
        self.queries, self.qvecs = queries, qvecs
        self.dense: dict[str, Candidates] = {}
        self.lex: dict[str, Candidates] = {}
        for q in queries:
            sc, ids = vindex.search(qvecs[q][None, :], DEPTH)
            ok = ids[0] >= 0
            self.dense[q] = Candidates(ids[0][ok], sc[0][ok])
        self.relex()

    def relex(self, lindex: LexicalIndex | None = None) -> None:
        lindex = lindex or self.lindex
        for q, text in self.queries.items():
            sc, ids = lindex.search(text, DEPTH)
            self.lex[q] = Candidates(ids, sc)

    def run_single(self, which: str) -> dict[str, list[str]]:
        src = self.dense if which == "dense" else self.lex
        return {q: docs_ranking(c.ids.tolist(), self.doc_of) for q, c in src.items()}

    def run_rrf(self, rrf_k: int, w_dense: float, w_lex: float) -> dict[str, list[str]]:
        out = {}
        for q in self.queries:
            fused = fuse_rrf({"dense": self.dense[q], "lexical": self.lex[q]},
                             {"dense": w_dense, "lexical": w_lex}, rrf_k)
            out[q] = docs_ranking([c for c, _ in rank_fused(fused)], self.doc_of)
        return out

    def full_scores(self, q: str) -> dict[str, dict[int, float]]:
        """Exact dense and BM25 scores over the union of both candidate lists (as Retriever does)."""
        d, lx = self.dense[q], self.lex[q]
        union = np.union1d(d.ids, lx.ids)
        found, vecs = self.vindex.get_vectors(union)
        dense = dict(zip(found.tolist(), (vecs @ self.qvecs[q]).tolist()))
        lex = dict(zip(lx.ids.tolist(), lx.scores.tolist()))
        missing = [c for c in union.tolist() if c not in lex]
        if missing:
            sc, ids = self.lindex.search(self.queries[q], len(missing), allowed_ids=np.asarray(missing))
            lex.update(zip(ids.tolist(), sc.tolist()))
        return {"dense": dense, "lexical": {c: lex.get(c, 0.0) for c in union.tolist()}}

    def run_weighted(self, w_dense: float, w_lex: float, cache: dict) -> dict[str, list[str]]:
        out = {}
        for q in self.queries:
            if q not in cache:
                cache[q] = self.full_scores(q)
            fused = fuse_weighted(cache[q], {"dense": w_dense, "lexical": w_lex})
            out[q] = docs_ranking([c for c, _ in rank_fused(fused)], self.doc_of)
        return out


# ---------------------------------------------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p) * 1e3)


def latency(retriever: Retriever, texts: list[str], mode: str) -> dict[str, float]:
    for t in texts[:10]:
        retriever.search(t, collection="scifact", k=10, mode=mode)
    embed, search, total, with_fetch = [], [], [], []
    for t in texts:
        t0 = time.perf_counter()
        res = retriever.search(t, collection="scifact", k=10, mode=mode)
        wall = time.perf_counter() - t0
        tm = res.timings
        e = tm.get("embed", 0.0)
        sfu = tm.get("dense", 0.0) + tm.get("lexical", 0.0) + tm.get("fuse", 0.0) + tm.get("filter", 0.0)
        embed.append(e)
        search.append(sfu)
        total.append(e + sfu)
        with_fetch.append(wall)
    return {"embed_p50": pct(embed, 50), "embed_p95": pct(embed, 95), "search_p50": pct(search, 50),
            "search_p95": pct(search, 95), "total_p50": pct(total, 50), "total_p95": pct(total, 95),
            "wall_p50": pct(with_fetch, 50), "wall_p95": pct(with_fetch, 95)}


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------


def fmt_row(name: str, tune: dict, held: dict, alls: dict) -> str:
    return (f"| {name} | {tune['nDCG@10']:.3f} | {held['nDCG@10']:.3f} | {alls['nDCG@10']:.3f} | "
            f"{alls['Recall@10']:.3f} | {alls['Recall@100']:.3f} | {alls['MRR@10']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-queries", type=int, default=300)
    ap.add_argument("--lexical-compare", action="store_true", help="also compare with bm25s (build/query time)")
    ap.add_argument("--quick", action="store_true", help="smaller parameter sweeps")
    ap.add_argument("--backend", default=Settings().embedding_backend,
                    help="embedding backend for the corpus and the quality runs (default: the Settings default)")
    ap.add_argument("--latency-only", action="store_true",
                    help="only time queries, on the collection a previous run left in bench/results/scifact")
    ap.add_argument("--query-backends", default=Settings().embedding_backend,
                    help="embedding backends to time query latency with, comma-separated (torch,onnx,onnx-int8)")
    args = ap.parse_args()

    corpus, queries, qrels = load_scifact()
    qids = sorted(queries)
    tune, held = split_queries(qids)
    print(f"SciFact: {len(corpus)} documents, {len(qids)} train queries with qrels "
          f"(tune {len(tune)}, held-out {len(held)})", flush=True)
    settings = Settings(data_dir=WORK, index_type="flat", embedding_backend=args.backend)
    embedder = Embedder.from_settings(settings)
    print(f"embedding backend {args.backend} -> {embedder.backend}; chunks {CHUNK_SIZE}/{CHUNK_OVERLAP}; lexical "
          f"window {settings.lexical_window}; fusion {settings.fusion} "
          f"{settings.dense_weight}/{settings.lexical_weight}", flush=True)
    report: dict[str, Any] = {"documents": len(corpus), "queries": len(qids), "tune": len(tune), "held": len(held),
                              "load_avg": os.getloadavg(), "configs": {}}
    if args.latency_only:
        db = Database(settings.db_url)
        store = IndexStore(settings, db)
        run_latency(args, settings, db, store, embedder, [queries[q] for q in qids], report)
        (RESULTS / "retrieval_latency.json").write_text(json.dumps(report, indent=2))
        return
    corpus, chunks = chunk_corpus(corpus, embedder)
    texts = [embedding_text(c[0], d.get("title") or None, (), count_tokens=embedder.count_tokens,
                            max_tokens=embedder.max_tokens, text_tokens=c[3])
             for d, specs in zip(corpus, chunks) for c in specs]
    ntok = [c[3] for specs in chunks for c in specs]
    print(f"chunks: {len(texts)} (max {max(ntok)} word pieces, {sum(len(s) > 1 for s in chunks)} documents "
          f"split in several chunks)", flush=True)
    vecs = embed_cached("scifact_chunks", texts, embedder)
    qvec_arr = embed_cached("scifact_queries", [queries[q] for q in qids], embedder)
    qvecs = dict(zip(qids, qvec_arr))
    db, store, doc_of = build_collection(settings, corpus, chunks, vecs, embedder)
    with db.session() as s:
        coll = repo.require_collection(s, "scifact")
    vindex, lindex = store.get_both(coll)
    runner = Runner(vindex, lindex, doc_of, queries, qvecs)
    report["chunks"] = len(texts)

    def record(name: str, runs: dict[str, list[str]], params: dict | None = None) -> dict:
        r = {"tune": evaluate(runs, qrels, tune), "held": evaluate(runs, qrels, held),
             "all": evaluate(runs, qrels, qids), "params": params or {}}
        report["configs"][name] = r
        return r

    record("dense", runner.run_single("dense"))
    record(f"lexical (BM25 k1={settings.bm25_k1}, b={settings.bm25_b})", runner.run_single("lexical"))

    # BM25 parameters, tuned on the tuning split.
    best_bm25 = (settings.bm25_k1, settings.bm25_b, report["configs"][
        f"lexical (BM25 k1={settings.bm25_k1}, b={settings.bm25_b})"]["tune"]["nDCG@10"])
    grid = [(k1, b) for k1 in (0.9, 1.2, 1.5) for b in (0.5, 0.75, 0.9)] if not args.quick else []
    ids_all, texts_all = list(doc_of), None
    if grid:
        with db.session() as s:
            # what the store indexes (title + headings + the chunk in its window)
            ids_all, texts_all = _collection_texts(s, coll.id, settings.lexical_window)
        for k1, b in grid:
            lx = LexicalIndex.build(ids_all, texts_all, k1=k1, b=b)
            runs = {q: docs_ranking(lx.search(queries[q], DEPTH)[1].tolist(), doc_of) for q in tune}
            score = evaluate(runs, qrels, tune)["nDCG@10"]
            if score > best_bm25[2] + 1e-9:
                best_bm25 = (k1, b, score)
        print(f"BM25 tuned on the tuning split: k1={best_bm25[0]}, b={best_bm25[1]} "
              f"(tune nDCG@10 {best_bm25[2]:.3f})", flush=True)
        report["bm25_tuned"] = {"k1": best_bm25[0], "b": best_bm25[1]}

    # Fusion variants (on the default BM25 parameters, as the retriever runs them).
    record("hybrid RRF k=60 (plain)", runner.run_rrf(60, 1.0, 1.0), {"rrf_k": 60, "w": [1, 1]})
    best_rrf = None
    for rrf_k in ((10, 30, 60, 100) if not args.quick else (60,)):
        for wd, wl in ((1.0, 1.0), (1.0, 0.7), (1.0, 1.5), (0.7, 1.0), (1.0, 2.0)):
            runs = runner.run_rrf(rrf_k, wd, wl)
            sc = evaluate(runs, qrels, tune)["nDCG@10"]
            if best_rrf is None or sc > best_rrf[0] + 1e-9:
                best_rrf = (sc, rrf_k, wd, wl)
    assert best_rrf is not None
    _, rk, wd, wl = best_rrf
    record(f"hybrid RRF tuned (k={rk}, w={wd}/{wl})", runner.run_rrf(rk, wd, wl),
           {"rrf_k": rk, "w": [wd, wl]})
    cache: dict = {}
    best_w = None
    for wd in (0.3, 0.4, 0.5, 0.6, 0.7):
        runs = runner.run_weighted(wd, 1.0 - wd, cache)
        sc = evaluate(runs, qrels, tune)["nDCG@10"]
        if best_w is None or sc > best_w[0] + 1e-9:
            best_w = (sc, wd)
    assert best_w is not None
    wd0, wl0 = settings.dense_weight, settings.lexical_weight
    record(f"hybrid weighted {wd0}/{wl0} (min-max, the default)", runner.run_weighted(wd0, wl0, cache),
           {"w": [wd0, wl0]})
    record(f"hybrid weighted tuned ({best_w[1]:.1f}/{1 - best_w[1]:.1f})",
           runner.run_weighted(best_w[1], 1.0 - best_w[1], cache), {"w": [best_w[1], 1 - best_w[1]]})

    # Lexical with tuned BM25 parameters, and fusion on top of it.
    if grid and (best_bm25[0], best_bm25[1]) != (settings.bm25_k1, settings.bm25_b):
        lx = LexicalIndex.build(ids_all, texts_all, k1=best_bm25[0], b=best_bm25[1])
        runner.relex(lx)
        runner.lindex = lx
        record(f"lexical (BM25 k1={best_bm25[0]}, b={best_bm25[1]})", runner.run_single("lexical"))
        record("hybrid RRF tuned + tuned BM25", runner.run_rrf(rk, wd, wl))
        record("hybrid weighted tuned + tuned BM25", runner.run_weighted(best_w[1], 1.0 - best_w[1], {}))
        runner.relex(lindex)
        runner.lindex = lindex

    # Lexical window sweep (the chunk's neighbours each side in its BM25 text), default BM25 and fusion weights.
    if not args.quick:
        for window in sorted({0, 1, 2, 3} - {settings.lexical_window}):
            with db.session() as s:
                ids_w, texts_w = _collection_texts(s, coll.id, window)
            lx = LexicalIndex.build(ids_w, texts_w, k1=settings.bm25_k1, b=settings.bm25_b, window=window)
            runner.relex(lx)
            runner.lindex = lx
            record(f"lexical, window {window}", runner.run_single("lexical"), {"window": window})
            record(f"hybrid weighted {wd0}/{wl0}, lexical window {window}", runner.run_weighted(wd0, wl0, {}),
                   {"window": window})
        runner.relex(lindex)
        runner.lindex = lindex

    # The default configuration end to end through Retriever.search (database fetch included).
    retriever = Retriever(settings, db, store, embedder)
    runs = {}
    for q in qids:
        res = retriever.search(queries[q], collection="scifact", k=DEPTH, candidates=DEPTH)
        runs[q] = docs_ranking([h.chunk_id for h in res.hits], doc_of)
    record(f"ctxqa default via Retriever.search ({settings.retrieval_mode}, {settings.fusion})", runs,
           {"mode": settings.retrieval_mode, "fusion": settings.fusion, "rrf_k": settings.rrf_k,
            "weights": [settings.dense_weight, settings.lexical_weight]})

    print("\n### SciFact (BEIR), nDCG@10 on tune / held-out / all; other measures on all queries\n")
    print("| configuration | nDCG@10 tune | nDCG@10 held-out | nDCG@10 all | Recall@10 | Recall@100 | MRR@10 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in report["configs"].items():
        print(fmt_row(name, r["tune"], r["held"], r["all"]))

    if args.latency_queries > 0:
        run_latency(args, settings, db, store, embedder, [queries[q] for q in qids], report)
    report["load_avg_end"] = os.getloadavg()

    if args.lexical_compare:
        report["lexical_compare"] = lexical_compare(doc_of, db, queries, qrels, qids)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrieval.json").write_text(json.dumps(report, indent=2))
    print(f"\nload average at start {report['load_avg']}, at end {report['load_avg_end']}")


def run_latency(args: Any, settings: Settings, db: Database, store: IndexStore, embedder: Embedder,
                texts: list[str], report: dict[str, Any]) -> None:
    """Per-query latency through Retriever.search, one query at a time, per mode and embedding backend."""
    retriever = Retriever(settings, db, store, embedder)
    lat_texts = texts[: args.latency_queries]
    report["latency"] = {}
    print("\n### Latency per query (ms), one at a time\n")
    print("| mode (query embedding backend) | embed p50 | embed p95 | search+fusion p50 | search+fusion p95 | "
          "embed+search p50 | embed+search p95 | with DB fetch p50 | with DB fetch p95 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def time_one(name: str, r_b: Retriever, mode: str) -> None:
        lat = latency(r_b, lat_texts, mode)
        report["latency"][name] = lat
        print(f"| {name} | {lat['embed_p50']:.2f} | {lat['embed_p95']:.2f} | {lat['search_p50']:.2f} | "
              f"{lat['search_p95']:.2f} | {lat['total_p50']:.2f} | {lat['total_p95']:.2f} | {lat['wall_p50']:.2f} | "
              f"{lat['wall_p95']:.2f} |", flush=True)

    for spec in args.query_backends.split(","):
        # "backend" or "backend@threads" (inference threads of the query embedder, e.g. torch@1)
        backend, _, threads = spec.partition("@")
        r_b = retriever
        if backend != settings.embedding_backend or threads:
            upd: dict[str, Any] = {"embedding_backend": backend}
            if threads:
                upd["embedding_threads"] = int(threads)
            emb_b = Embedder.from_settings(settings.model_copy(update=upd))
            if emb_b.backend != backend:
                print(f"(backend {backend} unavailable: skipped)")
                continue
            r_b = Retriever(settings, db, store, emb_b)
        # Timed right away: torch's thread count is process-wide, a later embedder would change it.
        for mode in ("dense", "lexical", "hybrid"):
            if spec == args.query_backends.split(",")[0] or mode != "lexical":
                time_one(f"{mode} ({spec})", r_b, mode)

    report["load_avg_end"] = os.getloadavg()
    print(f"load average {os.getloadavg()}")


def lexical_compare(doc_of: dict[int, str], db: Database, queries: dict[str, str], qrels: dict, qids: list[str]
                    ) -> dict[str, Any]:
    """ctxqa's incremental BM25 vs bm25s (static): build, one-chunk update, query time, nDCG@10."""
    import bm25s

    from ctxqa.rag.index.lexical import Tokenizer

    with db.session() as s:
        coll = repo.require_collection(s, "scifact")
        ids, texts = _collection_texts(s, coll.id)
    tok = Tokenizer()
    out: dict[str, Any] = {}
    t = time.perf_counter()
    mine = LexicalIndex.build(ids, texts, k1=1.5, b=0.75, tokenizer=tok)
    out["ctxqa_build_s"] = time.perf_counter() - t
    t = time.perf_counter()
    mine.remove([ids[0]])
    mine.add([ids[0]], [texts[0] + " updated"])
    out["ctxqa_update_one_s"] = time.perf_counter() - t

    def bm25s_build() -> tuple[Any, dict[str, int]]:
        toks = [tok(x) for x in texts]
        vocab: dict[str, int] = {}
        tid = [[vocab.setdefault(w, len(vocab)) for w in d] for d in toks]
        model = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
        model.index(bm25s.tokenization.Tokenized(ids=tid, vocab=vocab), show_progress=False)
        return model, vocab

    t = time.perf_counter()
    model, vocab = bm25s_build()
    out["bm25s_build_s"] = time.perf_counter() - t
    out["bm25s_update_one_s"] = out["bm25s_build_s"]  # static: an update is a full rebuild
    lat_m, lat_b, runs_m, runs_b = [], [], {}, {}
    id_arr = np.asarray(ids)
    for q in qids:
        t = time.perf_counter()
        _, got = mine.search(queries[q], DEPTH)
        lat_m.append(time.perf_counter() - t)
        runs_m[q] = docs_ranking(got.tolist(), doc_of)
        t = time.perf_counter()
        qt = [vocab[w] for w in dict.fromkeys(tok(queries[q])) if w in vocab]
        scores = model.get_scores(qt) if qt else np.zeros(len(ids))
        top = np.argsort(-scores)[:DEPTH]
        top = top[scores[top] > 0]
        lat_b.append(time.perf_counter() - t)
        runs_b[q] = docs_ranking(id_arr[top].tolist(), doc_of)
    out["ctxqa_query_p50_ms"] = pct(lat_m, 50)
    out["bm25s_query_p50_ms"] = pct(lat_b, 50)
    out["ctxqa_ndcg10"] = evaluate(runs_m, qrels, qids)["nDCG@10"]
    out["bm25s_ndcg10"] = evaluate(runs_b, qrels, qids)["nDCG@10"]
    print("\n### Lexical index: ctxqa incremental BM25 vs bm25s (k1=1.5, b=0.75, same tokenizer)\n")
    print("| index | build s | update one chunk s | query p50 ms | nDCG@10 all |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| ctxqa LexicalIndex | {out['ctxqa_build_s']:.2f} | {out['ctxqa_update_one_s']:.4f} | "
          f"{out['ctxqa_query_p50_ms']:.2f} | {out['ctxqa_ndcg10']:.3f} |")
    print(f"| bm25s (static) | {out['bm25s_build_s']:.2f} | {out['bm25s_update_one_s']:.2f} (rebuild) | "
          f"{out['bm25s_query_p50_ms']:.2f} | {out['bm25s_ndcg10']:.3f} |")
    return out


if __name__ == "__main__":
    main()
