"""ONNX Runtime backend for the sentence embedder: export once, cache, run without torch.

Why: on a 2-core CPU the PyTorch forward of MiniLM is the ingestion bottleneck. The same weights exported to ONNX,
with ONNX Runtime's BERT fusions (one fused Attention / SkipLayerNorm / BiasGelu op per layer) run about 1.5-2x
faster, and dynamic int8 quantisation of the matrix multiplications (per-channel weights) about 2-3x faster, at a
retrieval quality within a fraction of a percent of fp32 (bench/embed_quality.py measures it on BEIR SciFact).

How
- `ensure_exported(model_dir, precision)` exports the Hugging Face encoder of a local sentence-transformers
  directory with `torch.onnx.export` (dynamic batch and sequence axes; mean or CLS pooling inside the graph, as
  the model's pooling config says), runs ONNX Runtime's transformer optimiser and, for "int8", the recipe of
  rag/embed/onnx_int8.py (smoothed dynamic int8, per-channel weights; 7-bit weights on CPUs without VNNI). Each artefact is checked against the torch model on probe
  texts before it is published; a graph that does not reproduce the torch vectors is refused, never cached.
- Artefacts live in `<cache>/onnx/<fingerprint>/`, the fingerprint covering the model files' contents, the export
  recipe revision and the ONNX Runtime version. Files are written to a temporary name and renamed into place, so
  concurrent processes never see a half-written model. Export needs torch, transformers and onnx (all local, no
  network); running a cached model needs only onnxruntime and numpy.
- `OnnxEncoder.embed(input_ids, attention_mask)` returns pooled, *unnormalised* float32 vectors; rag/embed.py
  does tokenisation, batching and L2 normalisation, the same for every backend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ctxqa.rag.embed.onnx_int8 import quantise, recipe_for_this_cpu
from ctxqa.rag.files import atomic_write

log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]

# Bump when the exported graph, the optimiser settings or the quantisation recipe change: old caches are ignored.
# 2: the int8 recipe of rag/embed/onnx_int8.py (smoothing, fp32 embeddings and first FFN outputs, 7-bit weights
# on CPUs without VNNI).
EXPORT_REVISION = 2
OPSET = 17

# Checked after every export: cosine to the torch vectors must be at least this on every probe text.
MIN_COSINE: dict[str, float] = {"fp32": 0.9999, "int8": 0.98}

_PROBES = [
    "hello",
    "FastAPI is a modern, fast (high-performance) web framework for building APIs with Python.",
    "Net sales increased 8% compared to the same quarter last year, driven primarily by Services revenue.",
    "Alterations of the architecture of cerebral white matter in the developing human brain can affect cortical "
    "development and result in functional disabilities. " * 4,
    "def read_item(item_id: int, q: str | None = None):\n    return {'item_id': item_id, 'q': q}",
]


def probe_texts() -> list[str]:
    """Texts every exported or compiled graph is checked on (short, long, prose, numbers, code)."""
    return list(_PROBES)


class OnnxExportError(RuntimeError):
    pass


def default_cache_dir() -> Path:
    """`$CTXQA_CACHE_DIR`, else `$XDG_CACHE_HOME/ctxqa`, else `~/.cache/ctxqa`."""
    env = os.environ.get("CTXQA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ctxqa"


def _model_files(model_dir: Path) -> list[Path]:
    names = ["config.json", "sentence_bert_config.json", "modules.json", "1_Pooling/config.json",
             "model.safetensors", "pytorch_model.bin"]
    return [model_dir / n for n in names if (model_dir / n).is_file()]


def _file_sha256(path: Path, memo: dict[str, str]) -> str:
    """Content hash, memoised by (path, size, mtime) in the cache so a 90 MB weights file is read once."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in memo:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        memo[key] = h.hexdigest()
    return memo[key]


def fingerprint(model_dir: Path, cache_dir: Path) -> str:
    """Identifies what an export depends on: model contents, recipe revision, ONNX Runtime version."""
    import onnxruntime

    memo_path = cache_dir / "onnx" / "file-hashes.json"
    try:
        memo: dict[str, str] = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    before = dict(memo)
    h = hashlib.sha256(f"rev={EXPORT_REVISION};opset={OPSET};ort={onnxruntime.__version__}".encode())
    for p in _model_files(model_dir):
        h.update(f"{p.relative_to(model_dir)}={_file_sha256(p, memo)};".encode())
    if memo != before:
        atomic_write(memo_path, json.dumps(memo, indent=0).encode())
    return h.hexdigest()[:20]


def pooling_mode(model_dir: Path) -> str:
    """'mean' or 'cls', from the sentence-transformers pooling config (mean when there is none, as ST does)."""
    cfg_path = model_dir / "1_Pooling" / "config.json"
    modules = model_dir / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text()):
            if m.get("type", "").endswith("Pooling"):
                cfg_path = model_dir / m.get("path", "1_Pooling") / "config.json"
            elif not m.get("type", "").endswith(("Transformer", "Normalize")):
                raise OnnxExportError(f"module {m.get('type')} is not supported by the ONNX backend")
    if not cfg_path.is_file():
        return "mean"
    cfg = json.loads(cfg_path.read_text())
    modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
    if modes == ["pooling_mode_mean_tokens"]:
        return "mean"
    if modes == ["pooling_mode_cls_token"]:
        return "cls"
    raise OnnxExportError(f"pooling {modes} is not supported by the ONNX backend (mean or cls only)")


# -- export ----------------------------------------------------------------------------------------------------
def _export_fp32(model_dir: Path, out: Path, pooling: str) -> Any:
    """Export to `out`; returns the torch model (reused by the probe check)."""
    import warnings

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            h = self.m(input_ids=input_ids, attention_mask=attention_mask,
                       token_type_ids=token_type_ids).last_hidden_state
            if pooling == "cls":
                return h[:, 0]
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    wrapped = Pooled(model).eval()
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 1037, 2936, 6251, 102]], dtype=torch.long)
    mask = (ids != 0).long()
    mask[1] = 1
    dyn = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "token_type_ids")}
    dyn["sentence_embedding"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches (all benign here)
        torch.onnx.export(wrapped, (ids, mask, torch.zeros_like(ids)), str(out),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["sentence_embedding"], dynamic_axes=dyn, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    return wrapped.eval()  # export restores the mode it found, recursively: keep dropout off for the probe check


def _optimise(src: Path, dst: Path, model_dir: Path) -> None:
    """ONNX Runtime's offline BERT fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm)."""
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = json.loads((model_dir / "config.json").read_text())
    opt = optimize_model(str(src), model_type="bert", num_heads=int(cfg.get("num_attention_heads", 0)),
                         hidden_size=int(cfg.get("hidden_size", 0)), opt_level=1, use_gpu=False)
    opt.save_model_to_file(str(dst))


def _calibration_feeds(model_dir: Path) -> list[dict[str, np.ndarray]]:
    """The shipped calibration texts, one per feed (no padding in the activation statistics)."""
    from transformers import AutoTokenizer

    from ctxqa.rag.embed.samples import calibration_texts

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    cfg = model_dir / "sentence_bert_config.json"
    window = int(json.loads(cfg.read_text()).get("max_seq_length") or 256) if cfg.is_file() else 256
    feeds = []
    for text in calibration_texts():
        ids = np.array([tok(text, truncation=True, max_length=window)["input_ids"]], dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    return feeds


def _probe_check(path: Path, model_dir: Path, torch_model: Any, precision: str, threads: int | None) -> float:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(_PROBES, padding=True, truncation=True, max_length=256, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    with torch.no_grad():
        ref = torch_model(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask",
                                                                  "token_type_ids"))).numpy()
    got = OnnxEncoder(path, threads=threads).embed(feeds["input_ids"], feeds["attention_mask"])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    cos = float((ref * got).sum(1).min())
    if not cos >= MIN_COSINE[precision]:
        raise OnnxExportError(f"the exported {precision} model does not reproduce the torch vectors "
                              f"(min cosine {cos:.5f} < {MIN_COSINE[precision]}); not cached")
    return cos


_export_lock = threading.Lock()


def ensure_exported(model_dir: Path, precision: Precision = "fp32", cache_dir: Path | None = None,
                    threads: int | None = None) -> Path:
    """Path of the cached ONNX model for `model_dir` at `precision`, exporting it first when missing."""
    if precision not in MIN_COSINE:
        raise ValueError(f"precision must be one of {sorted(MIN_COSINE)}, got {precision!r}")
    model_dir = Path(model_dir)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    pooling = pooling_mode(model_dir)
    target_dir = cache / "onnx" / fingerprint(model_dir, cache)
    fp32 = target_dir / "model.fp32.onnx"
    recipe = recipe_for_this_cpu()
    final = target_dir / f"model.{recipe.tag if precision == 'int8' else precision}.onnx"
    if final.is_file():
        return final
    with _export_lock:
        if final.is_file():
            return final
        try:
            import onnx  # noqa: F401 - needed by the optimiser and quantiser
            import torch  # noqa: F401
        except ImportError as e:
            raise OnnxExportError(f"exporting the embedder to ONNX needs {e.name} (pip install onnx torch)") from e
        log.info("exporting %s to ONNX (%s) under %s; done once", model_dir, precision, target_dir)
        target_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target_dir, prefix=".export-") as tmp:
            raw, opt = Path(tmp) / "raw.onnx", Path(tmp) / "opt.onnx"
            torch_model = _export_fp32(model_dir, raw, pooling)
            _optimise(raw, opt, model_dir)
            if not fp32.is_file():
                _probe_check(opt, model_dir, torch_model, "fp32", threads)
                os.replace(opt, fp32)
            if precision == "int8":
                q = Path(tmp) / "int8.onnx"
                quantise(fp32, q, _calibration_feeds(model_dir), recipe, Path(tmp))
                _probe_check(q, model_dir, torch_model, "int8", threads)
                os.replace(q, final)
        (target_dir / "source.json").write_text(json.dumps(
            {"model_dir": str(model_dir), "pooling": pooling, "revision": EXPORT_REVISION,
             "int8_recipe": str(recipe)}, indent=1))
    return final


# -- runtime ---------------------------------------------------------------------------------------------------
class OnnxEncoder:
    """One ONNX Runtime session; `embed` is thread-safe (ORT sessions are) but callers serialise it so two
    batches never fight over the same cores."""

    def __init__(self, path: Path, *, threads: int | None = None, spin: bool = False) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning worker threads burn the cores that extraction (another thread) needs between batches.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        so.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids.astype(np.int64, copy=False),
                 "attention_mask": attention_mask.astype(np.int64, copy=False)}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        out = self.session.run(["sentence_embedding"], feeds)[0]
        return np.asarray(out, dtype=np.float32)
