"""The ONNX Runtime int8 recipe (rag/embed/onnx_int8.py): the saturation probe, smoothing is exact in fp32, and
the recipe for CPUs whose int8 kernels saturate cannot saturate and stays faithful. Those vectors are the same
integers on every x86 CPU (nothing saturates), so any CPU measures them for all; only the recipe's choice is told
the kernels saturate. tests/rag/embed/test_emulated_cpu.py runs the probe and the recipe on an emulated AVX2 CPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ctxqa.rag.embed import onnx_int8  # noqa: E402
from ctxqa.rag.embed.choose import MIN_COSINE  # noqa: E402
from ctxqa.rag.embed.cpu import cpu_info  # noqa: E402
from ctxqa.rag.embed.embedder import Embedder  # noqa: E402
from ctxqa.rag.embed.onnx_runtime import OnnxEncoder, _calibration_feeds  # noqa: E402


def _saturating(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_int8, "int8_kernels_saturate", lambda: True)


def test_the_recipe_follows_the_int8_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    assert onnx_int8.recipe_for(False) == onnx_int8.Int8Recipe(reduce_range=False, fp32_ffn_out_layers=1)
    assert onnx_int8.recipe_for(True) == onnx_int8.Int8Recipe(reduce_range=True, fp32_ffn_out_layers=2)
    assert onnx_int8.recipe_for(True).tag == "int8-rr" != onnx_int8.recipe_for(False).tag
    assert onnx_int8.recipe_for_this_cpu() == onnx_int8.recipe_for(onnx_int8.int8_kernels_saturate())
    _saturating(monkeypatch)
    assert onnx_int8.recipe_for_this_cpu().reduce_range


def test_the_saturation_probe_agrees_with_the_cpu_flags() -> None:
    """ONNX Runtime's x86 u8 x s8 kernels accumulate in int32 with VNNI or AMX-INT8 and through saturating int16
    pairs without (AVX2, AVX-512 before Cascade Lake): the probe measures what the flags predict, on any CPU."""
    assert onnx_int8.int8_kernels_saturate() is (not cpu_info().int8_dot_products)


def test_smoothing_changes_nothing_in_fp32(tmp_path: Path, onnx_cache: Path, onnx_fp32: Embedder) -> None:
    import onnx

    fp32 = next(onnx_cache.glob("onnx/*/model.fp32.onnx"))
    ranges = onnx_int8.activation_ranges(fp32, _calibration_feeds(onnx_fp32.path))
    smoothed = tmp_path / "smoothed.onnx"
    assert onnx_int8.smooth(fp32, smoothed, ranges) == 24  # MiniLM: 6 layers x (QKV, output, FFN in, FFN out)
    again = tmp_path / "again.onnx"
    onnx_int8.smooth(fp32, again, ranges)
    assert again.read_bytes() == smoothed.read_bytes()  # deterministic: a cache built elsewhere is the same model
    # What was smoothed: the inputs with outlier channels, each now within the 90th-percentile channel's range.
    assert sum(n.op_type == "Mul" and n.name.endswith("/smooth") for n in onnx.load(str(smoothed)).graph.node) > 0
    assert onnx_int8.ffn_out_matmuls(onnx.load(str(smoothed)))[0].startswith("/m/encoder/layer.0/")
    ids, mask = onnx_fp32._pad([e.ids for e in onnx_fp32._batch_tokenizer.encode_batch(
        ["Net sales increased 8% in the quarter.", "def f(x):\n    return x + 1", "ok"])])
    a = OnnxEncoder(fp32).embed(ids, mask)
    b = OnnxEncoder(smoothed).embed(ids, mask)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99999


def test_where_int8_saturates_weights_are_7_bit_and_vectors_faithful(tmp_path: Path, onnx_cache: Path, onnx_int8: Embedder,
                                                              embedder: Embedder, real_texts: list[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    from onnx import numpy_helper

    cache = tmp_path / "cache"
    shutil.copytree(onnx_cache, cache)  # the fp32 export; the int8 model for this CPU's recipe is not reused
    _saturating(monkeypatch)
    e = Embedder(backend="onnx-int8", cache_dir=cache)
    assert e.backend == "onnx-int8"
    path = next(cache.glob("onnx/*/model.int8-rr.onnx"))
    assert Path(e._onnx.path) == path
    # u8 activations x 7-bit weights: a pair of products sums to at most 2 x 255 x 64 = 32640 < 32767, so the
    # int16 accumulation of AVX2 kernels (vpmaddubsw) cannot saturate.
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and t.dims and np.prod(t.dims) > 1000]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
    long = [t for t in real_texts if e.count_tokens(t) > e.full_precision_tokens]
    got, ref = e.encode(long), embedder.encode(long)
    cos = (got * ref).sum(1)
    assert cos.min() >= MIN_COSINE and cos.max() < 0.99999
