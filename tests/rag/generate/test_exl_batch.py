"""Batched generation without flash-attn (`exl_batch.StaticBatcher`), on CPU.

The real ExLlamaV2 forward pass needs CUDA, so the model here is `ExLlamaV2StandIn` (llama_reference.py): the
dequantised weights of a make_gptq_llama checkpoint computed in torch, behind ExLlamaV2.forward's contract,
with exllamav2 0.3.2's *own* attention function and mask builder (the real package, imported without its
kernels: exl_cpu.py). The tokenizer is the real ExLlamaV2Tokenizer. Everything in the batcher is real: padding,
masks, position offsets, chunked prefill, lockstep decoding, scheduling, cancellation. On the GPU the same
properties are tested against the real kernels (test_exllamav2.py, bench/gpu_check.sh).
"""

from __future__ import annotations

import importlib.util
import queue
import sys
import threading
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ctxqa.rag.generate import exl_batch
from ctxqa.rag.generate.base import Completion, GenParams
from ctxqa.rag.generate.exl_batch import GenRequest, StaticBatcher
from ctxqa.rag.generate.exl_support import configure_attention
from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator, TokenizerText
from tests.rag.generate.exl_cpu import real_exllamav2
from tests.rag.generate.llama_reference import ExLlamaV2StandIn, ReferenceLlama, StandInCache

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "make_gptq_llama.py"
EOS = 2


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_gptq_llama", SCRIPT)
    assert spec and spec.loader
    mk = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mk
    spec.loader.exec_module(mk)
    d = tmp_path_factory.mktemp("gptq") / "tiny"
    mk.build_checkpoint(d, hidden=256, layers=2, heads=8, group_size=32, act_order=True, attn_gain=2.0, seed=5)
    with real_exllamav2():
        from exllamav2 import ExLlamaV2Config, ExLlamaV2Tokenizer
        from exllamav2.attn import ExLlamaV2Attention

        config = ExLlamaV2Config(str(d))
        tokenizer = ExLlamaV2Tokenizer(config)
        yield SimpleNamespace(dir=d, config=config, ref=ReferenceLlama.load(d), attn=ExLlamaV2Attention._attn_torch,
                              params=ExLlamaV2Attention.Params,
                              text=TokenizerText.from_exllamav2(tokenizer, d / "tokenizer.json"))


def make_batcher(parts, rows: int = 4, seq_len: int = 192, no_sdpa: bool = True) -> StaticBatcher:  # type: ignore[no-untyped-def]
    model = ExLlamaV2StandIn(parts.ref, parts.attn, parts.params, no_sdpa=no_sdpa, max_input_len=16)
    return StaticBatcher(model, StandInCache(parts.ref, rows, seq_len), pieces=parts.text.pieces,
                         decode=parts.text.decode, eos_ids={EOS}, pad_id=parts.text.pad_id, rows=rows, seq_len=seq_len)


WORDS = "The river that crossed the valley was clear and cold, and it came down from the mountains. "
PROMPTS = ["Once upon", WORDS, WORDS * 2 + "Every morning", WORDS * 4 + "The answer is"]


def ids_of(parts, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    from ctxqa.rag.types import Prompt

    return parts.text.encode(Prompt.template(text))


def run_together(b: StaticBatcher, prompts: list[list[int]], params: GenParams) -> list[GenRequest]:
    reqs = [GenRequest(ids=p, params=params, cancel=None) for p in prompts]
    b.run(reqs)
    return reqs


def events(req: GenRequest) -> tuple[str, exl_batch.Finished]:
    text, done = "", None
    while not req.out.empty():
        kind, payload = req.out.get_nowait()
        if kind == "text":
            text += payload
        elif kind == "done":
            done = payload
    assert done is not None
    return text, done


def reference_greedy(ref: ReferenceLlama, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    for _ in range(n):
        seq.append(int(ref.logits(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(ids):]


def test_a_batch_of_left_padded_prompts_gives_each_its_own_greedy_output(parts) -> None:  # type: ignore[no-untyped-def]
    prompts = [ids_of(parts, p) for p in PROMPTS]
    lengths = [len(p) for p in prompts]
    # The shortest row is padded across several whole prefill chunks (16 // 4 rows = 4 tokens each).
    assert max(lengths) - min(lengths) > 16, lengths
    params = GenParams(max_new_tokens=12)
    alone = [run_together(make_batcher(parts, rows=1), [p], params)[0].token_ids for p in prompts]
    together = run_together(make_batcher(parts, rows=4), prompts, params)
    assert [r.token_ids for r in together] == alone
    # ... and that is the model's real greedy continuation (full recomputation, no cache, no padding).
    assert alone[3] == reference_greedy(parts.ref, prompts[3], 12)
    for req in together:
        text, done = events(req)
        assert done.reason in ("length", "stop") and done.new_tokens == len(req.token_ids)
        assert done.time_prefill > 0 and done.time_generate > 0
        assert text == parts.text.decode(req.token_ids) or done.reason == "stop"


def test_the_padding_mask_must_be_finite(parts, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """With -inf (what exllamav2's tokenizer.padding_mask gives) a row padded over a whole prefill chunk has
    all-masked softmax rows: NaN K/V at the padding, and 0 x NaN poisons the real tokens."""
    prompts = [ids_of(parts, p) for p in (PROMPTS[0], PROMPTS[3])]
    params = GenParams(max_new_tokens=6)
    alone = run_together(make_batcher(parts, rows=1), [prompts[0]], params)[0].token_ids
    monkeypatch.setattr(exl_batch, "PAD_MASK", float("-inf"))
    broken = run_together(make_batcher(parts, rows=2), prompts, params)[0].token_ids
    assert broken != alone


def test_without_flash_attn_the_matmul_attention_is_selected(parts) -> None:  # type: ignore[no-untyped-def]
    """exllamav2 0.3.2's SDPA path drops the causal mask (and the padding mask) for text layers; the backend
    switches it to the matmul path, which matches the reference."""
    cfg = SimpleNamespace(no_sdpa=parts.config.no_sdpa)
    assert cfg.no_sdpa is False  # exllamav2's default
    configure_attention(cfg, flash_attn=False)
    assert cfg.no_sdpa is True
    paged = SimpleNamespace(no_sdpa=False)
    configure_attention(paged, flash_attn=True)
    assert paged.no_sdpa is False  # paged attention is flash-attn's; nothing to change
    ids = torch.tensor([ids_of(parts, PROMPTS[2])])
    ref = parts.ref.logits(ids)
    for no_sdpa, close in ((True, True), (False, False)):
        model = ExLlamaV2StandIn(parts.ref, parts.attn, parts.params, no_sdpa=no_sdpa)
        out = model.forward(ids, StandInCache(parts.ref, 1, 256)).float()
        assert ((out - ref).abs().max().item() < 0.05) is close, (no_sdpa, (out - ref).abs().max().item())


def test_take_keeps_arrival_order_and_fills_rows_that_fit(parts) -> None:  # type: ignore[no-untyped-def]
    b = make_batcher(parts, rows=2, seq_len=64)

    def req(n: int, new: int) -> GenRequest:
        return GenRequest(ids=[1] * n, params=GenParams(max_new_tokens=new), cancel=None)

    # Each fits a 64-token row alone; together the longest prompt (40) plus the most new tokens (50) do not.
    a, big, c = req(10, 50), req(40, 20), req(5, 5)
    waiting = deque([a, big, c])
    assert b.take(waiting) == [a]  # the long one waits for the next batch, and nobody overtakes it
    assert b.take(waiting) == [big, c] and not waiting
    waiting = deque([req(3, 3) for _ in range(5)])
    assert len(b.take(waiting)) == 2 and len(waiting) == 3


def test_requests_that_arrive_together_are_generated_together(parts) -> None:  # type: ignore[no-untyped-def]
    b = make_batcher(parts, rows=4)
    inbox: queue.Queue = queue.Queue()
    params = GenParams(max_new_tokens=4)
    reqs = [GenRequest(ids=ids_of(parts, p), params=params, cancel=None) for p in PROMPTS + PROMPTS[:2]]
    for r in reqs:
        inbox.put(r)  # all six are waiting before the thread looks
    inbox.put(None)
    t = threading.Thread(target=b.serve, args=(inbox,))
    t.start()
    t.join(timeout=120)
    # The sentinel was already queued, so everything is answered "cancelled" without running: close() semantics.
    assert all(events(r)[1].reason == "cancelled" for r in reqs) and b.batches == 0
    inbox = queue.Queue()
    for r in (reqs := [GenRequest(ids=ids_of(parts, p), params=params, cancel=None) for p in PROMPTS + PROMPTS[:2]]):
        inbox.put(r)
    t = threading.Thread(target=b.serve, args=(inbox,))
    t.start()
    for r in reqs:
        assert r.out.get(timeout=120) is not None
    inbox.put(None)
    t.join(timeout=120)
    assert b.peak_batch == 4 and b.batches == 2, "six waiting requests: a batch of four, then the other two"


def test_sampling_is_seeded_per_request_and_independent_of_the_batch(parts) -> None:  # type: ignore[no-untyped-def]
    prompts = [ids_of(parts, p) for p in PROMPTS]
    p = GenParams(max_new_tokens=10, temperature=0.9, top_p=0.9, top_k=40, seed=3)
    alone = run_together(make_batcher(parts, rows=1), [prompts[2]], p)[0].token_ids
    together = run_together(make_batcher(parts, rows=4), prompts, p)[2].token_ids
    assert together == alone
    other = run_together(make_batcher(parts, rows=1), [prompts[2]], GenParams(max_new_tokens=10, temperature=0.9, seed=4))
    assert other[0].token_ids != alone


def test_a_cancelled_row_ends_and_the_others_carry_on(parts) -> None:  # type: ignore[no-untyped-def]
    prompts = [ids_of(parts, p) for p in PROMPTS[:2]]
    params = GenParams(max_new_tokens=10)
    alone = run_together(make_batcher(parts, rows=1), [prompts[1]], params)[0].token_ids
    cancel = threading.Event()
    cancel.set()
    reqs = [GenRequest(ids=prompts[0], params=params, cancel=cancel), GenRequest(ids=prompts[1], params=params, cancel=None)]
    make_batcher(parts, rows=2).run(reqs)
    assert events(reqs[0])[1].reason == "cancelled" and reqs[0].token_ids == []
    assert reqs[1].token_ids == alone


@pytest.fixture()
def batched(parts):  # type: ignore[no-untyped-def]
    """The ExLlamaV2Generator in batched mode, over the stand-in model (only the model loading is skipped)."""
    g = object.__new__(ExLlamaV2Generator)
    g.name = "stand-in"
    g._start(make_batcher(parts, rows=4, seq_len=192), parts.text, context_length=192, max_batch_size=4, eos={EOS})
    yield g
    g.close()


def test_generator_in_batched_mode(batched) -> None:  # type: ignore[no-untyped-def]
    params = GenParams(max_new_tokens=12)
    a = batched.generate(PROMPTS[1], params)
    *deltas, done = list(batched.stream(PROMPTS[1], params))
    assert isinstance(done, Completion) and "".join(deltas) == done.text == a.text
    assert a.prompt_tokens == batched.count_tokens(PROMPTS[1]) and batched.max_concurrency == 4
    if a.finish_reason == "length":
        assert a.completion_tokens == 12 and a.tokens_per_second > 0
    # A stop string from the greedy output cuts it there and ends the row.
    stop = next((a.text[i:i + 2] for i in range(2, len(a.text) - 2) if a.text[i:i + 2].strip()), None)
    if stop:
        c = batched.generate(PROMPTS[1], GenParams(max_new_tokens=12, stop=[stop]))
        assert c.text == a.text[: a.text.find(stop)] and c.finish_reason == "stop"
    expected = [batched.generate(p, params).text for p in PROMPTS]
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(PROMPTS))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = batched.generate(PROMPTS[i], params).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in range(len(PROMPTS))] == expected
    assert batched.peak_batch >= 2, "concurrent requests were batched"


def test_an_idle_batcher_gathers_a_burst_into_one_batch(parts) -> None:  # type: ignore[no-untyped-def]
    """Requests of one burst reach the queue milliseconds apart; they still form one batch."""
    import time

    def burst(gap_s: float) -> StaticBatcher:
        b = make_batcher(parts, rows=4)
        b.gather_gap_s, b.gather_max_s = gap_s, 2 * gap_s
        inbox: queue.Queue = queue.Queue()
        t = threading.Thread(target=b.serve, args=(inbox,))
        t.start()
        reqs = [GenRequest(ids=ids_of(parts, p), params=GenParams(max_new_tokens=2), cancel=None) for p in PROMPTS]
        for r in reqs:
            inbox.put(r)
            time.sleep(0.02)  # a tokenization apart, generously
        for r in reqs:
            while r.out.get(timeout=120)[0] != "done":
                pass
        inbox.put(None)
        t.join(timeout=120)
        return b

    gathered = burst(gap_s=2.0)
    assert (gathered.batches, gathered.peak_batch) == (1, 4)
    assert burst(gap_s=0.0).batches > 1, "without the window the first request starts alone"
