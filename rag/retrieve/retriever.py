"""Retrieval: query → ranked chunks (Hits): dense + lexical candidates → fuse → rerank → diversify.

    Retriever(settings, db, store, embedder, reranker=None)
    .search(query, options=None, **fields) -> SearchResult   (fields: those of SearchOptions, rag/retrieve/options.py)
    .is_relevant(hits, threshold=None) -> bool          (abstention: is anything relevant retrieved?)
    .expand_neighbours(hits, *, window=None, budget_tokens=None, count_tokens=None) -> list[Hit]

Steps of `search` (several collections: each retriever's candidates are merged by raw score before fusion):
1. Filters (rag/retrieve/filters.py) resolve to the allowed chunk ids, handed to both indexes, which restrict their
   candidates *before* the top-k cut: a filtered search returns k hits whenever k chunks match.
2. mode=dense: faiss top-`candidates` by cosine. mode=lexical: BM25 top-`candidates`. mode=hybrid: both.
3. Fusion (hybrid, rag/retrieve/fusion.py): `rrf` = sum_r w_r / (rrf_k + rank_r); `weighted` = sum_r w_r * norm_r(score), where each
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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctxqa.rag.config import Settings
from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Collection
from ctxqa.rag.db.session import Database
from ctxqa.rag.embed.embedder import Embedder
from ctxqa.rag.index.store import IndexStore
from ctxqa.rag.periods import document_period, parse_question
from ctxqa.rag.retrieve.filters import Filters
from ctxqa.rag.retrieve.fusion import (
    Candidates,
    cap_per_document,
    fuse_rrf,
    fuse_weighted,
    merge_candidates,
    mmr_select,
    rank_fused,
)
from ctxqa.rag.retrieve.options import ResolvedSearch, SearchOptions
from ctxqa.rag.retrieve.period_rank import period_rerank
from ctxqa.rag.timing import Timings
from ctxqa.rag.types import Hit

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
    def search(self, query: str, options: SearchOptions | None = None, **fields: Any) -> SearchResult:
        """Top-k hits for `query`. `options` (or the same fields as keywords) left None take their defaults
        from Settings; they are resolved and checked once (`SearchOptions.resolve`)."""
        opts = (options or SearchOptions(**fields)).resolve(self.settings)
        reranker = self.reranker if opts.rerank else None
        timings = Timings()
        with timings("prepare"):
            colls = self._collections(opts)
        qv = None
        if opts.dense:
            with timings("embed"):
                qv = self.embedder.encode_query(query)

        lists: dict[str, list[Candidates]] = {}
        evidence: dict[int, dict[str, float]] = {}
        vectors: dict[int, np.ndarray] = {}
        coll_of: dict[int, str] = {}
        for coll in colls:
            c_lists, c_evidence, c_vectors = self._collect(coll, query, qv, opts, timings)
            for name, cand in c_lists.items():
                lists.setdefault(name, []).append(cand)
            evidence.update(c_evidence)
            vectors.update(c_vectors)
            coll_of.update((cid, coll.name) for cid in c_evidence)
        # Several collections: each retriever's lists merge by raw score, then fusion runs once over the merged
        # lists. Cosines share one embedder and compare exactly; BM25 statistics (idf, average length) are per
        # collection, so lexical scores of very differently sized collections compare only roughly.
        with timings("fuse"):
            merged = {name: merge_candidates(parts, opts.candidates) for name, parts in lists.items()}
            ranked = self._fuse(merged, evidence, opts)
        with timings("periods"):
            ranked = self._periods(query, ranked, evidence)
        if reranker is not None and ranked:
            with timings("rerank"):
                ranked = self._rerank(reranker, query, ranked[: max(self.settings.rerank_depth, opts.k)], evidence)
        with timings("diversify"):
            ranked = self._diversify(ranked, vectors, opts)
        with timings("fetch"):
            hits = self._hits(ranked, coll_of, evidence)
        return SearchResult(hits, timings.seconds, opts.mode)

    def _periods(self, query: str, ranked: list[tuple[int, float]], evidence: dict[int, dict[str, float]]
                 ) -> list[tuple[int, float]]:
        """Lift chunks of documents covering the period the question names, or the newest for "latest"."""
        q = parse_question(query)
        s = self.settings
        if q.empty or not ranked or (s.period_weight <= 0 and s.recency_weight <= 0):
            return ranked
        with self.db.session() as ses:
            rows = repo.document_periods(ses, [cid for cid, _ in ranked])
        docs = {cid: (doc_id, document_period(day, period, source, title), dsrc not in (None, "file date"))
                for cid, (doc_id, day, dsrc, period, source, title) in rows.items()}
        out, ev = period_rerank(ranked, q, docs, period_weight=s.period_weight, recency_weight=s.recency_weight)
        for cid, e in ev.items():
            evidence.setdefault(cid, {}).update(e)
        return out

    def _collections(self, opts: ResolvedSearch) -> list[Collection]:
        with self.db.session() as ses:
            colls = [repo.require_collection(ses, name) for name in opts.collections]
        if opts.dense:
            for coll in colls:
                repo.check_embedder(coll, self.embedder.name, self.embedder.dim)
        return colls

    def _diversify(self, ranked: list[tuple[int, float]], vectors: dict[int, np.ndarray], opts: ResolvedSearch
                   ) -> list[tuple[int, float]]:
        cap = opts.max_per_document
        if cap is not None:
            with self.db.session() as ses:
                doc_of = repo.document_ids_of(ses, [cid for cid, _ in ranked])
            ranked = cap_per_document(ranked, doc_of, cap)
        if opts.mmr:
            ranked = mmr_select(ranked, vectors, opts.k, opts.mmr_lambda)
        return ranked[: opts.k]

    def _hits(self, ranked: list[tuple[int, float]], coll_of: dict[int, str], evidence: dict[int, dict[str, float]]
              ) -> list[Hit]:
        hits: list[Hit] = []
        with self.db.session() as ses:
            for name in dict.fromkeys(coll_of[cid] for cid, _ in ranked):
                part = [(cid, sc) for cid, sc in ranked if coll_of[cid] == name]
                hits.extend(repo.hits_for(ses, part, name, {cid: evidence.get(cid, {}) for cid, _ in part}))
        order = {cid: i for i, (cid, _) in enumerate(ranked)}
        hits.sort(key=lambda h: order[h.chunk_id])
        return hits

    def _allowed(self, coll: Collection, flt: Filters | None, generation: int) -> np.ndarray | None:
        if flt is None:
            return None
        key = (coll.id, generation, flt.key())
        with self._lock:
            if key in self._filter_cache:
                self._filter_cache.move_to_end(key)
                return self._filter_cache[key]
        with self.db.session() as ses:
            allowed = repo.allowed_chunk_ids(ses, coll.id, flt)
        with self._lock:
            self._filter_cache[key] = allowed
            while len(self._filter_cache) > _FILTER_CACHE_SIZE:
                self._filter_cache.popitem(last=False)
        return allowed

    def _collect(self, coll: Collection, query: str, qv: np.ndarray | None, opts: ResolvedSearch, timings: Timings
                 ) -> tuple[dict[str, Candidates], dict[int, dict[str, float]], dict[int, np.ndarray]]:
        """One collection's candidates per retriever, their evidence (raw scores; every candidate's dense cosine
        from its stored vector; in weighted hybrid also every candidate's exact BM25) and stored vectors."""
        with timings("filter"):
            vindex, lindex = self.store.get_both(coll)
            allowed = self._allowed(coll, opts.filters, vindex.generation)
        lists: dict[str, Candidates] = {}
        if allowed is not None and not len(allowed):
            return lists, {}, {}
        if opts.dense and qv is not None:
            with timings("dense"):
                sc, ids = vindex.search(qv[None, :], opts.candidates, allowed_ids=allowed)
                ok = (ids[0] >= 0) & np.isfinite(sc[0])
                lists["dense"] = Candidates(ids[0][ok], sc[0][ok])
        weighted = opts.mode == "hybrid" and opts.fusion == "weighted"
        dense_lex: dict[int, float] = {}
        if opts.lexical:
            with timings("lexical"):
                also = lists["dense"].ids if "dense" in lists and weighted else None
                sc, ids, also_sc = lindex.search_scores(query, opts.candidates, allowed_ids=allowed, also=also)
                lists["lexical"] = Candidates(ids, sc)
                if also is not None:
                    dense_lex = dict(zip(also.tolist(), also_sc.tolist()))

        with timings("fuse"):
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
            if weighted:
                for cid, ev in evidence.items():  # dense candidates' BM25, computed in the lexical pass
                    if "lexical" not in ev:
                        ev["lexical"] = float(dense_lex.get(cid, 0.0))
        return lists, evidence, vectors

    def _fuse(self, lists: dict[str, Candidates], evidence: dict[int, dict[str, float]], opts: ResolvedSearch
              ) -> list[tuple[int, float]]:
        for name, cand in lists.items():
            for rank, cid in enumerate(cand.ids.tolist(), start=1):
                evidence[cid][f"{name}_rank"] = float(rank)
        if opts.mode in ("dense", "lexical"):
            single = lists.get(opts.mode)
            return [] if single is None else [(int(c), float(v)) for c, v in zip(single.ids, single.scores)]
        if opts.fusion == "rrf":
            ranked = rank_fused(fuse_rrf(lists, opts.weights, self.settings.rrf_k))
        else:
            full = {name: {cid: ev.get(name, 0.0) for cid, ev in evidence.items()} for name in lists}
            ranked = rank_fused(fuse_weighted(full, opts.weights))
        for cid, score in ranked:
            evidence[cid]["fused"] = score
        return ranked

    def _rerank(self, reranker: Any, query: str, ranked: list[tuple[int, float]],
                evidence: dict[int, dict[str, float]]) -> list[tuple[int, float]]:
        with self.db.session() as ses:
            texts = repo.chunk_texts(ses, [cid for cid, _ in ranked])
        ids = [cid for cid, _ in ranked if cid in texts]
        scores = reranker.score(query, [texts[cid] for cid in ids])
        for cid, sc in zip(ids, scores.tolist()):
            evidence.setdefault(cid, {})["rerank"] = float(sc)
        return sorted(zip(ids, (float(x) for x in scores)), key=lambda kv: (-kv[1], kv[0]))

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
                    found = rows.get((h.document_id, o))
                    if found is None or found.chunk_id in have:
                        continue
                    if budget_tokens is not None:
                        cost = count(found.text)
                        if used + cost > budget_tokens:
                            continue
                        used += cost
                    have.add(found.chunk_id)
                    found.score = h.score
                    found.scores = {"neighbour_of": float(h.chunk_id)}
                    added[h.chunk_id].append(found)
        out: list[Hit] = []
        for h in hits:
            group = sorted([h, *added[h.chunk_id]], key=lambda x: x.ordinal)
            out.extend(group)
        return out
