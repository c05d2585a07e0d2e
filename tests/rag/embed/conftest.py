"""Embedders shared by the embedding tests, built once per session into a temporary cache (the real export,
quantisation and verification paths: a fresh machine builds them offline the same way)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from ctxqa.rag.embed.embedder import Embedder

TEXTS = [
    "FastAPI is a modern, fast (high-performance), web framework for building APIs with Python based on standard "
    "Python type hints.",
    "Net sales increased 8% or $6.9 billion during the third quarter of 2023 compared to the same quarter in 2022.",
    "def read_item(item_id: int, q: str | None = None):\n    return {\"item_id\": item_id, \"q\": q}",
    "Alterations of the architecture of cerebral white matter in the developing human brain can affect cortical "
    "development and result in functional disabilities.",
    "ok",
    "  leading and trailing whitespace  ",
    "Ünïcödé, emoji 🚀 and CJK 中文 text mixed with numbers 3.14159",
]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def onnx_int8(onnx_cache: Path) -> Embedder:
    e = Embedder(backend="onnx-int8", cache_dir=onnx_cache, batch_tokens=2048)
    assert e.backend == "onnx-int8", "the ONNX export failed (see the warning in the log)"
    return e


@pytest.fixture(scope="session")
def onnx_fp32(onnx_cache: Path, onnx_int8: Embedder) -> Embedder:  # after int8: reuses its fp32 export
    e = Embedder(backend="onnx", cache_dir=onnx_cache, batch_tokens=2048)
    assert e.backend == "onnx"
    return e


@pytest.fixture(scope="session")
def openvino(onnx_cache: Path, onnx_int8: Embedder) -> Embedder:  # after int8: runs the cached fp32 export
    e = Embedder(backend="openvino", cache_dir=onnx_cache, batch_tokens=2048)
    assert e.backend == "openvino", "OpenVINO failed to start (see the warning in the log)"
    return e


@pytest.fixture(scope="session")
def openvino_int8(onnx_cache: Path, onnx_int8: Embedder) -> Embedder:  # quantises the cached fp32 export once
    e = Embedder(backend="openvino-int8", cache_dir=onnx_cache, batch_tokens=2048)
    assert e.backend == "openvino-int8", "OpenVINO int8 failed to start (see the warning in the log)"
    return e


@pytest.fixture(scope="session")
def real_texts() -> list[str]:
    """Real chunks of the shared corpora (Markdown and a 10-Q PDF) when present, else the built-in texts."""
    shared = Path(os.environ.get("CTXQA_SHARED", Path(__file__).resolve().parents[3].parent / "shared"))
    root = shared / "data" / "corpora"
    if not root.is_dir():
        return list(TEXTS)
    from ctxqa.ingest.chunk import chunk
    from ctxqa.ingest.loaders import load

    tok = Embedder().new_tokenizer()
    files = sorted(root.rglob("*.md"))[:6] + sorted(root.rglob("*.pdf"))[:1]
    out: list[str] = []
    for p in files:
        specs = chunk(load(p), tok, 200, 32, max_tokens=256)
        out.extend(sp.text for sp in specs[:40])
    random.Random(0).shuffle(out)
    return out[:160] + TEXTS


