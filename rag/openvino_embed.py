"""OpenVINO runtime for the exported embedder: bf16 on CPUs with native bf16 (AMX / AVX512-BF16), fp32 otherwise.

Why: on this project's CPUs (Xeon with AMX), OpenVINO runs the same fp32 ONNX graph (rag/onnx_embed.py exports it)
in bf16 at about 2x ONNX Runtime's int8 and 3.7x its fp32 throughput (bench/embed.py: ~30k vs ~15k vs ~8k word
pieces/s on 2 cores), with vectors far closer to fp32 than int8's (cosine > 0.999 on the probe texts vs ~0.99).
Without native bf16 the fp32 graph runs at about ONNX Runtime fp32's speed, slower than int8: `bf16_capable()`
lets the "auto" backend choose.

The graph is verified once per (export, OpenVINO version, precision) against ONNX Runtime's fp32 vectors of the
same export (which rag/onnx_embed.py verified against torch); a graph that does not reproduce them is refused and
the embedder falls back to ONNX Runtime. The verification is memoised in the export's cache directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from rag.files import atomic_write

# Minimum cosine to ONNX Runtime fp32 on every probe text. bf16 keeps ~8 bits of mantissa: measured >= 0.9995.
MIN_COSINE = {"bf16": 0.998, "f32": 0.9999}


class OpenVinoError(RuntimeError):
    pass


def _core() -> Any:
    import openvino as ov

    return ov.Core()


def bf16_capable() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (what makes this backend the fast one)."""
    try:
        caps = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no openvino, or a CPU plugin that cannot say: not the fast path
        return False
    return "BF16" in caps


class OpenVinoEncoder:
    """One compiled model, one infer request: callers serialise `embed` (rag/embed.py holds a lock per batch),
    which is also what keeps one batch from fighting another over the cores."""

    def __init__(self, onnx_path: Path, *, threads: int | None = None, precision: str | None = None,
                 cache_dir: Path | None = None) -> None:
        core = _core()
        if precision is None:
            precision = "bf16" if bf16_capable() else "f32"
        if precision not in MIN_COSINE:
            raise OpenVinoError(f"precision must be one of {sorted(MIN_COSINE)}, got {precision!r}")
        self.precision = precision
        self.path = Path(onnx_path)
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1),
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",  # one stream: the batches are already large; queries want latency
            # Pinned threads would fight the extraction worker and the API's other threads for the same cores.
            "ENABLE_CPU_PINNING": False,
        }
        if cache_dir is not None:
            # OpenVINO's own compiled-blob cache: later processes load the compiled model instead of compiling.
            core.set_property({"CACHE_DIR": str(Path(cache_dir) / "openvino-blobs")})
        self.compiled = core.compile_model(str(self.path), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._inputs = {p.get_any_name() for p in self.compiled.inputs}

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids.astype(np.int64, copy=False),
                 "attention_mask": attention_mask.astype(np.int64, copy=False)}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        self._request.infer(feeds)
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)


def verify(encoder: OpenVinoEncoder, reference: Any, feeds: tuple[np.ndarray, np.ndarray]) -> float:
    """Min cosine between `encoder` and `reference` (an fp32 encoder) on the probe batch; raises below the bar."""
    got = encoder.embed(*feeds)
    ref = reference.embed(*feeds)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cos = float((got * ref).sum(1).min())
    if not cos >= MIN_COSINE[encoder.precision]:
        raise OpenVinoError(f"OpenVINO {encoder.precision} does not reproduce the fp32 vectors of {encoder.path} "
                            f"(min cosine {cos:.5f} < {MIN_COSINE[encoder.precision]})")
    return cos


def load_verified(onnx_path: Path, *, threads: int | None, precision: str | None,
                  probe_feeds: tuple[np.ndarray, np.ndarray]) -> OpenVinoEncoder:
    """An OpenVinoEncoder for the cached fp32 export, verified against ONNX Runtime fp32 once per OpenVINO version
    and precision (the verdict is memoised next to the export)."""
    import openvino as ov

    from rag.onnx_embed import OnnxEncoder

    onnx_path = Path(onnx_path)
    enc = OpenVinoEncoder(onnx_path, threads=threads, precision=precision, cache_dir=onnx_path.parent)
    memo = onnx_path.parent / "openvino-verified.json"
    try:
        seen: dict[str, float] = json.loads(memo.read_text())
    except (OSError, ValueError):
        seen = {}
    key = f"{ov.__version__}|{enc.precision}"
    if key not in seen:
        seen[key] = verify(enc, OnnxEncoder(onnx_path, threads=threads), probe_feeds)
        atomic_write(memo, json.dumps(seen, indent=1).encode())
    return enc
