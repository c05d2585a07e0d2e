"""ExLlamaV2 0.3.2 backend: 4-bit GPTQ and EXL2 Llama-family models on NVIDIA GPUs.

Facts this relies on (read from the 0.3.2 sources, see reference/EXLLAMAV2.md):
- `import exllamav2` JIT-compiles a CUDA extension. That happens here, in the constructor (service start-up),
  never inside a request; without CUDA we refuse early with a clear `GeneratorError`.
- The dynamic generator has no default stop conditions (EOS would not stop it) and its default sampler is
  not greedy, so every job gets explicit stop conditions (EOS ids + stop strings) and explicit sampler settings.
- Paged mode (concurrent jobs, prefix caching) needs flash-attn >= 2.5.7; otherwise `paged=False`, which runs
  one job at a time (later jobs wait in the generator's queue).
- Nothing checks prompt + max_new_tokens <= max_seq_len at enqueue: the base class does, before submitting.
- `iterate()` is synchronous and the generator is not thread-safe, so one dedicated thread owns it; request
  threads talk to it through a queue (`submit`) and get their text deltas back through a per-request queue.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxqa.rag.generate.base import Completion, FinishReason, Generator, GeneratorError, GenParams, StopFilter

log = logging.getLogger(__name__)

NO_CUDA_MESSAGE = (
    "ExLlamaV2 needs an NVIDIA GPU with CUDA; none found. Use llm_backend=llama_cpp with a GGUF model"
)
PAGE_SIZE = 256  # exllamav2.generator.dynamic.PAGED_PAGE_SIZE: cache lengths must be multiples of it
_CACHE_CLASSES = {"fp16": "ExLlamaV2Cache", "q8": "ExLlamaV2Cache_Q8", "q6": "ExLlamaV2Cache_Q6", "q4": "ExLlamaV2Cache_Q4"}


def require_cuda() -> str:
    """Return the GPU's name, or raise the GeneratorError that tells the user what to use instead."""
    try:
        import torch
    except ImportError as exc:
        raise GeneratorError(f"{NO_CUDA_MESSAGE} (torch is not installed: {exc})") from exc
    if not torch.cuda.is_available():
        raise GeneratorError(f"{NO_CUDA_MESSAGE} (torch {torch.__version__} sees no CUDA device)")
    return str(torch.cuda.get_device_name(0))


def flash_attn_paged_available() -> bool:
    """True when exllamav2 found flash-attn >= 2.5.7 (its paged-attention requirement).

    Asks exllamav2 itself (it probed flash-attn at import) so the two can never disagree.
    """
    try:
        from exllamav2.attn import has_flash_attn_with_paged
    except ImportError:
        return False
    return bool(has_flash_attn_with_paged)


@dataclass
class _Request:
    """One submitted job. The generator thread fills `out` with ("text", str), then ("done", result dict),
    ("cancelled", None) or ("error", Exception)."""

    job: Any
    prompt_tokens: int
    cancel: threading.Event | None
    out: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    abandoned: threading.Event = field(default_factory=threading.Event)
    token_ids: list[int] = field(default_factory=list)
    t_submit: float = field(default_factory=time.perf_counter)

    def cancelled(self) -> bool:
        return self.abandoned.is_set() or (self.cancel is not None and self.cancel.is_set())


class ExLlamaV2Generator(Generator):
    def __init__(
        self,
        model_dir: str | Path,
        *,
        context_length: int | None = None,
        rope_scale: float | None = None,
        rope_alpha: float | None = None,
        cache: str = "fp16",
        max_batch_size: int = 8,
        cache_tokens: int | None = None,
        reserve_vram: list[int] | None = None,
        warmup: bool = True,
        name: str | None = None,
    ) -> None:
        gpu = require_cuda()  # before importing exllamav2: its import compiles CUDA code
        if cache not in _CACHE_CLASSES:
            raise GeneratorError(f"llm_cache must be one of {', '.join(_CACHE_CLASSES)}, got {cache!r}")
        path = _check_model_dir(model_dir)
        try:
            import exllamav2
            from exllamav2 import ExLlamaV2, ExLlamaV2Config, ExLlamaV2Tokenizer
            from exllamav2.generator import ExLlamaV2DynamicGenerator, ExLlamaV2DynamicJob, ExLlamaV2Sampler
        except ImportError as exc:
            raise GeneratorError(
                f"llm_backend=exllamav2 needs the exllamav2 package ({exc}); install it with: "
                f"pip install 'ctxqa[gpu]' (exllamav2==0.3.2, tokenizers)"
            ) from exc
        except Exception as exc:  # JIT build failures surface as RuntimeError/OSError/subprocess errors
            raise GeneratorError(
                f"building/loading the ExLlamaV2 CUDA extension failed: {exc}. It needs nvcc matching torch's CUDA "
                f"and the CUDA headers (set CUDA_HOME, TORCH_CUDA_ARCH_LIST, MAX_JOBS; see reference/EXLLAMAV2.md)"
            ) from exc
        self._Job = ExLlamaV2DynamicJob
        self._Sampler = ExLlamaV2Sampler
        self.name = name or path.name
        self.model_dir = path

        try:
            config = ExLlamaV2Config(str(path))
        except (AssertionError, ValueError, KeyError, OSError) as exc:
            raise GeneratorError(f"ExLlamaV2 cannot read {path}: {exc}") from exc
        if context_length:
            config.max_seq_len = int(context_length)
        if rope_scale:
            config.scale_pos_emb = float(rope_scale)  # linear RoPE / position interpolation (airophin: 2.0)
        if rope_alpha:
            config.scale_alpha_value = float(rope_alpha)  # NTK alpha
        config.arch_compat_overrides()
        if config.max_seq_len < PAGE_SIZE:
            raise GeneratorError(f"context length {config.max_seq_len} is too small for ExLlamaV2 (minimum {PAGE_SIZE})")

        self.paged = flash_attn_paged_available() and not config.no_flash_attn
        batch = max(1, int(max_batch_size)) if self.paged else 1
        if cache_tokens is None:
            # Paged: room for `batch` full-length sequences (the generator admits fewer when prompts are long).
            # Unpaged: the cache is one page holding exactly one sequence.
            cache_tokens = config.max_seq_len * batch
        cache_tokens = -(-int(cache_tokens) // PAGE_SIZE) * PAGE_SIZE
        try:
            model = ExLlamaV2(config)
            kv_cache = getattr(exllamav2, _CACHE_CLASSES[cache])(model, max_seq_len=cache_tokens, lazy=True)
            model.load_autosplit(kv_cache, reserve_vram=reserve_vram, progress=False)
            tokenizer = ExLlamaV2Tokenizer(config)
            generator = ExLlamaV2DynamicGenerator(
                model=model,
                cache=kv_cache,
                tokenizer=tokenizer,
                max_batch_size=batch,
                # Paged mode asserts the prefill chunk is a whole number of pages; load_autosplit has capped
                # max_input_len at max_seq_len (>= PAGE_SIZE), which need not be one.
                max_chunk_size=(config.max_input_len // PAGE_SIZE) * PAGE_SIZE if self.paged else None,
                paged=self.paged,
            )
            if warmup:
                generator.warmup()  # kernel autotuning happens here, not in the first request
        except GeneratorError:
            raise
        except Exception as exc:
            raise GeneratorError(f"ExLlamaV2 failed to load {path}: {type(exc).__name__}: {exc}") from exc

        self._model, self._cache = model, kv_cache
        self.cache_tokens = cache_tokens
        log.info(
            "ExLlamaV2 %s on %s: %s mode (%s), max_seq_len=%d, cache=%s x %d tokens, max_batch_size=%d",
            exllamav2.__version__, gpu,
            "paged" if self.paged else "unpaged",
            "flash-attn >= 2.5.7: concurrent jobs" if self.paged else "no flash-attn >= 2.5.7: one job at a time",
            config.max_seq_len, cache, cache_tokens, batch,
        )
        self._start(generator, tokenizer, int(config.max_seq_len), batch, _eos_ids(path, config, tokenizer))

    def _start(self, generator: Any, tokenizer: Any, context_length: int, max_batch_size: int, eos_ids: set[int]) -> None:
        """Everything after loading: request plumbing and the thread that owns `generator`.

        Kept apart from __init__ so the request/thread protocol can be exercised against a stand-in generator
        on machines where the real one cannot run (no CUDA).
        """
        self._generator, self._tokenizer = generator, tokenizer
        self.context_length = context_length
        self.max_batch_size = max_batch_size
        self.max_concurrency = max_batch_size
        self.eos_ids = eos_ids
        self._add_bos = _add_bos(tokenizer)
        self._bos_text = tokenizer.bos_token or ""
        self._pieces: list[str] = tokenizer.get_id_to_piece_list(False)
        self._tok_lock = threading.Lock()
        self._inbox: queue.Queue[_Request | None] = queue.Queue()
        self._closed = False
        log.info("ExLlamaV2 stop tokens (EOS ids): %s", sorted(eos_ids))
        self._thread = threading.Thread(target=self._loop, name=f"exllamav2-{self.name}", daemon=True)
        self._thread.start()

    # --- Generator API ----------------------------------------------------------------------------------------

    def _encode(self, prompt: str) -> Any:
        # encode_special_tokens=True: a template that writes "<s>"/"</s>" means the special tokens (as llama.cpp's
        # special=True). BOS is added unless the rendered prompt already starts with it.
        add_bos = self._add_bos and not (self._bos_text and prompt.startswith(self._bos_text))
        with self._tok_lock:
            return self._tokenizer.encode(prompt, add_bos=add_bos, encode_special_tokens=True)

    def submit(self, prompt: str, params: GenParams, cancel: threading.Event | None = None) -> _Request:
        """Thread-safe: queue a request for the generator thread; read deltas from the returned request's `out`."""
        ids = self._encode(prompt)
        self.check_fits(int(ids.shape[-1]), params.max_new_tokens)
        return self._submit(ids, params, cancel)

    def _submit(self, ids: Any, params: GenParams, cancel: threading.Event | None) -> _Request:
        if self._closed:
            raise GeneratorError(f"{self.name}: generator is closed")
        job = self._Job(
            input_ids=ids,
            max_new_tokens=params.max_new_tokens,
            gen_settings=self._sampler_settings(params),
            seed=params.seed,
            stop_conditions=sorted(self.eos_ids) + list(params.stop),
            decode_special_tokens=False,
        )
        req = _Request(job=job, prompt_tokens=int(ids.shape[-1]), cancel=cancel)
        job.identifier = req
        self._inbox.put(req)
        return req

    def _sampler_settings(self, params: GenParams) -> Any:
        Settings = self._Sampler.Settings
        if params.greedy:
            return Settings.greedy()  # top_k=1, repetition penalty 1.0
        return Settings(
            temperature=params.temperature,
            top_p=params.top_p if params.top_p < 1.0 else 0.0,  # 0 disables top-p in exllamav2
            top_k=params.top_k,  # 0 disables top-k
            min_p=0.0,
            token_repetition_penalty=1.0,  # the default 1.025 would silently change answers
        )

    def _stream(
        self, encoded: Any, n_prompt: int, params: GenParams, cancel: threading.Event | None
    ) -> Iterator[str | Completion]:
        req = self._submit(encoded, params, cancel)
        stopper = StopFilter(params.stop)  # exllamav2 already holds back stop prefixes; this keeps the contract
        parts: list[str] = []
        finished = False
        try:
            while True:
                try:
                    kind, payload = req.out.get(timeout=1.0)
                except queue.Empty:
                    if not self._thread.is_alive():
                        raise GeneratorError(f"{self.name}: the generator thread is gone (closed or crashed)") from None
                    continue
                if kind == "text":
                    delta = stopper.feed(payload)
                    if delta:
                        parts.append(delta)
                        yield delta
                    if stopper.stopped:
                        req.abandoned.set()  # make the generator thread drop the job
                    continue
                if kind == "error":
                    finished = True
                    raise GeneratorError(f"{self.name}: generation failed: {payload}") from payload
                finish: FinishReason
                if kind == "cancelled":
                    finish = "stop" if stopper.stopped else "cancelled"
                    t_prefill, t_gen, n_new = 0.0, time.perf_counter() - req.t_submit, len(req.token_ids)
                else:
                    r = payload
                    reason = r.get("eos_reason")
                    finish = "length" if reason == "max_new_tokens" and not stopper.stopped else "stop"
                    t_prefill, t_gen, n_new = float(r["time_prefill"]), float(r["time_generate"]), int(r["new_tokens"])
                tail = stopper.flush()
                if tail:
                    parts.append(tail)
                    yield tail
                finished = True
                yield Completion("".join(parts), n_prompt, n_new, finish, t_prefill, t_gen)
                return
        finally:
            if not finished:
                req.abandoned.set()  # consumer stopped reading: free the job's cache pages

    # --- generator thread -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        gen = self._generator
        active: dict[int, _Request] = {}
        while True:
            try:
                new = [self._inbox.get()] if not active else []  # idle: sleep until a request arrives
                while True:
                    new.append(self._inbox.get_nowait())
            except queue.Empty:
                pass
            if any(r is None for r in new):  # close() sentinel: answer everyone, then stop
                for waiting in [*active.values(), *(r for r in new if r is not None)]:
                    waiting.out.put(("cancelled", None))
                gen.clear_queue()
                return
            for req in new:
                assert req is not None
                if req.cancelled():
                    req.out.put(("cancelled", None))
                    continue
                try:
                    gen.enqueue(req.job)
                except Exception as exc:  # e.g. the job cannot fit the cache even when alone
                    req.out.put(("error", exc))
                    continue
                active[id(req.job)] = req
            for key, req in list(active.items()):
                if req.cancelled():
                    gen.cancel(req.job)
                    del active[key]
                    req.out.put(("cancelled", None))
            if not active:
                continue
            try:
                results = gen.iterate()
            except Exception as exc:  # a CUDA error poisons every job in flight; fail them, keep serving
                log.exception("ExLlamaV2 iterate() failed")
                for failed in active.values():
                    failed.out.put(("error", exc))
                active.clear()
                gen.clear_queue()
                continue
            for r in results:
                streaming = active.get(id(r["job"]))
                if streaming is None or r["stage"] != "streaming":
                    continue
                ids = r.get("token_ids")
                if ids is not None:
                    streaming.token_ids.extend(int(t) for t in ids.flatten().tolist())
                if r.get("text"):
                    streaming.out.put(("text", r["text"]))
                if r["eos"]:
                    if r.get("eos_reason") == "stop_token":
                        self._emit_held(streaming, r)
                    del active[id(r["job"])]
                    streaming.out.put(("done", r))

    def _emit_held(self, req: _Request, r: dict[str, Any]) -> None:
        """On EOS, exllamav2 puts text it was still holding (an unfinished stop-string prefix, say) under "held"
        instead of emitting it; it is real output, minus the EOS token's own piece."""
        held = r.get("held", {})
        text: str = held.get("text", "")
        tok = r.get("eos_triggering_token_id")
        piece = self._pieces[tok] if isinstance(tok, int) and 0 <= tok < len(self._pieces) else ""
        if piece and text.endswith(piece):
            text = text[: -len(piece)]
        ids = held.get("token_ids")
        if ids is not None:
            req.token_ids.extend(int(t) for t in ids.flatten().tolist())
        if text:
            req.out.put(("text", text))

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout=30)
        model = getattr(self, "_model", None)
        if model is not None:
            try:
                model.unload()
            except Exception:  # best effort at shutdown
                log.debug("ExLlamaV2 unload failed", exc_info=True)
        self._generator = self._cache = self._model = None


# --- helpers --------------------------------------------------------------------------------------------------


def _check_model_dir(model_dir: str | Path) -> Path:
    from ctxqa.rag.generate import resolve_model_path

    path = resolve_model_path(str(model_dir))
    if not path.is_dir():
        raise GeneratorError(f"ExLlamaV2 loads a model directory (GPTQ or EXL2), not a file: {path}")
    missing = [f for f in ("config.json", "tokenizer.json") if not (path / f).is_file()]
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        extra = " (ExLlamaV2 0.3.x reads tokenizer.json only; SentencePiece tokenizer.model is not supported)" if "tokenizer.json" in missing else ""
        raise GeneratorError(f"{path} lacks {', '.join(missing)}{extra}")
    return path


def _eos_ids(path: Path, config: Any, tokenizer: Any) -> set[int]:
    """Every id that ends generation: config.json may list several (ExLlamaV2Config keeps only the first),
    generation_config.json may add more, and the tokenizer has its own."""
    ids: set[int] = set()

    def add(value: Any) -> None:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))

    for name in ("config.json", "generation_config.json"):
        file = path / name
        if file.is_file():
            try:
                add(json.loads(file.read_text(encoding="utf-8")).get("eos_token_id"))
            except (OSError, ValueError):
                pass
    add(config.eos_token_id)
    add(getattr(tokenizer, "eos_token_id", None))
    return ids


def _add_bos(tokenizer: Any) -> bool:
    cfg = getattr(tokenizer, "tokenizer_config_dict", None) or {}
    return bool(cfg.get("add_bos_token", True)) and tokenizer.bos_token_id is not None
