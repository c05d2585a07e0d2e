"""Optional cross-encoder re-ranking (sentence-transformers `CrossEncoder`), used when
`Settings.cross_encoder_model` names a local model directory.

Off by default: no cross-encoder ships offline with ctxqa. A cross-encoder reads (query, chunk) pairs jointly and
is far more precise than either first-stage retriever, at ~1 forward pass per candidate, so it only re-scores the
top `rerank_depth` fused candidates.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class RerankerError(RuntimeError):
    pass


class Reranker:
    """Scores (query, passage) pairs; higher is more relevant. Thread-safe."""

    def __init__(self, model_path: str | Path, *, batch_size: int = 32, max_length: int = 512) -> None:
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise RerankerError(
                f"cross-encoder model {str(model_path)!r} is not a local directory (models cannot be downloaded "
                f"here); set CTXQA_CROSS_ENCODER_MODEL to a sentence-transformers CrossEncoder directory, or unset it")
        from sentence_transformers import CrossEncoder

        self.path = path
        self.batch_size = batch_size
        self.model = CrossEncoder(str(path), device="cpu", max_length=max_length)
        self._lock = threading.Lock()

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Raw model scores (logits for a one-label model), one per passage."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            out = self.model.predict([(query, p) for p in passages], batch_size=self.batch_size,
                                     show_progress_bar=False, convert_to_numpy=True)
        out = np.asarray(out, dtype=np.float32)
        if out.ndim == 2:  # a multi-label model: use the last label ("relevant") column
            out = out[:, -1]
        return out
