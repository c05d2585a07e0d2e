"""The ONNX Runtime int8 recipe ("onnx-int8"): dynamic int8 that stays within cosine 0.99 of fp32.

Why not plain `quantize_dynamic`: on the shared corpora (bench/embed.py, 256-512 chunks) it gave mean cosine 0.993
but min 0.978 on a CPU with VNNI and 0.973 on an AVX2-only EPYC (issue 18). Measured causes and fixes, in the order
they matter (scripts in the issue-18 notes; min cosine on 512 corpora chunks, VNNI Xeon):
1. Activation outliers. Each matmul input is quantised per tensor, per batch, so one channel 4-5x larger than the
   rest (MiniLM's FFN down-projection inputs: 24.6 vs 5.9 in layer 0, 20.4 in layer 1) costs every other channel
   two bits. Smoothing: channels whose calibrated range exceeds the 90th-percentile channel's are divided down to
   it by a Mul before the matmul, and the matching weight rows multiplied back (exact in fp32). 0.978 -> 0.992.
2. The word-embedding tables were quantised too (QEmbedLayerNormalization): no speed to gain, so they stay fp32.
3. The first FFN down-projection (the largest outlier) stays fp32: 0.992 -> 0.995, for 1/18 of the matmul work.
Without VNNI, x86 int8 kernels sum u8 x s8 pairs in int16 with saturation (`vpmaddubsw`). There the weights are
quantised to 7 bits (`reduce_range`, as ONNX Runtime documents for non-VNNI CPUs: 2 x 255 x 64 < 32767, so no sum
can saturate) and the first two FFN down-projections stay fp32: min 0.9925. (Session 8, 512 corpora chunks,
fp32 FFN outputs 2 / 1 / 0: min 0.9920 / 0.9898 / 0.9892; the two fp32 layers take 9.8 s where none takes 7.2 s
on an AVX-512 EPYC, but fewer miss the 0.99 bar.) Because nothing saturates, those vectors are the same integers
on every x86 CPU, so they were measured on the VNNI Xeon. The alternative, ONNX Runtime's u8 x u8 kernels
(`session.x64quantprecision`), keeps 8-bit weights but runs slower by construction.

Which CPUs saturate is measured, not read from flags (`int8_kernels_saturate`: one tiny u8 x s8 matmul at the
top of both ranges). Checked on an emulated AVX2-only CPU (`qemu-x86_64 -cpu Haswell-v4`, bench/emulated_cpu.py):
the probe saturates there, and the 7-bit recipe's vectors match this CPU's to rounding.

The recipe is data-driven (calibrated on rag/data/embed_calibration.jsonl); `auto` still checks the result on each
CPU against fp32 before choosing it (rag/embed/choose.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ctxqa.rag.embed.cpu import cpu_info

log = logging.getLogger(__name__)

SMOOTH_PERCENTILE = 90.0
_GELU = ("BiasGelu", "Gelu", "FastGelu")


@dataclass(frozen=True)
class Int8Recipe:
    reduce_range: bool  # 7-bit weights: no int16 saturation on CPUs without VNNI
    fp32_ffn_out_layers: int  # the first N FFN down-projections stay fp32

    @property
    def tag(self) -> str:
        """Part of the cached file name: the two recipes are different models."""
        return "int8-rr" if self.reduce_range else "int8"


def recipe_for(saturates: bool) -> Int8Recipe:
    """The recipe for int8 kernels that do (or do not) saturate (see the module docstring)."""
    if saturates:
        return Int8Recipe(reduce_range=True, fp32_ffn_out_layers=2)
    return Int8Recipe(reduce_range=False, fp32_ffn_out_layers=1)


def recipe_for_this_cpu() -> Int8Recipe:
    return recipe_for(int8_kernels_saturate())


# The probe: u8 x s8 products at the top of both ranges. A pair sums to 2 x 255 x 127 = 64770, twice what an int16
# holds, so a saturating kernel returns 32767 per pair instead; an int32 one (VNNI, AMX) is exact.
_PROBE_M, _PROBE_K, _PROBE_N = 16, 64, 16


@lru_cache(maxsize=1)
def int8_kernels_saturate() -> bool:
    """Whether ONNX Runtime's u8 x s8 matmul kernels saturate on this CPU: measured, by running one.

    Why measure instead of reading the VNNI flags: ONNX Runtime picks its kernels from CPUID, which /proc/cpuinfo
    does not always reflect (an emulator such as `qemu-x86_64 -cpu Haswell` shows the host's flags there, a
    hypervisor may mask one and not the other), and a new kernel or CPU class needs no table here. Without ONNX
    Runtime the flags decide (no VNNI or AMX-INT8: saturating, the safe side). Costs ~10 ms, once a process."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return not cpu_info().int8_dot_products
    b = np.full((_PROBE_K, _PROBE_N), 127, np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8-saturation-probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [_PROBE_M, _PROBE_K])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [_PROBE_M, _PROBE_N])],
        [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)  # any ONNX Runtime this project supports reads IR 8
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"a": np.full((_PROBE_M, _PROBE_K), 255, np.uint8)})[0]
    saturates = bool((y != 255 * 127 * _PROBE_K).any())
    log.debug("int8 saturation probe: %s (got %d, exact %d)", saturates, int(y.flat[0]), 255 * 127 * _PROBE_K)
    return saturates


def _is_weighted(node: Any, inits: set[str] | dict[str, Any]) -> bool:
    return node.op_type in ("MatMul", "Attention") and len(node.input) > 1 and node.input[1] in inits


def _weighted_nodes(model: Any) -> list[Any]:
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if _is_weighted(n, inits)]


def activation_ranges(fp32_path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of every weighted matmul's input over the calibration feeds (one text each)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fp32_path))
    names = sorted({n.input[0] for n in _weighted_nodes(model)})
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    out: dict[str, np.ndarray] = {}
    for f in feeds:
        for name, x in zip(names, sess.run(names, {k: v for k, v in f.items() if k in wanted})):
            m = np.abs(x.reshape(-1, x.shape[-1])).max(0)
            out[name] = np.maximum(out[name], m) if name in out else m
    return out


def smooth(src: Path, dst: Path, ranges: dict[str, np.ndarray], percentile: float = SMOOTH_PERCENTILE) -> int:
    """Write `src` with outlier input channels of each weighted matmul scaled down (Mul) and the weight rows scaled
    up by the same factor: the same function in fp32, a smaller per-tensor range for int8. Returns the number of
    matmuls changed."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    uses = Counter(x for n in model.graph.node for x in n.input)
    nodes: list[Any] = []
    changed = 0
    for n in model.graph.node:
        # A weight shared by two matmuls cannot take one input's scales.
        if _is_weighted(n, inits) and n.input[0] in ranges and uses[n.input[1]] == 1:
            a = ranges[n.input[0]].astype(np.float64)
            w = numpy_helper.to_array(inits[n.input[1]])
            if w.ndim == 2 and w.shape[0] == a.shape[0]:
                s = np.maximum(a / max(float(np.percentile(a, percentile)), 1e-6), 1.0)
                if (s > 1.0).any():
                    inits[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(w.dtype),
                                                                       n.input[1]))
                    scale = f"{n.name}/smooth_scale"
                    model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), scale))
                    nodes.append(helper.make_node("Mul", [n.input[0], scale], [f"{n.name}/smoothed"],
                                                  name=f"{n.name}/smooth"))
                    n.input[0] = f"{n.name}/smoothed"
                    changed += 1
        nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return changed


def ffn_out_matmuls(model: Any) -> list[str]:
    """Names of the FFN down-projections (matmuls fed by a GELU), in layer order."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in _weighted_nodes(model):
        src = producer.get(n.input[0])
        if src is not None and src.op_type == "Mul" and src.name.endswith("/smooth"):
            src = producer.get(src.input[0])  # through the smoothing Mul
        if n.op_type == "MatMul" and src is not None and src.op_type in _GELU:
            out.append(n.name)
    return out


def quantise(fp32_path: Path, dst: Path, feeds: list[dict[str, np.ndarray]], recipe: Int8Recipe,
             workdir: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    smoothed = workdir / "smoothed.onnx"
    n = smooth(fp32_path, smoothed, activation_ranges(fp32_path, feeds))
    exclude = ffn_out_matmuls(onnx.load(str(smoothed)))[: recipe.fp32_ffn_out_layers]
    log.info("int8 recipe %s: %d matmuls smoothed, fp32 kept for %s", recipe, n, exclude)
    root = logging.getLogger()
    root.disabled, was = True, root.disabled  # its "consider pre-processing" note
    try:
        quantize_dynamic(str(smoothed), str(dst), per_channel=True, reduce_range=recipe.reduce_range,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Attention"],
                         nodes_to_exclude=exclude, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.disabled = was
