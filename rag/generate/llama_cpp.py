"""llama.cpp backend (llama-cpp-python): GGUF models on CPU, optionally with layers offloaded to a GPU.

Design notes
- The decode loop drives `Llama.generate()` token by token instead of `create_completion(stream=True)`.
  create_completion's streaming tail decodes held-back tokens one at a time with errors="ignore" (a character
  split across tokens is dropped) and it re-detokenizes the whole completion per token. Owning the loop gives
  exact UTF-8 handling (an incremental decoder), our own stop-string hold-back (`StopFilter`), EOS handling for
  every end-of-generation token, and a cancellation check between tokens.
- The prompt is tokenized once: BOS if the model's metadata asks for it, the template's special tokens (the
  vocabulary's CONTROL tokens, spelled in the template parts of a `Prompt`), and every stretch of text between them
  with `tokenize(special=False)`, so retrieved text never becomes a control token (`special_tokens.py`). For text
  without special spellings in its data this gives exactly llama.cpp's `tokenize(special=True)`. `count_tokens`
  uses the same encoding, so counts match what is fed.
- Context length and RoPE scaling come from the GGUF file (llama.cpp reads `{arch}.rope.scaling.*` itself);
  `context_length` / `rope_scale` override them (rope_scale=1.0 means "no scaling", even if the file has some).
- One `Llama` context is not thread-safe: a lock serialises requests (a second caller waits). Tokenizing only
  reads the vocabulary, so `count_tokens` does not take the lock and never waits behind a long generation.
- llama.cpp's extra CPU buffer types (weights repacked for AMX / AVX512 kernels) are off unless
  `extra_buffers=True`: with llama-cpp-python 0.3.36 compiled natively on an AMX Xeon, the AMX buffer type
  segfaults at the first decode (SmolLM2 Q4_1; with them off the same build runs). `Llama()` offers no parameter
  for it, so the model parameters are adjusted while it is constructed (`_model_params`).
- The KV cache is reset before each request. llama-cpp-python would otherwise reuse a cached prompt prefix and
  re-evaluate only the suffix, which can change logits in the last bits and so flip a greedy near-tie: the
  same request must give the same answer every time.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import struct
import threading
import time
from collections.abc import Generator as Generator_
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ctxqa.rag.generate.base import Completion, FinishReason, Generator, GeneratorError, GenParams, StopFilter
from ctxqa.rag.generate.gguf_file import read_gguf_metadata
from ctxqa.rag.generate.inspect import DEFAULT_MAX_CONTEXT  # without a context length: the file's, capped
from ctxqa.rag.generate.special_tokens import SpecialSplitter
from ctxqa.rag.types import Prompt

log = logging.getLogger(__name__)



_params_lock = threading.Lock()


@contextlib.contextmanager
def _model_params(llama_cpp: Any, **fields: Any) -> Iterator[None]:
    """While a `Llama` is constructed, give its model parameters these field values (where this llama.cpp has
    the field). `Llama.__init__` reads `llama_model_default_params()` through its module, so that is wrapped."""
    module = llama_cpp.llama.llama_cpp
    original = module.llama_model_default_params

    def adjusted() -> Any:
        params = original()
        for name, value in fields.items():
            if any(f[0] == name for f in getattr(type(params), "_fields_", ())):
                setattr(params, name, value)
        return params

    with _params_lock:
        module.llama_model_default_params = adjusted
        try:
            yield
        finally:
            module.llama_model_default_params = original


class LlamaCppGenerator(Generator):
    def __init__(
        self,
        model_path: str | Path,
        *,
        context_length: int | None = None,
        gpu_layers: int = 0,
        threads: int | None = None,
        seed: int = 0,
        rope_scale: float | None = None,
        rope_alpha: float | None = None,
        batch_size: int = 512,
        name: str | None = None,
        extra_buffers: bool = False,
    ) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise GeneratorError(
                f"llm_backend=llama_cpp needs llama-cpp-python ({exc}); install it with: pip install 'ctxqa[gguf]'"
            ) from exc
        self._lc = llama_cpp
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise GeneratorError(f"GGUF model file not found: {path}; set llm_model to a .gguf file or 'bundled:smollm2'")
        self.name = name or path.name
        self.model_path = path

        meta = _read_metadata(llama_cpp, path)
        arch = meta.get("general.architecture", "llama")
        n_ctx_train = int(meta.get(f"{arch}.context_length", 0) or 0)
        n_ctx = context_length or (min(n_ctx_train, DEFAULT_MAX_CONTEXT) if n_ctx_train else DEFAULT_MAX_CONTEXT)

        kwargs: dict[str, Any] = {}
        if rope_scale is not None:
            # Linear RoPE scaling (position interpolation) = positions compressed by the factor; llama.cpp takes
            # the frequency scale, i.e. its inverse (airophin: factor 2 -> rope_freq_scale 0.5). Without it
            # llama.cpp uses the file's own scaling (rope_freq_scale 0 = "from the model").
            if rope_scale <= 0:
                raise GeneratorError(f"llm_rope_scale must be > 0 (1.0 = no scaling), got {rope_scale}")
            kwargs["rope_freq_scale"] = 1.0 / rope_scale
        if rope_alpha and rope_alpha != 1.0:
            # NTK-aware alpha as ExLlama defines it: base' = base * alpha ** (d / (d - 2)), d = head dim.
            base = float(meta.get(f"{arch}.rope.freq_base", 10000.0))
            heads = int(meta.get(f"{arch}.attention.head_count", 0) or 0)
            embd = int(meta.get(f"{arch}.embedding_length", 0) or 0)
            head_dim = int(meta.get(f"{arch}.rope.dimension_count", 0) or 0) or (embd // heads if heads else 128)
            kwargs["rope_freq_base"] = base * rope_alpha ** (head_dim / (head_dim - 2))
        if n_ctx_train and n_ctx > n_ctx_train and not kwargs:
            log.warning("context length %d exceeds %s's training context %d without RoPE scaling", n_ctx, path.name, n_ctx_train)

        try:
            with _model_params(llama_cpp, use_extra_bufts=extra_buffers):
                self._llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_batch=min(batch_size, n_ctx),
                    n_gpu_layers=gpu_layers,
                    n_threads=threads,
                    n_threads_batch=threads,
                    seed=seed,
                    logits_all=False,
                    verbose=False,
                    **kwargs,
                )
        except (ValueError, RuntimeError, OSError) as exc:
            raise GeneratorError(f"llama.cpp could not load {path}: {exc} (is it a valid GGUF file for this llama.cpp version?)") from exc
        self.context_length = int(self._llm.n_ctx())
        self.n_ctx_train = n_ctx_train
        self._lock = threading.Lock()
        self._bos = int(self._llm.token_bos())
        # Does tokenize(add_bos=True) actually prepend BOS for this model (GGUF add_bos_token)?
        self._auto_bos = self._llm.tokenize(b"", add_bos=True, special=True)[:1] == [self._bos]
        self.special_ids = _special_tokens(llama_cpp, self._llm)
        self._splitter = SpecialSplitter(self.special_ids)
        log.info(
            "llama.cpp: %s n_ctx=%d (trained %d) gpu_layers=%d threads=%s %s",
            path.name, self.context_length, n_ctx_train, gpu_layers, threads or "auto", kwargs or "",
        )

    # --- Generator API ----------------------------------------------------------------------------------------

    def _encode(self, prompt: Prompt) -> list[int]:
        ids = [self._bos] if self._auto_bos else []
        for run in self._splitter.runs(prompt):
            if run.special:
                ids.append(self.special_ids[run.text])
            else:
                ids.extend(self._llm.tokenize(run.text.encode("utf-8"), add_bos=False, special=False))
        # A template that writes BOS itself (chatml-ish "{bos}...") plus the automatic BOS would double it.
        if self._auto_bos and len(ids) >= 2 and ids[0] == ids[1] == self._bos:
            ids = ids[1:]
        return ids

    def _stream(
        self, encoded: list[int], n_prompt: int, params: GenParams, cancel: threading.Event | None
    ) -> Iterator[str | Completion]:
        with self._lock:
            completion = yield from self._decode(encoded, n_prompt, params, cancel)
        # Yielded outside the lock: a consumer that stops reading once it has the Completion (and keeps the
        # exhausted-but-unclosed iterator around) must not block the next request.
        yield completion

    def _decode(
        self, ids: list[int], n_prompt: int, params: GenParams, cancel: threading.Event | None
    ) -> Generator_[str, None, Completion]:
        """Yields text deltas; returns the Completion."""
        llm = self._llm
        t0 = time.perf_counter()
        t_first: float | None = None
        n_sampled = 0
        finish: FinishReason = "length"
        parts: list[str] = []
        stopper = StopFilter(params.stop)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

        if cancel is not None and cancel.is_set():
            return Completion("", n_prompt, 0, "cancelled", 0.0, 0.0)

        llm.reset()  # no prefix reuse: see module docstring (determinism)
        llm.set_seed(params.seed)
        tokens = llm.generate(
            ids,
            # temp == 0 makes llama-cpp-python use its greedy sampler; the rest only applies when sampling.
            temp=params.temperature,
            top_k=params.top_k,  # 0 disables top-k in llama.cpp
            top_p=params.top_p,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
            reset=True,
        )
        try:
            for token in tokens:
                if t_first is None:
                    t_first = time.perf_counter()
                n_sampled += 1
                if self._is_eog(token):
                    finish = "stop"
                    break
                delta = stopper.feed(utf8.decode(llm.detokenize([token])))
                if delta:
                    parts.append(delta)
                    yield delta
                if stopper.stopped:
                    finish = "stop"
                    break
                if n_sampled >= params.max_new_tokens:
                    break
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
        finally:
            tokens.close()  # stop llama.cpp evaluating; also runs when the consumer abandons the stream

        if not stopper.stopped:
            tail = stopper.feed(utf8.decode(b"", final=True))
            tail += stopper.flush() if not stopper.stopped else ""
            if stopper.stopped:
                finish = "stop"
            if tail:
                parts.append(tail)
                yield tail
        t_end = time.perf_counter()
        t_first = t_first or t_end
        return Completion(
            text="".join(parts),
            prompt_tokens=n_prompt,
            completion_tokens=n_sampled,
            finish_reason=finish,
            time_prefill=t_first - t0,
            time_generate=t_end - t_first,
        )

    def _is_eog(self, token: int) -> bool:
        # Any end-of-generation token (EOS, EOT, <|im_end|>...), as llama.cpp itself defines them.
        try:
            return bool(self._lc.llama_vocab_is_eog(self._llm._model.vocab, token))
        except AttributeError:  # older/newer binding layout: fall back to the one EOS id
            return token == self._llm.token_eos()

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            with self._lock:
                llm.close()
                self._llm = None  # type: ignore[assignment]


def _special_tokens(llama_cpp: Any, llm: Any) -> dict[str, int]:
    """Spelling -> id of the tokens llama.cpp reads out of text only with special=True (CONTROL and UNKNOWN:
    `tokenizer_st_partition` skips those when parse_special is off; USER_DEFINED ones are matched either way)."""
    vocab = llm._model.vocab
    wanted = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    out: dict[str, int] = {}
    for i in range(int(llama_cpp.llama_vocab_n_tokens(vocab))):
        if llama_cpp.llama_vocab_get_attr(vocab, i) & wanted:
            text = llama_cpp.llama_vocab_get_text(vocab, i).decode("utf-8", errors="replace")
            out.setdefault(text, i)
    return out


def _read_metadata(llama_cpp: Any, path: Path) -> dict[str, Any]:
    """GGUF metadata (scalar keys) to size the context before the real load allocates the KV cache.

    Parsed from the file header in Python: a vocab-only llama.cpp load would also build a throwaway context
    and print to stderr. Falls back to that probe for header versions this reader does not know.
    """
    try:
        return read_gguf_metadata(path)
    except (OSError, ValueError, struct.error):
        pass
    try:
        probe = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError, OSError) as exc:
        raise GeneratorError(f"llama.cpp could not read {path}: {exc} (is it a valid GGUF file?)") from exc
    try:
        return dict(probe.metadata)
    finally:
        probe.close()
