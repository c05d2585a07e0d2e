"""What a search asks for (`SearchOptions`, every field optional) and the same options resolved once against
`Settings` and checked (`ResolvedSearch`): the retriever reads only the resolved form."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ctxqa.rag.config import Settings
from ctxqa.rag.errors import InvalidInput
from ctxqa.rag.retrieve.filters import Filters
from ctxqa.rag.types import FUSIONS, MODES, Fusion, RetrievalMode

Mode = RetrievalMode


@dataclass(frozen=True)
class SearchOptions:
    """A search request's knobs; None means "the configured default".

    collection: a name or several names (candidates merged by raw score, then fused once).
    mode: dense | lexical | hybrid.  fusion: rrf | weighted (hybrid only).
    weights: {"dense": w, "lexical": w} or (w_dense, w_lexical).
    filters: a Filters or a dict of its fields (validated; invalid → pydantic ValidationError).
    rerank: None = use the cross-encoder when one is configured; False = never; True = required.
    """

    collection: str | Sequence[str] | None = None
    k: int | None = None
    mode: str | None = None
    filters: Filters | dict[str, Any] | None = None
    fusion: str | None = None
    weights: dict[str, float] | Sequence[float] | None = None
    candidates: int | None = None
    mmr: bool | None = None
    mmr_lambda: float | None = None
    max_per_document: int | None = None
    rerank: bool | None = None

    def resolve(self, settings: Settings) -> ResolvedSearch:
        s = settings
        k = int(self.k or s.top_k)
        if k < 1:
            raise InvalidInput(f"k must be at least 1, got {k}", field="k")
        mode = self.mode or s.retrieval_mode
        if mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}; got {mode!r}", field="mode")
        fusion = self.fusion or s.fusion
        if fusion not in FUSIONS:
            raise InvalidInput(f"fusion must be one of {', '.join(FUSIONS)}; got {fusion!r}", field="fusion")
        lam = s.mmr_lambda if self.mmr_lambda is None else float(self.mmr_lambda)
        if not 0.0 <= lam <= 1.0:
            raise InvalidInput(f"mmr_lambda must be within [0, 1], got {lam}", field="mmr_lambda")
        cap = self.max_per_document if self.max_per_document is not None else s.max_chunks_per_document
        if cap is not None and cap < 1:
            raise InvalidInput(f"max_per_document must be at least 1, got {cap}", field="max_per_document")
        if self.rerank and not s.cross_encoder_model:
            raise InvalidInput("rerank requested but no cross-encoder is configured (cross_encoder_model)",
                               field="rerank")
        coll = self.collection
        names = [coll] if isinstance(coll, str) or coll is None else list(coll)
        names = [n or s.default_collection for n in names]
        if not names:
            raise InvalidInput("no collection given", field="collection")
        try:
            filters = Filters.coerce(self.filters)
        except ValidationError as e:
            details = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'filters'}: {err['msg']}"
                                for err in e.errors())
            raise InvalidInput(f"invalid filters: {details}", field="filters") from None
        return ResolvedSearch(
            collections=tuple(dict.fromkeys(names)), k=k, mode=mode, fusion=fusion,  # type: ignore[arg-type]
            weights=_weights(self.weights, s), filters=filters,
            candidates=max(int(self.candidates or s.retrieval_candidates), k),
            mmr=s.mmr if self.mmr is None else bool(self.mmr), mmr_lambda=lam, max_per_document=cap,
            rerank=self.rerank is not False)


@dataclass(frozen=True)
class ResolvedSearch:
    collections: tuple[str, ...]
    k: int
    mode: Mode
    fusion: Fusion
    weights: dict[str, float]
    filters: Filters | None
    candidates: int
    mmr: bool
    mmr_lambda: float
    max_per_document: int | None
    rerank: bool  # use the cross-encoder when one is configured

    @property
    def dense(self) -> bool:
        return self.mode != "lexical"

    @property
    def lexical(self) -> bool:
        return self.mode != "dense"


def _weights(weights: dict[str, float] | Sequence[float] | None, s: Settings) -> dict[str, float]:
    if weights is None:
        w = {"dense": s.dense_weight, "lexical": s.lexical_weight}
    elif isinstance(weights, dict):
        unknown = set(weights) - {"dense", "lexical"}
        if unknown:
            raise InvalidInput(f"weights take the keys 'dense' and 'lexical'; got {sorted(unknown)}", field="weights")
        w = {"dense": s.dense_weight, "lexical": s.lexical_weight, **weights}
    else:
        vals = list(weights)
        if len(vals) != 2:
            raise InvalidInput("weights must be (dense, lexical)", field="weights")
        w = {"dense": float(vals[0]), "lexical": float(vals[1])}
    if any(v < 0 for v in w.values()) or not any(v > 0 for v in w.values()):
        raise InvalidInput(f"weights must be >= 0 and not all zero; got {w}", field="weights")
    return {key: float(v) for key, v in w.items()}
