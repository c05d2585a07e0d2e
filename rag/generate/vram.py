"""How big the ExLlamaV2 KV cache is, decided before anything is loaded onto the GPU.

The cache used to be max_seq_len x llm_max_batch_size tokens, always: for airophin-13B at 8192 x 8 that is
50 GiB of fp16 cache, for the 65B at 2048 x 8 40 GiB on top of 33 GB of weights, and "Insufficient VRAM" on any
card under 80 GB. Now it is `llm_cache_tokens` when set, else as much of `context x batch` as fits in the free
VRAM once the weights (the safetensors' size) and a reserve (`llm_vram_reserve_mb`, for the kernels' scratch
space and the attention matrices) are taken off. When even one full-length sequence does not fit, or a
requested size does not, the error names the settings to change.

Paged mode (flash-attn) shares `tokens` cache slots among all jobs in 256-token pages. Without flash-attn the
batched generator keeps one row of `seq_len` slots per sequence, so the plan is in whole rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctxqa.rag.generate.base import GeneratorError

PAGE_SIZE = 256  # exllamav2.generator.dynamic.PAGED_PAGE_SIZE: paged cache lengths are multiples of it
GIB = 2**30

# Bytes per cached K or V element: fp16, or exllamav2's grouped RTN caches (wbits per element plus one fp16
# scale per 32 elements: cache.py ExLlamaV2Cache_Q, shape_s = head_dim // 32).
ELEMENT_BYTES = {"fp16": 2.0, "q8": 1 + 2 / 32, "q6": 0.75 + 2 / 32, "q4": 0.5 + 2 / 32}


@dataclass(frozen=True)
class KVShape:
    layers: int
    kv_heads: int
    head_dim: int

    def bytes_per_token(self, cache: str) -> float:
        return self.layers * 2 * self.kv_heads * self.head_dim * ELEMENT_BYTES[cache]

    def fixed_bytes(self, cache: str, tokens_per_row: int, rows: int) -> int:
        """The quantized caches also keep one fp16 K/V pair of the full cache shape to (de)quantize into."""
        return 0 if cache == "fp16" else rows * tokens_per_row * self.kv_heads * self.head_dim * 2 * 2


@dataclass(frozen=True)
class CachePlan:
    paged: bool
    batch_size: int  # sequences generated at once
    seq_len: int  # tokens per sequence (the context length)
    tokens: int  # cache slots: paged, shared by all jobs; unpaged, batch_size rows of seq_len
    cache_bytes: int
    weights_bytes: int
    reserve_bytes: int
    free_bytes: int | None

    def describe(self) -> str:
        rows = f"{self.tokens} tokens shared by up to {self.batch_size} jobs" if self.paged else (
            f"{self.batch_size} rows x {self.seq_len} tokens")
        free = f", {self.free_bytes / GIB:.1f} GiB free" if self.free_bytes is not None else ""
        return (f"KV cache {rows} ({self.cache_bytes / GIB:.2f} GiB) + weights {self.weights_bytes / GIB:.2f} GiB "
                f"+ reserve {self.reserve_bytes / GIB:.2f} GiB{free}")


def plan_cache(
    *,
    paged: bool,
    seq_len: int,
    max_batch_size: int,
    cache_tokens: int | None,
    cache: str,
    kv: KVShape,
    weights_bytes: int,
    free_bytes: int | None,
    reserve_bytes: int,
) -> CachePlan:
    if cache not in ELEMENT_BYTES:
        raise GeneratorError(f"llm_cache must be one of {', '.join(ELEMENT_BYTES)}, got {cache!r}")
    if max_batch_size < 1:
        raise GeneratorError(f"CTXQA_LLM_MAX_BATCH_SIZE must be >= 1, got {max_batch_size}")
    if cache_tokens is not None and cache_tokens < 1:
        raise GeneratorError(f"CTXQA_LLM_CACHE_TOKENS must be >= 1, got {cache_tokens}")
    per_token = kv.bytes_per_token(cache)
    room = None if free_bytes is None else free_bytes - weights_bytes - reserve_bytes
    if free_bytes is not None and room is not None and room <= 0:
        raise GeneratorError(
            f"the model's weights ({weights_bytes / GIB:.1f} GiB) plus the reserve ({reserve_bytes / GIB:.1f} GiB, "
            f"CTXQA_LLM_VRAM_RESERVE_MB) do not fit the {free_bytes / GIB:.1f} GiB of free GPU memory: use a smaller "
            f"quantisation of the model, a GPU with more memory, or llm_backend=llama_cpp with a GGUF"
        )

    def size(tokens: int, rows: int) -> int:
        return int(tokens * per_token) + kv.fixed_bytes(cache, tokens // rows, rows)

    def fits(tokens: int, rows: int) -> bool:
        return room is None or size(tokens, rows) <= room

    if paged:
        want = cache_tokens if cache_tokens is not None else seq_len * max_batch_size
        tokens = -(-want // PAGE_SIZE) * PAGE_SIZE
        if cache_tokens is None:
            while tokens > PAGE_SIZE and not fits(tokens, 1):
                tokens -= PAGE_SIZE
        rows = max_batch_size
    else:
        if cache_tokens is not None:
            rows = min(max_batch_size, cache_tokens // seq_len)
            if rows < 1:
                raise GeneratorError(
                    f"CTXQA_LLM_CACHE_TOKENS={cache_tokens} holds less than one full-length sequence of {seq_len} "
                    f"tokens (the context length, CTXQA_LLM_CONTEXT_LENGTH): raise it to at least {seq_len}, or "
                    f"lower the context length"
                )
        else:
            rows = max_batch_size
            while rows > 1 and not fits(rows * seq_len, rows):
                rows -= 1
        tokens = rows * seq_len
    cache_rows = 1 if paged else rows  # a paged cache is one long row of pages
    plan = CachePlan(paged, rows, seq_len, tokens, size(tokens, cache_rows), weights_bytes, reserve_bytes, free_bytes)
    if paged and tokens < seq_len:
        raise GeneratorError(
            f"the KV cache holds {tokens} tokens, less than one full-length request of {seq_len} "
            f"(CTXQA_LLM_CONTEXT_LENGTH): {_advice(plan, cache_tokens)}")
    if not fits(tokens, cache_rows):
        raise GeneratorError(f"the model plus its KV cache do not fit the GPU: {plan.describe()}. "
                             f"{_advice(plan, cache_tokens)}")
    return plan


def _advice(plan: CachePlan, cache_tokens: int | None) -> str:
    first = (f"lower CTXQA_LLM_CACHE_TOKENS (now {cache_tokens}) or unset it to size the cache from free memory"
             if cache_tokens is not None else "lower CTXQA_LLM_MAX_BATCH_SIZE")
    return (f"{first}, use CTXQA_LLM_CACHE=q4 (3.5x smaller than fp16), shorten CTXQA_LLM_CONTEXT_LENGTH, "
            f"or lower CTXQA_LLM_VRAM_RESERVE_MB")
