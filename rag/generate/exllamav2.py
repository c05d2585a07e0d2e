"""ExLlamaV2 0.3.2 backend: 4-bit GPTQ and EXL2 Llama-family models on NVIDIA GPUs.

Facts this relies on (read from the 0.3.2 sources, see reference/EXLLAMAV2.md):
- `import exllamav2` loads (or JIT-compiles) a CUDA extension. That happens here, in the constructor (service
  start-up), never inside a request. Before it, the model directory is checked (files, config.json types, 4-bit
  GPTQ only) and CUDA is required, each with its own clear `GeneratorError`.
- Two ways to run requests concurrently:
  - paged mode (flash-attn >= 2.5.7): exllamav2's dynamic generator shares a paged cache among jobs;
  - otherwise `exl_batch.StaticBatcher`: batches of left-padded prompts over a batch-sized cache. (The dynamic
    generator without flash-attn runs one job at a time.) Either way `max_concurrency` is the batch size, so the
    API queue runs that many requests at once.
- The cache size is planned before loading (`vram.plan_cache`): `cache_tokens` when set, else what fits in free
  VRAM after the weights and `reserve_mb`.
- The dynamic generator has no default stop conditions (EOS would not stop it) and its default sampler is
  not greedy, so every job gets explicit stop conditions (EOS ids + stop strings) and explicit sampler settings.
- Nothing checks prompt + max_new_tokens <= max_seq_len at enqueue: the base class does, before submitting.
- The generator is not thread-safe, so one dedicated thread owns it; request threads talk to it through a queue
  (`submit`) and get their text deltas back through a per-request queue.
- Prompt text is encoded with special-token parsing only in the template parts of a `Prompt`
  (`special_tokens.py`): exllamav2's own `encode_special_tokens=False` still lets the tokenizers library read
  special added tokens (``</s>``) out of text, so text runs go through a tokenizers instance with
  `encode_special_tokens = True` (its flag for "encode special tokens as text").
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ctxqa.rag.generate.base import Completion, FinishReason, Generator, GeneratorError, GenParams, StopFilter
from ctxqa.rag.generate.exl_batch import Finished, GenRequest, StaticBatcher
from ctxqa.rag.generate.exl_support import (
    check_config_types,
    completion_times,
    configure_attention,
    import_exllamav2,
    read_config,
)
from ctxqa.rag.generate.special_tokens import SpecialSplitter
from ctxqa.rag.generate.vram import PAGE_SIZE, KVShape, plan_cache
from ctxqa.rag.types import Prompt

log = logging.getLogger(__name__)

NO_CUDA_MESSAGE = (
    "ExLlamaV2 needs an NVIDIA GPU with CUDA; none found. Use llm_backend=llama_cpp with a GGUF model"
)
_CACHE_CLASSES = {"fp16": "ExLlamaV2Cache", "q8": "ExLlamaV2Cache_Q8", "q6": "ExLlamaV2Cache_Q6", "q4": "ExLlamaV2Cache_Q4"}
DEFAULT_RESERVE_MB = 2048
# The matmul attention (no flash-attn) materialises batch x heads x q x k fp16 scores twice (scores, softmax);
# this share of the reserve bounds them through config.max_attention_size.
_ATTENTION_SHARE = 0.5


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
        reserve_mb: int = DEFAULT_RESERVE_MB,
        warmup: bool = True,
        name: str | None = None,
    ) -> None:
        if cache not in _CACHE_CLASSES:
            raise GeneratorError(f"llm_cache must be one of {', '.join(_CACHE_CLASSES)}, got {cache!r}")
        path = check_model_dir(model_dir)  # before CUDA: a wrong directory is wrong on any machine
        gpu = require_cuda()  # before importing exllamav2: its import loads or compiles CUDA code
        exllamav2 = import_exllamav2()
        import torch
        from exllamav2 import ExLlamaV2, ExLlamaV2Config, ExLlamaV2Tokenizer
        from exllamav2.generator import ExLlamaV2DynamicGenerator, ExLlamaV2DynamicJob, ExLlamaV2Sampler

        self._Job, self._Sampler = ExLlamaV2DynamicJob, ExLlamaV2Sampler
        self.name = name or path.name
        self.model_dir = path

        config = read_config(ExLlamaV2Config, path)
        if context_length:
            config.max_seq_len = int(context_length)
        if rope_scale is not None:
            config.scale_pos_emb = float(rope_scale)  # linear RoPE / position interpolation (airophin: 2.0)
        if rope_alpha:
            config.scale_alpha_value = float(rope_alpha)  # NTK alpha
        config.arch_compat_overrides()
        if config.max_seq_len < PAGE_SIZE:
            raise GeneratorError(f"context length {config.max_seq_len} is too small for ExLlamaV2 (minimum {PAGE_SIZE})")
        self.paged = flash_attn_paged_available() and not config.no_flash_attn
        configure_attention(config, flash_attn=self.paged)

        free = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
        weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        reserve = int(reserve_mb) * 2**20
        plan = plan_cache(
            paged=self.paged, seq_len=int(config.max_seq_len), max_batch_size=int(max_batch_size),
            cache_tokens=cache_tokens, cache=cache,
            kv=KVShape(config.num_hidden_layers, config.num_key_value_heads, config.head_dim),
            weights_bytes=weights, free_bytes=free, reserve_bytes=reserve,
        )
        self.plan = plan
        if not self.paged:
            budget = int(reserve * _ATTENTION_SHARE) // (4 * plan.batch_size * config.num_attention_heads)
            config.max_attention_size = min(config.max_attention_size, max(128 * 128, budget))
        cache_cls = getattr(exllamav2, _CACHE_CLASSES[cache])
        try:
            model = ExLlamaV2(config)
            if self.paged:
                kv_cache = cache_cls(model, max_seq_len=plan.tokens, lazy=True)
            else:
                kv_cache = cache_cls(model, batch_size=plan.batch_size, max_seq_len=plan.seq_len, lazy=True)
            model.load_autosplit(kv_cache, progress=False)
            tokenizer = ExLlamaV2Tokenizer(config)
        except torch.cuda.OutOfMemoryError as exc:
            raise GeneratorError(
                f"ExLlamaV2 ran out of GPU memory loading {path} ({plan.describe()}): raise CTXQA_LLM_VRAM_RESERVE_MB, "
                f"lower CTXQA_LLM_CACHE_TOKENS or CTXQA_LLM_MAX_BATCH_SIZE, or use CTXQA_LLM_CACHE=q4"
            ) from exc
        except Exception as exc:
            raise GeneratorError(f"ExLlamaV2 failed to load {path}: {type(exc).__name__}: {exc}") from exc
        self._model, self._cache = model, kv_cache
        self.cache_tokens = plan.tokens
        eos = eos_ids(path, config, tokenizer)
        text = TokenizerText.from_exllamav2(tokenizer, path / "tokenizer.json")
        generator: Any
        if self.paged:
            generator = ExLlamaV2DynamicGenerator(
                model=model, cache=kv_cache, tokenizer=tokenizer, max_batch_size=plan.batch_size, paged=True,
                # Paged mode asserts the prefill chunk is a whole number of pages; load_autosplit has capped
                # max_input_len at max_seq_len (>= PAGE_SIZE), which need not be one.
                max_chunk_size=(config.max_input_len // PAGE_SIZE) * PAGE_SIZE,
            )
            if warmup:
                generator.warmup()  # kernel autotuning happens here, not in the first request
        else:
            generator = StaticBatcher(
                model, kv_cache, pieces=text.pieces, decode=text.decode, eos_ids=eos,
                pad_id=text.pad_id, rows=plan.batch_size, seq_len=plan.seq_len,
            )
        log.info(
            "ExLlamaV2 %s on %s: %s, max_seq_len=%d, %s, max_batch_size=%d",
            exllamav2.__version__, gpu,
            "paged (flash-attn): concurrent jobs" if self.paged else "no flash-attn: static batches of left-padded prompts",
            config.max_seq_len, plan.describe(), plan.batch_size,
        )
        self._start(generator, text, int(config.max_seq_len), plan.batch_size, eos)
        if warmup and not self.paged:
            self.generate("Once upon a time,", GenParams(max_new_tokens=8))  # autotune before the first request

    def _start(self, generator: Any, text: TokenizerText, context_length: int, max_batch_size: int,
               eos: set[int]) -> None:
        """Everything after loading: request plumbing and the thread that owns `generator` (an exllamav2
        dynamic generator in paged mode, else a `StaticBatcher`).

        Kept apart from __init__ so the request/thread protocol can be exercised against stand-ins on machines
        where the real model cannot run (no CUDA).
        """
        self._generator, self._text = generator, text
        self.context_length = context_length
        self.max_batch_size = max_batch_size
        self.max_concurrency = max_batch_size
        self.eos_ids = eos
        self._inbox: queue.Queue[GenRequest | None] = queue.Queue()
        self._closed = False
        self._peak_paged = 0
        log.info("ExLlamaV2 stop tokens (EOS ids): %s", sorted(eos))
        target = generator.serve if isinstance(generator, StaticBatcher) else self._loop
        args = (self._inbox,) if isinstance(generator, StaticBatcher) else ()
        self._thread = threading.Thread(target=target, args=args, name=f"exllamav2-{self.name}", daemon=True)
        self._thread.start()

    @property
    def peak_batch(self) -> int:
        """The most requests generated at the same time so far (paged: exllamav2's active jobs)."""
        gen = self._generator
        return gen.peak_batch if isinstance(gen, StaticBatcher) else self._peak_paged

    # --- Generator API ----------------------------------------------------------------------------------------

    def _encode(self, prompt: Prompt) -> Any:
        import torch

        return torch.tensor([self._text.encode(prompt)], dtype=torch.long)

    def submit(self, prompt: str | Prompt, params: GenParams, cancel: threading.Event | None = None) -> GenRequest:
        """Thread-safe: queue a request for the generator thread; read its items from the returned `out`."""
        ids = self._encode(Prompt.of(prompt))
        self.check_fits(int(ids.shape[-1]), params.max_new_tokens)
        return self._submit(ids, params, cancel)

    def _submit(self, ids: Any, params: GenParams, cancel: threading.Event | None) -> GenRequest:
        if self._closed:
            raise GeneratorError(f"{self.name}: generator is closed")
        req = GenRequest(ids=[int(t) for t in ids[0].tolist()], params=params, cancel=cancel)
        if not isinstance(self._generator, StaticBatcher):
            req.job = self._Job(
                input_ids=ids,
                max_new_tokens=params.max_new_tokens,
                gen_settings=self._sampler_settings(params),
                seed=params.seed,
                stop_conditions=sorted(self.eos_ids) + list(params.stop),
                decode_special_tokens=False,
            )
            req.job.identifier = req
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
                done: Finished = payload
                finish: FinishReason = "stop" if stopper.stopped else done.reason
                tail = stopper.flush()
                if tail:
                    parts.append(tail)
                    yield tail
                finished = True
                yield Completion("".join(parts), n_prompt, done.new_tokens, finish, done.time_prefill, done.time_generate)
                return
        finally:
            if not finished:
                req.abandoned.set()  # consumer stopped reading: free the job's cache pages / batch row

    # --- paged mode: the thread that owns exllamav2's dynamic generator ---------------------------------------

    def _loop(self) -> None:
        gen = self._generator
        active: dict[int, GenRequest] = {}
        while True:
            try:
                new = [self._inbox.get()] if not active else []  # idle: sleep until a request arrives
                while True:
                    new.append(self._inbox.get_nowait())
            except queue.Empty:
                pass
            if any(r is None for r in new):  # close() sentinel: answer everyone, then stop
                for waiting in [*active.values(), *(r for r in new if r is not None)]:
                    waiting.finish("cancelled")
                gen.clear_queue()
                return
            for req in new:
                assert req is not None
                if req.cancelled():
                    req.finish("cancelled")
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
                    req.finish("cancelled", 0.0, time.perf_counter() - req.t_submit)
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
            self._peak_paged = max(self._peak_paged, len(getattr(gen, "active_jobs", ())))
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
                    reason: FinishReason = "length" if r.get("eos_reason") == "max_new_tokens" else "stop"
                    t_prefill, t_generate = completion_times(r)
                    streaming.out.put(("done", Finished(reason, int(r["new_tokens"]), t_prefill, t_generate)))

    def _emit_held(self, req: GenRequest, r: dict[str, Any]) -> None:
        """On EOS, exllamav2 puts text it was still holding (an unfinished stop-string prefix, say) under "held"
        instead of emitting it; it is real output, minus the EOS token's own piece."""
        held = r.get("held", {})
        text: str = held.get("text", "")
        tok = r.get("eos_triggering_token_id")
        pieces = self._text.pieces
        piece = pieces[tok] if isinstance(tok, int) and 0 <= tok < len(pieces) else ""
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
        if isinstance(self._generator, StaticBatcher):
            self._generator.closing.set()
        self._inbox.put(None)
        self._thread.join(timeout=30)
        model = getattr(self, "_model", None)
        if model is not None:
            try:
                model.unload()
            except Exception:  # best effort at shutdown
                log.debug("ExLlamaV2 unload failed", exc_info=True)
        self._generator = self._cache = self._model = None  # type: ignore[assignment]  # closed: never used again


# --- tokenizer text: encoding without special tokens from data, decoding pieces --------------------------------


class TokenizerText:
    """How the backend turns prompts into ids and ids into text, with the model's tokenizer.

    `specials` (spelling -> id) are what exllamav2's own special-token parsing recognises
    (`extended_piece_to_id`); `plain` encodes text with every special token read as text.
    """

    def __init__(self, *, specials: dict[str, int], plain: Any, bos_id: int | None, add_bos: bool,
                 pieces: list[str], decode: Any, pad_id: int) -> None:
        self.specials, self._plain = specials, plain
        self.bos_id, self.add_bos = bos_id, add_bos
        self.pieces, self.decode, self.pad_id = pieces, decode, pad_id
        self._splitter = SpecialSplitter(specials)

    @classmethod
    def from_exllamav2(cls, tokenizer: Any, tokenizer_json: Path) -> TokenizerText:
        import tokenizers
        import torch

        plain = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        plain.encode_special_tokens = True  # tokenizers' switch: special tokens in the input are plain text
        cfg = getattr(tokenizer, "tokenizer_config_dict", None) or {}
        bos_id = tokenizer.bos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

        def decode(ids: list[int]) -> str:
            return str(tokenizer.decode(torch.tensor([ids]), decode_special_tokens=False)[0])

        return cls(
            specials=dict(tokenizer.extended_piece_to_id), plain=plain, bos_id=bos_id,
            add_bos=bool(cfg.get("add_bos_token", True)) and bos_id is not None,
            pieces=tokenizer.get_id_to_piece_list(False), decode=decode, pad_id=int(pad),
        )

    def encode(self, prompt: Prompt) -> list[int]:
        runs = self._splitter.runs(prompt)
        # BOS is added unless the template already starts with it (chatml-ish writes "<s>"); data never counts.
        written = bool(runs) and runs[0].special and self.specials[runs[0].text] == self.bos_id
        ids = [self.bos_id] if self.add_bos and not written and self.bos_id is not None else []
        for run in runs:  # tokenizers.Tokenizer.encode is safe to call from several threads (it is not mutated)
            if run.special:
                ids.append(self.specials[run.text])
            else:
                ids.extend(self._plain.encode(run.text, add_special_tokens=False).ids)
        return [int(i) for i in ids]


# --- helpers --------------------------------------------------------------------------------------------------


def check_model_dir(model_dir: str | Path) -> Path:
    """The model directory, or the GeneratorError that says what is wrong with it (checked before CUDA)."""
    from ctxqa.rag.generate import resolve_model_path
    from ctxqa.rag.generate.inspect import inspect_model

    path = resolve_model_path(str(model_dir))
    if not path.is_dir():
        raise GeneratorError(f"ExLlamaV2 loads a model directory (GPTQ or EXL2), not a file: {path}")
    missing = [f for f in ("config.json", "tokenizer.json") if not (path / f).is_file()]
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        extra = " (ExLlamaV2 0.3.x reads tokenizer.json only; SentencePiece tokenizer.model is not supported)" if "tokenizer.json" in missing else ""
        raise GeneratorError(f"{path} lacks {', '.join(missing)}{extra}")
    check_config_types(path)
    problems = inspect_model(path).problems
    if problems:
        raise GeneratorError("; ".join(problems))
    return path


def eos_ids(path: Path, config: Any, tokenizer: Any) -> set[int]:
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
