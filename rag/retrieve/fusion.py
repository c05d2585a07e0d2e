"""Pure ranking functions of retrieval (also used by bench/retrieval.py): fusion of the dense and lexical
candidate lists (reciprocal rank, or min-max normalised weighted scores), a per-document cap, and maximal
marginal relevance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Candidates:
    """One retriever's ranked candidates: chunk ids best first, with their raw scores."""

    ids: np.ndarray
    scores: np.ndarray


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


def merge_candidates(parts: list[Candidates], n: int) -> Candidates:
    """One retriever's candidates from several collections, best raw score first (ties by chunk id)."""
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p.ids for p in parts]).astype(np.int64)
    scores = np.concatenate([p.scores for p in parts]).astype(np.float32)
    order = np.lexsort((ids, -scores))[:n]
    return Candidates(ids[order], scores[order])
