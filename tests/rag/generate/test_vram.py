"""The ExLlamaV2 KV-cache plan (vram.py) for the seed models' shapes and common GPU sizes. Pure arithmetic."""

from __future__ import annotations

import pytest

from ctxqa.rag.generate.base import GeneratorError
from ctxqa.rag.generate.vram import GIB, PAGE_SIZE, KVShape, plan_cache

AIROPHIN_13B = KVShape(layers=40, kv_heads=40, head_dim=128)  # Llama-2 13B, no GQA
LLAMA_65B = KVShape(layers=80, kv_heads=64, head_dim=128)
LLAMA_7B = KVShape(layers=32, kv_heads=32, head_dim=128)


def plan(**kw):  # type: ignore[no-untyped-def]
    args = {"paged": False, "seq_len": 2048, "max_batch_size": 8, "cache_tokens": None, "cache": "fp16",
            "kv": LLAMA_7B, "weights_bytes": 4 * GIB, "free_bytes": 80 * GIB, "reserve_bytes": 2 * GIB}
    args.update(kw)
    return plan_cache(**args)


def test_the_old_fixed_size_is_what_the_issue_says() -> None:
    # max_seq_len x 8, always: airophin 8192 x 8 is ~50 GiB, the 65B's 2048 x 8 ~40 GiB of fp16 cache.
    assert AIROPHIN_13B.bytes_per_token("fp16") * 8192 * 8 / GIB == pytest.approx(50, abs=0.5)
    assert LLAMA_65B.bytes_per_token("fp16") * 2048 * 8 / GIB == pytest.approx(40, abs=0.5)


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize(("kv", "seq_len", "weights_gb", "card_gib"), [
    (AIROPHIN_13B, 8192, 7.3, 24),  # airophin-13B GPTQ on a 24 GB card
    (AIROPHIN_13B, 8192, 7.3, 48),
    (LLAMA_65B, 2048, 33.5, 48),  # the 65B 4-bit act-order file on a 48 GB card
    (LLAMA_65B, 2048, 33.5, 80),
])
def test_the_derived_cache_fits_the_card(paged: bool, kv: KVShape, seq_len: int, weights_gb: float, card_gib: int) -> None:
    free = int((card_gib - 0.6) * GIB)  # what the driver and context leave
    weights = int(weights_gb * 1e9)
    p = plan(paged=paged, kv=kv, seq_len=seq_len, weights_bytes=weights, free_bytes=free)
    assert p.cache_bytes + weights + p.reserve_bytes <= free
    assert p.tokens >= seq_len, "at least one full-length request"
    if paged:
        assert p.tokens % PAGE_SIZE == 0 and p.batch_size == 8
        # The next page would not have fitted (unless the whole want fits).
        assert p.tokens == seq_len * 8 or (p.tokens + PAGE_SIZE) * kv.bytes_per_token("fp16") + weights + p.reserve_bytes > free
    else:
        assert p.tokens == p.batch_size * seq_len and 1 <= p.batch_size <= 8


def test_an_explicit_size_that_does_not_fit_names_the_setting() -> None:
    with pytest.raises(GeneratorError) as info:
        plan(paged=True, kv=LLAMA_65B, weights_bytes=int(33.5e9), free_bytes=47 * GIB, cache_tokens=16384)
    msg = str(info.value)
    assert "CTXQA_LLM_CACHE_TOKENS (now 16384)" in msg and "CTXQA_LLM_CACHE=q4" in msg and "GiB free" in msg


def test_explicit_sizes_are_used_as_given() -> None:
    p = plan(paged=True, cache_tokens=5000)
    assert p.tokens == 5120  # whole pages
    p = plan(paged=False, cache_tokens=3 * 2048 + 100)
    assert (p.batch_size, p.tokens) == (3, 3 * 2048)
    with pytest.raises(GeneratorError, match=r"CTXQA_LLM_CACHE_TOKENS=1000 holds less than one full-length sequence"):
        plan(paged=False, cache_tokens=1000)
    with pytest.raises(GeneratorError, match="less than one full-length request"):
        plan(paged=True, cache_tokens=1024)


def test_a_card_too_small_for_one_sequence_or_the_weights() -> None:
    with pytest.raises(GeneratorError, match="CTXQA_LLM_MAX_BATCH_SIZE.*CTXQA_LLM_CACHE=q4"):
        plan(kv=AIROPHIN_13B, seq_len=8192, weights_bytes=int(7.3e9), free_bytes=15 * GIB)  # 6.25 GiB per sequence
    with pytest.raises(GeneratorError, match="do not fit the .* free GPU memory"):
        plan(kv=LLAMA_65B, weights_bytes=int(33.5e9), free_bytes=23 * GIB)


def test_quantized_caches_are_smaller_and_count_their_fp16_buffer() -> None:
    fp16 = plan(cache="fp16", free_bytes=None)
    q4 = plan(cache="q4", free_bytes=None)
    assert fp16.tokens == q4.tokens == 8 * 2048
    # 4 bits plus one fp16 scale per 32 elements, plus one fp16 K/V pair of the full shape to dequantise into.
    per_token = LLAMA_7B.layers * 2 * LLAMA_7B.kv_heads * LLAMA_7B.head_dim
    assert q4.cache_bytes == int(q4.tokens * per_token * (0.5 + 2 / 32)) + q4.tokens * per_token // LLAMA_7B.layers * 2
    assert q4.cache_bytes < fp16.cache_bytes / 3
    # On a card where fp16 fits 2 rows of 8192, q4 fits more.
    rows = [plan(cache=c, kv=AIROPHIN_13B, seq_len=8192, weights_bytes=int(7.3e9), free_bytes=23 * GIB).batch_size
            for c in ("fp16", "q4")]
    assert rows[1] > rows[0] >= 1


def test_bad_values() -> None:
    with pytest.raises(GeneratorError, match="llm_cache must be one of"):
        plan(cache="q3")
    with pytest.raises(GeneratorError, match="CTXQA_LLM_MAX_BATCH_SIZE must be >= 1"):
        plan(max_batch_size=0)
    assert "KV cache 8 rows x 2048 tokens" in plan().describe()
