"""Retrieval: query → ranked chunks (Hits): dense + lexical candidates → fuse → rerank → diversify.

    Retriever(settings, db, store, embedder, reranker=None)
    .search(query, *, collection=None, k=None, mode=None, filters=None, fusion=None, weights=None,
            candidates=None, mmr=None, mmr_lambda=None, max_per_document=None, rerank=None) -> SearchResult
    .is_relevant(hits, threshold=None) -> bool          (abstention: is anything relevant retrieved?)
    .expand_neighbours(hits, *, window=None, budget_tokens=None, count_tokens=None) -> list[Hit]

Steps of `search` (several collections: each retriever's candidates are merged by raw score before fusion):
1. Filters (rag/filters.py) resolve to the allowed chunk ids, handed to both indexes, which restrict their
   candidates *before* the top-k cut: a filtered search returns k hits whenever k chunks match.
2. mode=dense: faiss top-`candidates` by cosine. mode=lexical: BM25 top-`candidates`. mode=hybrid: both.
3. Fusion (hybrid): `rrf` = sum_r w_r / (rrf_k + rank_r); `weighted` = sum_r w_r * norm_r(score), where each
   retriever's scores are min-max normalised over the union of candidates and a candidate missing from one
   list is scored exactly by that retriever (its stored vector's cosine; its BM25 score), not set to zero.
   The default (`Settings.fusion` = weighted, 0.6/0.4) is the one bench/retrieval.py measured best on SciFact
   (BEIR, nDCG@10, chunks max-pooled to documents; weights chosen on 30 % of the train queries, reported on the
   other 70 %; 128-piece chunks embedded under their title, BM25 over windows of 2 neighbours each side):
   dense 0.692, BM25 0.694, RRF 0.733, weighted 0.746 held-out (0.751 on all 809 queries).
4. Optional cross-encoder re-scoring of the top `rerank_depth` fused candidates (Settings.cross_encoder_model).
5. Optional diversity: at most `max_per_document` hits per document; maximal marginal relevance (MMR) over the
   candidates' stored vectors (`mmr_lambda` = 1 is pure relevance).
6. Truncate to k and fetch the rows: `Hit.score` is the final ranking score (fused, reranked...), and
   `Hit.scores` keeps the per-retriever evidence: "dense" (cosine of the chunk's stored vector with the query,
   present for every hit whenever the query was embedded), "lexical" (BM25), "dense_rank"/"lexical_rank"
   (1-based, absent when not in that retriever's candidates), "fused", "rerank".

Abstention: fused scores (RRF especially) depend on the query and are not comparable across queries, so
`is_relevant` uses the best hit's dense cosine ("dense" in Hit.scores), a calibrated, query-independent scale:
the threshold default was chosen on ClapNQ dev by bench/calibrate_abstention.py (see DEFAULT_ABSTAIN_THRESHOLD).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ctxqa.rag.config import Settings
from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Collection
from ctxqa.rag.db.session import Database
from ctxqa.rag.embed.embedder import Embedder
from ctxqa.rag.retrieve.filters import Filters, allowed_chunk_ids
from ctxqa.rag.index.store import IndexStore
from ctxqa.rag.types import Hit

Mode = Literal["dense", "lexical", "hybrid"]
Fusion = Literal["rrf", "weighted"]
MODES: tuple[str, ...] = ("dense", "lexical", "hybrid")
FUSIONS: tuple[str, ...] = ("rrf", "weighted")

# Dense cosine of the best hit below which nothing relevant was retrieved (Settings.abstain_threshold = None).
# Calibrated by bench/calibrate_abstention.py on ClapNQ dev (100 answerable + 100 unanswerable questions over their
# 199 passages, hybrid k=5, the default embedder, chunking and backend): best dense cosine separates answerable from
# unanswerable with AUC 0.83 and from out-of-domain questions (SciFact claims) with AUC 0.997 (fused scores: 0.59 /
# 0.94). 0.54 is the highest threshold that keeps >= 95 % of the answerable questions; it abstains on 52 % of the
# unanswerable ones (abstention precision 0.91) and 99 % of the out-of-domain ones. The balanced-accuracy optimum,
# 0.57, would stop 64 % of unanswerable questions but also 12 % of answerable ones: too costly, since the
# context-obedient models decline on-topic-but-unanswerable questions themselves.
DEFAULT_ABSTAIN_THRESHOLD = 0.54

_FILTER_CACHE_SIZE = 64


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)  # seconds: embed, filter, dense, lexical, fuse, ...
    mode: str = "hybrid"


@dataclass
class Candidates:
    """One retriever's ranked candidates: chunk ids best first, with their raw scores."""

    ids: np.ndarray
    scores: np.ndarray


# ---------------------------------------------------------------------------------------------------------------
# Pure fusion and diversity functions (also used by bench/retrieval.py)
# ---------------------------------------------------------------------------------------------------------------


def fuse_rrf(lists: dict[str, Candidates], weights: dict[str, float], rrf_k: int = 60) -> dict[int, float]:
    """Reciprocal rank fusion: chunk id → sum over retrievers of weight / (rrf_k + rank), rank from 1."""
    out: dict[int, float] = {}
    for name, cand in lists.items():
        w = weights.get(name, 1.0)
        if w == 0:
            continue
        for rank, cid in enumerate(cand.ids.tolist(), start=1):
            out[cid] = out.get(cid, 0.0) + w / (rrf_k + rank)
    return out


def minmax(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return values
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        return np.ones_like(values)
    return (values - lo) / (hi - lo)


def fuse_weighted(full: dict[str, dict[int, float]], weights: dict[str, float]) -> dict[int, float]:
    """Score-normalised weighted fusion over the union of candidates. `full[name][cid]` is retriever `name`'s
    raw score for every candidate (exactly computed, 0 for BM25 without a shared term); each retriever's scores
    are min-max normalised over the union, then combined with `weights`."""
    union = sorted({cid for scores in full.values() for cid in scores})
    if not union:
        return {}
    total = np.zeros(len(union))
    for name, scores in full.items():
        w = weights.get(name, 1.0)
        if w == 0:
            continue
        raw = np.array([scores.get(cid, 0.0) for cid in union])
        total += w * minmax(raw)
    return dict(zip(union, total.tolist()))


def rank_fused(fused: dict[int, float]) -> list[tuple[int, float]]:
    """Best first; ties broken by chunk id so results are deterministic."""
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def cap_per_document(ranked: Sequence[tuple[int, float]], doc_of: dict[int, int], cap: int
                     ) -> list[tuple[int, float]]:
    """Keep at most `cap` chunks of any one document, preserving order."""
    seen: dict[int, int] = {}
    out = []
    for cid, score in ranked:
        d = doc_of.get(cid, -cid)
        if seen.get(d, 0) < cap:
            seen[d] = seen.get(d, 0) + 1
            out.append((cid, score))
    return out


def mmr_select(ranked: Sequence[tuple[int, float]], vectors: dict[int, np.ndarray], k: int, lam: float
               ) -> list[tuple[int, float]]:
    """Maximal marginal relevance: greedily pick argmax lam * rel - (1 - lam) * max cos(selected).

    Relevance is the ranking score min-max normalised over the candidates (so fused and reranked scores of any
    scale work); a candidate without a vector is treated as dissimilar to everything."""
    if not ranked:
        return []
    ids = [cid for cid, _ in ranked]
    rel = minmax(np.array([s for _, s in ranked]))
    dim = next((v.shape[0] for v in vectors.values()), 0)
    mat = np.stack([vectors.get(cid, np.zeros(dim, dtype=np.float32)) for cid in ids]) if dim else None
    chosen: list[int] = []
    max_sim = np.full(len(ids), -np.inf)
    available = np.ones(len(ids), dtype=bool)
    for _ in range(min(k, len(ids))):
        red = np.where(np.isfinite(max_sim), max_sim, 0.0)
        obj = lam * rel - (1.0 - lam) * red
        obj[~available] = -np.inf
        j = int(np.argmax(obj))
        chosen.append(j)
        available[j] = False
        if mat is not None:
            max_sim = np.maximum(max_sim, mat @ mat[j])
    return [ranked[j] for j in chosen]


def _merge_candidates(parts: list[Candidates], n: int) -> Candidates:
    """One retriever's candidates from several collections, best raw score first (ties by chunk id)."""
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p.ids for p in parts]).astype(np.int64)
    scores = np.concatenate([p.scores for p in parts]).astype(np.float32)
    order = np.lexsort((ids, -scores))[:n]
    return Candidates(ids[order], scores[order])


# ---------------------------------------------------------------------------------------------------------------
# The retriever
# ---------------------------------------------------------------------------------------------------------------


class Retriever:
    def __init__(self, settings: Settings, db: Database, store: IndexStore, embedder: Embedder,
                 reranker: Any | None = None) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.embedder = embedder
        self._reranker = reranker
        self._filter_cache: OrderedDict[tuple[int, int, str], np.ndarray | None] = OrderedDict()
        self._lock = threading.Lock()  # guards the filter cache and the lazy reranker (the API is threaded)

    # -- configuration -------------------------------------------------------------------------------------
    @property
    def abstain_threshold(self) -> float:
        t = self.settings.abstain_threshold
        return DEFAULT_ABSTAIN_THRESHOLD if t is None else float(t)

    @property
    def reranker(self) -> Any | None:
        """The cross-encoder when `cross_encoder_model` is configured (loaded on first use), else None."""
        if self._reranker is None and self.settings.cross_encoder_model:
            from ctxqa.rag.retrieve.rerank import Reranker

            with self._lock:
                if self._reranker is None:
                    self._reranker = Reranker(self.settings.cross_encoder_model)
        return self._reranker

    # -- search --------------------------------------------------------------------------------------------
    def search(self, query: str, *, collection: str | Sequence[str] | None = None, k: int | None = None,
               mode: str | None = None, filters: Filters | dict[str, Any] | None = None,
               fusion: str | None = None, weights: dict[str, float] | Sequence[float] | None = None,
               candidates: int | None = None, mmr: bool | None = None, mmr_lambda: float | None = None,
               max_per_document: int | None = None, rerank: bool | None = None) -> SearchResult:
        """Top-k hits for `query`. Arguments left None take their defaults from Settings.

        collection: a name or several names (candidates merged by raw score, then fused once).
        mode: dense | lexical | hybrid.  fusion: rrf | weighted (hybrid only).
        weights: {"dense": w, "lexical": w} or (w_dense, w_lexical).
        filters: a Filters or a dict of its fields (validated; invalid → pydantic ValidationError).
        rerank: None = use the cross-encoder when one is configured; False = never; True = required.
        """
        s = self.settings
        k = int(k or s.top_k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        mode = mode or s.retrieval_mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        fusion = fusion or s.fusion
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}; got {fusion!r}")
        w = self._weights(weights)
        flt = Filters.coerce(filters)
        n_cand = max(int(candidates or s.retrieval_candidates), k)
        use_mmr = s.mmr if mmr is None else bool(mmr)
        lam = s.mmr_lambda if mmr_lambda is None else float(mmr_lambda)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"mmr_lambda must be within [0, 1], got {lam}")
        cap = max_per_document if max_per_document is not None else s.max_chunks_per_document
        if cap is not None and cap < 1:
            raise ValueError(f"max_per_document must be at least 1, got {cap}")
        reranker = None
        if rerank is None or rerank:
            reranker = self.reranker
            if rerank and reranker is None:
                raise ValueError("rerank requested but no cross-encoder is configured (cross_encoder_model)")

        names = [collection] if isinstance(collection, str) or collection is None else list(collection)
        names = [n or s.default_collection for n in names]
        if not names:
            raise ValueError("no collection given")
        timings: dict[str, float] = {}

        def tick(key: str, t0: float) -> float:
            now = time.perf_counter()
            timings[key] = timings.get(key, 0.0) + now - t0
            return now

        t = time.perf_counter()
        colls: list[Collection] = []
        with self.db.session() as ses:
            for name in dict.fromkeys(names):
                coll = repo.require_collection(ses, name)
                if mode != "lexical":
                    repo.check_embedder(coll, self.embedder.name, self.embedder.dim)
                colls.append(coll)
        t = tick("prepare", t)
        qv = None
        if mode != "lexical":
            qv = self.embedder.encode_query(query)
            t = tick("embed", t)

        lists: dict[str, list[Candidates]] = {}
        evidence_all: dict[int, dict[str, float]] = {}
        vectors: dict[int, np.ndarray] = {}
        coll_of: dict[int, str] = {}
        doc_of: dict[int, int] = {}
        for coll in colls:
            c_lists, evidence, vecs = self._collect(coll, query, qv, mode, fusion, flt, n_cand, timings)
            for name, cand in c_lists.items():
                lists.setdefault(name, []).append(cand)
            evidence_all.update(evidence)
            vectors.update(vecs)
            coll_of.update((cid, coll.name) for cid in evidence)
        # Several collections: each retriever's lists merge by raw score, then fusion runs once over the merged
        # lists. Cosines share one embedder and compare exactly; BM25 statistics (idf, average length) are per
        # collection, so lexical scores of very differently sized collections compare only roughly.
        t = time.perf_counter()
        merged = {name: _merge_candidates(parts, n_cand) for name, parts in lists.items()}
        ranked_all = self._fuse(merged, evidence_all, mode, fusion, w)
        timings["fuse"] = timings.get("fuse", 0.0) + time.perf_counter() - t

        t = time.perf_counter()
        if reranker is not None and ranked_all:
            ranked_all = self._rerank(reranker, query, ranked_all[: max(s.rerank_depth, k)], evidence_all)
            t = tick("rerank", t)
        if cap is not None or use_mmr:
            doc_of = self._documents_of([cid for cid, _ in ranked_all])
        if cap is not None:
            ranked_all = cap_per_document(ranked_all, doc_of, cap)
        if use_mmr:
            ranked_all = mmr_select(ranked_all, vectors, k, lam)
        ranked_all = ranked_all[:k]
        t = tick("diversify", t)

        hits: list[Hit] = []
        with self.db.session() as ses:
            for name in dict.fromkeys(coll_of[cid] for cid, _ in ranked_all):
                part = [(cid, sc) for cid, sc in ranked_all if coll_of[cid] == name]
                hits.extend(repo.hits_for(ses, part, name, {cid: evidence_all.get(cid, {}) for cid, _ in part}))
        order = {cid: i for i, (cid, _) in enumerate(ranked_all)}
        hits.sort(key=lambda h: order[h.chunk_id])
        tick("fetch", t)
        return SearchResult(hits, timings, mode)

    def _weights(self, weights: dict[str, float] | Sequence[float] | None) -> dict[str, float]:
        if weights is None:
            w = {"dense": self.settings.dense_weight, "lexical": self.settings.lexical_weight}
        elif isinstance(weights, dict):
            unknown = set(weights) - {"dense", "lexical"}
            if unknown:
                raise ValueError(f"weights take the keys 'dense' and 'lexical'; got {sorted(unknown)}")
            w = {"dense": self.settings.dense_weight, "lexical": self.settings.lexical_weight, **weights}
        else:
            vals = list(weights)
            if len(vals) != 2:
                raise ValueError("weights must be (dense, lexical)")
            w = {"dense": float(vals[0]), "lexical": float(vals[1])}
        if any(v < 0 for v in w.values()) or not any(v > 0 for v in w.values()):
            raise ValueError(f"weights must be >= 0 and not all zero; got {w}")
        return {key: float(v) for key, v in w.items()}

    def _allowed(self, coll: Collection, flt: Filters | None, generation: int) -> np.ndarray | None:
        if flt is None:
            return None
        key = (coll.id, generation, flt.key())
        with self._lock:
            if key in self._filter_cache:
                self._filter_cache.move_to_end(key)
                return self._filter_cache[key]
        with self.db.session() as ses:
            allowed = allowed_chunk_ids(ses, coll.id, flt)
        with self._lock:
            self._filter_cache[key] = allowed
            while len(self._filter_cache) > _FILTER_CACHE_SIZE:
                self._filter_cache.popitem(last=False)
        return allowed

    def _collect(self, coll: Collection, query: str, qv: np.ndarray | None, mode: str, fusion: str,
                 flt: Filters | None, n_cand: int, timings: dict[str, float]
                 ) -> tuple[dict[str, Candidates], dict[int, dict[str, float]], dict[int, np.ndarray]]:
        """One collection's candidates per retriever, their evidence (raw scores; every candidate's dense cosine
        from its stored vector; in weighted hybrid also every candidate's exact BM25) and stored vectors."""
        t = time.perf_counter()
        vindex, lindex = self.store.get_both(coll)
        allowed = self._allowed(coll, flt, vindex.generation)
        timings["filter"] = timings.get("filter", 0.0) + time.perf_counter() - t
        lists: dict[str, Candidates] = {}
        if allowed is not None and not len(allowed):
            return lists, {}, {}
        if mode in ("dense", "hybrid") and qv is not None:
            t = time.perf_counter()
            sc, ids = vindex.search(qv[None, :], n_cand, allowed_ids=allowed)
            ok = (ids[0] >= 0) & np.isfinite(sc[0])
            lists["dense"] = Candidates(ids[0][ok], sc[0][ok])
            timings["dense"] = timings.get("dense", 0.0) + time.perf_counter() - t
        dense_lex: dict[int, float] = {}
        if mode in ("lexical", "hybrid"):
            t = time.perf_counter()
            also = lists["dense"].ids if "dense" in lists and fusion == "weighted" else None
            sc, ids, also_sc = lindex.search_scores(query, n_cand, allowed_ids=allowed, also=also)
            lists["lexical"] = Candidates(ids, sc)
            if also is not None:
                dense_lex = dict(zip(also.tolist(), also_sc.tolist()))
            timings["lexical"] = timings.get("lexical", 0.0) + time.perf_counter() - t

        t = time.perf_counter()
        evidence: dict[int, dict[str, float]] = {}
        for name, cand in lists.items():
            for cid, score in zip(cand.ids.tolist(), cand.scores.tolist()):
                evidence.setdefault(cid, {})[name] = float(score)
        union = np.fromiter(evidence.keys(), dtype=np.int64, count=len(evidence))
        # Stored vectors of all candidates: exact dense scores for lexical-only ones, and MMR similarities.
        vectors: dict[int, np.ndarray] = {}
        if qv is not None and len(union):
            found, vecs = vindex.get_vectors(union)
            cos = vecs @ qv
            for cid, v, c in zip(found.tolist(), vecs, cos.tolist()):
                vectors[cid] = v
                evidence[cid]["dense"] = float(c)
        if mode == "hybrid" and fusion == "weighted":
            for cid, ev in evidence.items():  # dense candidates' BM25, computed in the lexical pass
                if "lexical" not in ev:
                    ev["lexical"] = float(dense_lex.get(cid, 0.0))
        timings["fuse"] = timings.get("fuse", 0.0) + time.perf_counter() - t
        return lists, evidence, vectors

    def _fuse(self, lists: dict[str, Candidates], evidence: dict[int, dict[str, float]], mode: str, fusion: str,
              w: dict[str, float]) -> list[tuple[int, float]]:
        for name, cand in lists.items():
            for rank, cid in enumerate(cand.ids.tolist(), start=1):
                evidence[cid][f"{name}_rank"] = float(rank)
        if mode in ("dense", "lexical"):
            cand = lists.get(mode)
            return [] if cand is None else [(int(c), float(v)) for c, v in zip(cand.ids, cand.scores)]
        if fusion == "rrf":
            ranked = rank_fused(fuse_rrf(lists, w, self.settings.rrf_k))
        else:
            full = {name: {cid: ev.get(name, 0.0) for cid, ev in evidence.items()} for name in lists}
            ranked = rank_fused(fuse_weighted(full, w))
        for cid, score in ranked:
            evidence[cid]["fused"] = score
        return ranked

    def _rerank(self, reranker: Any, query: str, ranked: list[tuple[int, float]],
                evidence: dict[int, dict[str, float]]) -> list[tuple[int, float]]:
        from ctxqa.rag.db.models import Chunk
        from sqlalchemy import select

        ids = [cid for cid, _ in ranked]
        with self.db.session() as ses:
            texts = dict(ses.execute(select(Chunk.id, Chunk.text).where(Chunk.id.in_(ids))).all())
        ids = [cid for cid in ids if cid in texts]
        scores = reranker.score(query, [texts[cid] for cid in ids])
        for cid, sc in zip(ids, scores.tolist()):
            evidence.setdefault(cid, {})["rerank"] = float(sc)
        return sorted(zip(ids, (float(x) for x in scores)), key=lambda kv: (-kv[1], kv[0]))

    def _documents_of(self, chunk_ids: Sequence[int]) -> dict[int, int]:
        from ctxqa.rag.db.models import Chunk
        from sqlalchemy import select

        if not chunk_ids:
            return {}
        with self.db.session() as ses:
            return {int(c): int(d) for c, d in ses.execute(
                select(Chunk.id, Chunk.document_id).where(Chunk.id.in_(list(chunk_ids)))).all()}

    # -- abstention ----------------------------------------------------------------------------------------
    @staticmethod
    def relevance(hits: Sequence[Hit]) -> float | None:
        """The best hit's dense cosine (query-independent scale), or None when no hit has dense evidence."""
        vals = [h.scores["dense"] for h in hits if "dense" in h.scores]
        return max(vals) if vals else None

    def is_relevant(self, hits: Sequence[Hit], threshold: float | None = None) -> bool:
        """Whether the hits hold something relevant enough to answer from: the best dense cosine reaches the
        abstention threshold (Settings.abstain_threshold, default DEFAULT_ABSTAIN_THRESHOLD). No hits → False.
        Hits without dense evidence (lexical mode) cannot be judged and count as relevant."""
        if not hits:
            return False
        rel = self.relevance(hits)
        if rel is None:
            return True
        return rel >= (self.abstain_threshold if threshold is None else threshold)

    # -- neighbours ----------------------------------------------------------------------------------------
    def expand_neighbours(self, hits: Sequence[Hit], *, window: int | None = None,
                          budget_tokens: int | None = None, count_tokens: Callable[[str], int] | None = None
                          ) -> list[Hit]:
        """The hits with up to `window` adjacent chunks (same document, ordinal ± 1..window) of each, placed
        right after the hit they surround, in ordinal order, so that the prompt builder merges each run into one
        block. Hits keep their rank order; a chunk appears once. Neighbours carry their anchor's score and
        `scores["neighbour_of"]` = the anchor's chunk id.

        With `budget_tokens`, neighbours are only added while the texts of all hits plus the neighbours added
        so far fit the budget (counted with `count_tokens`, default: whitespace words): the hits themselves are
        never displaced, and the best-ranked hits get their context first (nearest neighbours first)."""
        window = self.settings.neighbour_window if window is None else int(window)
        hits = list(hits)
        if window <= 0 or not hits:
            return hits
        count = count_tokens or (lambda text: len(text.split()))
        have = {h.chunk_id for h in hits}
        used = sum(count(h.text) for h in hits) if budget_tokens is not None else 0
        by_doc: dict[int, list[Hit]] = {}
        for h in hits:
            by_doc.setdefault(h.document_id, []).append(h)
        # Fetch every candidate neighbour row at once per document.
        wanted: dict[int, set[int]] = {}
        for h in hits:
            for d in range(1, window + 1):
                wanted.setdefault(h.document_id, set()).update((h.ordinal - d, h.ordinal + d))
        rows: dict[tuple[int, int], Hit] = {}
        with self.db.session() as ses:
            for doc_id, ords in wanted.items():
                chunks = repo.neighbours(ses, doc_id, sorted(o for o in ords if o >= 0))
                if not chunks:
                    continue
                anchor = by_doc[doc_id][0]
                for n in repo.hits_for(ses, [(c.id, 0.0) for c in chunks], anchor.collection):
                    rows[(doc_id, n.ordinal)] = n
        added: dict[int, list[Hit]] = {h.chunk_id: [] for h in hits}
        for dist in range(1, window + 1):  # nearest first, best-ranked hit first
            for h in hits:
                for o in (h.ordinal - dist, h.ordinal + dist):
                    n = rows.get((h.document_id, o))
                    if n is None or n.chunk_id in have:
                        continue
                    if budget_tokens is not None:
                        cost = count(n.text)
                        if used + cost > budget_tokens:
                            continue
                        used += cost
                    have.add(n.chunk_id)
                    n.score = h.score
                    n.scores = {"neighbour_of": float(h.chunk_id)}
                    added[h.chunk_id].append(n)
        out: list[Hit] = []
        for h in hits:
            group = sorted([h, *added[h.chunk_id]], key=lambda x: x.ordinal)
            out.extend(group)
        return out
