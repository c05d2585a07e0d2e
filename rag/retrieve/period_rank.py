"""Period- and recency-aware ranking (pure): a question that names a quarter, a date, a month or a year lifts the
chunks of documents that cover it; "latest" / "most recent" lifts the newest of the documents retrieved.

A lift, never a filter: a document that only mentions the period in its text still ranks by its content, and the
lift is relative to the spread of the scores being ranked (so it means the same for weighted and RRF fusion).

Measured on the NVIDIA 10-Q set (bench/retrieval_filings.py): see the README's retrieval figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ctxqa.rag.periods import DocumentPeriod, PeriodQuery, match


@dataclass(frozen=True)
class Candidate:
    chunk_id: int
    score: float
    document_id: int
    period: DocumentPeriod
    dated: bool  # its date was found in the document (not the file's own date): good enough to say "newest"


def period_rerank(ranked: Sequence[tuple[int, float]], query: PeriodQuery, docs: dict[int, tuple[int, DocumentPeriod, bool]],
                  *, period_weight: float, recency_weight: float) -> tuple[list[tuple[int, float]], dict[int, dict[str, float]]]:
    """`ranked` (chunk id, score) best first, re-scored: + spread x (period_weight x match + recency_weight x
    newest). `docs`: chunk id -> (document id, its period, whether its date is the document's own). Returns the new
    ranking (ties by chunk id) and per-chunk evidence ("period", "recent")."""
    if query.empty or not ranked or (period_weight <= 0 and recency_weight <= 0):
        return list(ranked), {}
    scores = [s for _, s in ranked]
    spread = (max(scores) - min(scores)) or abs(max(scores)) or 1.0
    newest = None
    if query.recent:
        dates = [p.date for _, p, dated in (docs[c] for c, _ in ranked if c in docs) if dated and p.date]
        newest = max(dates) if len({*dates}) > 1 else None  # "newest" means something only among several dates
    out: list[tuple[int, float]] = []
    evidence: dict[int, dict[str, float]] = {}
    for cid, score in ranked:
        if cid not in docs:
            out.append((cid, score))
            continue
        _, period, dated = docs[cid]
        m = match(query, period)
        recent = 1.0 if newest is not None and dated and period.date == newest else 0.0
        bonus = spread * (period_weight * m + recency_weight * recent)
        if m or recent:
            evidence[cid] = {"period": m, "recent": recent}
        out.append((cid, score + bonus))
    out.sort(key=lambda kv: (-kv[1], kv[0]))
    return out, evidence
