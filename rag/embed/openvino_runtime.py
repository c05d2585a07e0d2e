"""OpenVINO runtime for the exported embedder: bf16 on CPUs with native bf16 (AMX / AVX512-BF16), fp32 otherwise.

Why: on this project's CPUs (Xeon with AMX), OpenVINO runs the same fp32 ONNX graph (rag/onnx_embed.py exports it)
in bf16 at about 2x ONNX Runtime's int8 and 3.7x its fp32 throughput (bench/embed.py: ~30k vs ~15k vs ~8k word
pieces/s on 2 cores), with vectors far closer to fp32 than int8's (cosine > 0.999 on the probe texts vs ~0.99).
Without native bf16 the fp32 graph runs at about ONNX Runtime fp32's speed, slower than int8; "auto" measures
which wins on the CPU it runs on (rag/embed/choose.py).

The graph is verified once per (export, OpenVINO version, precision) against ONNX Runtime's fp32 vectors of the
same export (which rag/onnx_embed.py verified against torch); a graph that does not reproduce them is refused and
the embedder falls back to ONNX Runtime. The verification is memoised in the export's cache directory.

int8 ("openvino-int8"): NNCF post-training static quantisation of the same export (SmoothQuant + fast bias
correction, its transformer recipe; the first FFN down-projection left in floating point, `_first_ffn_out`),
calibrated on original texts shipped with ctxqa (rag/data/embed_calibration.jsonl: prose, code, filings,
abstracts, queries...), made once and cached next to the export.
Why: on CPUs with int8 dot products (AVX512-VNNI / AVX-VNNI) but no AMX, e.g. AMD EPYC (Zen 4), int8 matmuls run
at twice the bf16 rate: 21.4k word pieces/s against 13.2k for bf16 and 14.2k for ONNX Runtime's dynamic int8
(bench/embed.py, 2 cores), cosine to fp32 0.996 on average. On Xeons with AMX, bf16 is faster (43.0k vs 39.8k)
and closer to fp32. Without VNNI (AVX2-only CPUs; emulated here with ONEDNN_MAX_CPU_ISA=AVX2) oneDNN's int8 is
slower than its fp32 (3.4k vs 9.1k word pieces/s) and saturates (min cosine 0.987, the issue-18 EPYC's figure),
and NNCF's 7-bit overflow fix does not rescue it (0.988, 3.5k): "auto" rejects it there by measuring.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ctxqa.rag.embed.cpu import cpu_info
from ctxqa.rag.embed.samples import CALIBRATION_FILE, data_digest
from ctxqa.rag.files import atomic_write

# Minimum cosine to ONNX Runtime fp32 on every probe text. bf16 keeps ~8 bits of mantissa: measured >= 0.9995.
# int8: the same bar as ONNX Runtime's int8 export (rag/onnx_embed.py); measured >= 0.993 on the probes.
MIN_COSINE = {"bf16": 0.998, "f32": 0.9999, "int8": 0.98}

# Bump when the quantisation recipe changes: older int8 models in the cache are ignored.
# 2: the first FFN down-projection stays in floating point (`_first_ffn_out`).
QUANT_REVISION = 2

log = logging.getLogger(__name__)
_quant_lock = threading.Lock()


class OpenVinoError(RuntimeError):
    pass


def _core() -> Any:
    import openvino as ov

    return ov.Core()


def bf16_capable() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (what makes this backend the fast one). With
    ONEDNN_MAX_CPU_ISA capping the kernels below bf16 (emulating an older CPU), the plugin still reports BF16 but
    cannot compile a bf16 graph: the cap wins."""
    try:
        caps = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no openvino, or a CPU plugin that cannot say: not the fast path
        return False
    info = cpu_info()
    return "BF16" in caps and (not info.onednn_max_isa or info.onednn_bf16)


Calibration = Callable[[], list[tuple[np.ndarray, np.ndarray]]]


def _first_ffn_out(model: Any) -> list[str]:
    """The first FFN down-projection (a MatMul fed by a Gelu), left unquantised. Its input holds the model's
    largest activation outlier (MiniLM layer 0: one channel at 24.6 against 5.9 for the next), which the per-tensor
    activation scale of static int8 cannot serve: keeping it in floating point (1/18 of the matmul work) raised the
    minimum cosine to fp32 from 0.9934 to 0.9967 on 256 shared corpora chunks (Xeon), at no measurable speed cost."""
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul" and op.input_value(0).get_node().get_type_name() == "Gelu":
            return [op.get_friendly_name()]
    return []


def ensure_quantized(onnx_path: Path, calibration: Calibration) -> Path:
    """Path of the int8 OpenVINO model (IR .xml) quantised from the fp32 export `onnx_path`, made once.

    `calibration()`: (input_ids, attention_mask) batches, one text each (no padding in the statistics); called
    only when the model has to be made, so a process that finds it cached tokenizes nothing. The result
    is keyed by the recipe revision, the OpenVINO and NNCF versions and the calibration file, and published by
    renaming a finished directory into place, so concurrent processes never load a half-written model."""
    import openvino as ov

    try:
        import nncf
    except ImportError as e:
        raise OpenVinoError("the int8 OpenVINO backend needs NNCF to quantise the model once (pip install nncf)") from e
    onnx_path = Path(onnx_path)
    key = hashlib.sha256(f"rev={QUANT_REVISION};ov={ov.__version__};nncf={nncf.__version__};"
                         f"calib={data_digest(CALIBRATION_FILE)}".encode()).hexdigest()[:16]
    target = onnx_path.parent / f"openvino-int8-{key}"
    xml = target / "model.xml"
    if xml.is_file():
        return xml
    with _quant_lock:
        if xml.is_file():
            return xml
        log.warning("quantising the embedder to int8 for OpenVINO (once, ~20 s) under %s", target)
        feeds = [{"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
                 for ids, mask in calibration()]
        model = _core().read_model(str(onnx_path))
        tmp = Path(tempfile.mkdtemp(dir=onnx_path.parent, prefix=".openvino-int8-"))
        from nncf.common.logging import nncf_logger

        level = nncf_logger.level
        try:
            nncf.set_log_level(logging.ERROR)
            # NNCF draws progress bars on stdout; keep stdout for the CLI's output (--json).
            skip = _first_ffn_out(model)
            with contextlib.redirect_stdout(sys.stderr):
                q = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(feeds), **({"ignored_scope": nncf.IgnoredScope(names=skip)}
                                                             if skip else {}))
            ov.save_model(q, str(tmp / "model.xml"), compress_to_fp16=False)
            try:
                os.rename(tmp, target)
            except OSError:  # another process published it first: theirs is as good
                if not xml.is_file():
                    raise
        finally:
            nncf.set_log_level(level)
            shutil.rmtree(tmp, ignore_errors=True)
    return xml


class OpenVinoEncoder:
    """One compiled model. `mode` "latency": one stream using every thread, for queries and small calls.
    "throughput": as many streams as OpenVINO's THROUGHPUT hint picks for the threads (2 cores: two single-thread
    streams), fed by `embed_many` with one batch in flight per stream.

    Why two modes: on 2 cores, two single-thread streams embed ~10 % more word pieces per second than one
    two-thread stream (no barrier between the threads after each of the graph's ~100 ops, and a stream whose core
    is briefly taken by the extraction or storage thread does not stall the other), but a single query on a
    single-thread stream takes twice as long. Callers serialise the calls to one model (`lock`), which also
    keeps one caller's batches from fighting another's over the cores.

    `precision` "bf16" / "f32" runs an fp32 graph at that precision; "int8" names a quantised model (from
    `ensure_quantized`), whose remaining floating-point ops run in bf16 where the CPU has it. `align`: batch
    widths are padded to a multiple of it (AMX tiles hold 16 rows: 62x131 runs ~8 % slower per token than 64x128;
    the extra padding costs less than that, bench/embed.py). Not for int8: on the AMX Xeon its kernels return
    wrong vectors for some rows of a batch padded to 16 (SciFact queries: mean cosine to fp32 0.951, min 0.728;
    unaligned 0.998 / 0.996; tests/rag/embed/test_embedder.py holds a batch to the vectors of its texts alone)."""

    def __init__(self, onnx_path: Path, *, threads: int | None = None, precision: str | None = None,
                 cache_dir: Path | None = None, mode: str = "latency") -> None:
        core = _core()
        if precision is None:
            precision = "bf16" if bf16_capable() else "f32"
        if precision not in MIN_COSINE:
            raise OpenVinoError(f"precision must be one of {sorted(MIN_COSINE)}, got {precision!r}")
        if mode not in ("latency", "throughput"):
            raise OpenVinoError(f"mode must be 'latency' or 'throughput', got {mode!r}")
        self.precision = precision
        self.mode = mode
        self.align = 1 if precision == "int8" else 16
        self.path = Path(onnx_path)
        hint = ("bf16" if bf16_capable() else "f32") if precision == "int8" else precision
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1),
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": mode.upper(),
            # Pinned threads would fight the extraction worker and the API's other threads for the same cores.
            "ENABLE_CPU_PINNING": False,
        }
        if cache_dir is not None:
            # OpenVINO's own compiled-blob cache: later processes load the compiled model instead of compiling.
            # Per ISA cap and per CPUID feature set: a blob compiled for AMX kernels must not be loaded by a run
            # that emulates an AVX2 CPU (ONEDNN_MAX_CPU_ISA, or qemu-x86_64 -cpu Haswell, which shares the disk).
            info = cpu_info()
            cap = f"-{info.onednn_max_isa}" if info.onednn_max_isa else ""
            core.set_property({"CACHE_DIR": str(Path(cache_dir) / f"openvino-blobs-{info.isa_digest[:8]}{cap}")})
        self.compiled = core.compile_model(str(self.path), "CPU", config)
        self.streams = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))) \
            if mode == "throughput" else 1
        self._request = self.compiled.create_infer_request()
        self._queue: Any = None
        # Callers hold it per call: the request and the queue serve one call at a time. A per-model lock lets a
        # query (latency model) run while an ingest holds the bulk model.
        self.lock = threading.Lock()
        self._inputs = {p.get_any_name() for p in self.compiled.inputs}

    def _feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"input_ids": input_ids.astype(np.int64, copy=False),
                 "attention_mask": attention_mask.astype(np.int64, copy=False)}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return feeds

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self._request.infer(self._feeds(input_ids, attention_mask))
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def embed_many(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Pooled vectors of each (input_ids, attention_mask) batch, in order, up to `streams` batches in flight.
        `batches` is consumed lazily: the next batch is built while the streams run (the caller pads it then)."""
        if self.streams == 1:
            return [self.embed(*b) for b in batches]
        import openvino as ov

        if self._queue is None:
            self._queue = ov.AsyncInferQueue(self.compiled, self.streams)
        out: list[np.ndarray | None] = []

        def done(request: Any, i: int) -> None:
            out[i] = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

        self._queue.set_callback(done)
        try:
            for i, b in enumerate(batches):
                out.append(None)
                self._queue.start_async(self._feeds(*b), i)  # blocks while every stream is busy
        finally:
            self._queue.wait_all()  # never leave requests running on arrays the caller may free
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:  # pragma: no cover - OpenVINO raises from wait_all when a request fails
            raise OpenVinoError(f"OpenVINO returned no output for batches {missing}")
        return out  # type: ignore[return-value]


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
                  probe_feeds: tuple[np.ndarray, np.ndarray],
                  calibration: Calibration | None = None, mode: str = "latency") -> OpenVinoEncoder:
    """An OpenVinoEncoder for the cached fp32 export (or, for precision "int8", its quantised model, made from
    `calibration` when missing), verified against ONNX Runtime fp32 once per OpenVINO version and precision (the
    verdict is memoised next to the export)."""
    import openvino as ov

    from ctxqa.rag.embed.onnx_runtime import OnnxEncoder

    onnx_path = Path(onnx_path)
    model_path = onnx_path
    if precision == "int8":
        if calibration is None:
            raise OpenVinoError("int8 needs calibration batches to quantise the model")
        model_path = ensure_quantized(onnx_path, calibration)
    enc = OpenVinoEncoder(model_path, threads=threads, precision=precision, cache_dir=onnx_path.parent, mode=mode)
    memo = onnx_path.parent / "openvino-verified.json"
    try:
        seen: dict[str, float] = json.loads(memo.read_text())
    except (OSError, ValueError):
        seen = {}
    key = f"{ov.__version__}|{enc.precision}" + (f"|{model_path.parent.name}" if precision == "int8" else "") \
        + ("|throughput" if mode == "throughput" else "")  # other kernels (one thread per stream): checked too
    if key not in seen:
        try:
            seen[key] = verify(enc, OnnxEncoder(onnx_path, threads=threads), probe_feeds)
        except OpenVinoError:
            if precision == "int8":  # a bad quantisation must not be picked up again by the next process
                shutil.rmtree(model_path.parent, ignore_errors=True)
            raise
        atomic_write(memo, json.dumps(seen, indent=1).encode())
    return enc
