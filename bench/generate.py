#!/usr/bin/env python
"""Prefill and decode speed of the configured generation backend.

Defaults come from Settings (CTXQA_* env / ctxqa.toml): out of the box that is llama.cpp with the bundled
SmolLM2-135M GGUF on CPU. On a GPU machine:

    python bench/generate.py --backend exllamav2 --model /models/airoboros-7b-gptq --concurrency 1 4 8

Each row is the median over --runs greedy requests of a plain-text prompt of the given size, generating
--new-tokens tokens (fewer if the model emits EOS; the table shows what it actually generated).
- prefill t/s: prompt tokens / time to the first sampled token (TTFT);
- decode t/s: per-request decode speed, (tokens - 1) / time after the first token;
- aggregate t/s: all generated tokens of the concurrent requests / wall time (batching throughput).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxqa.rag.config import Settings  # noqa: E402
from ctxqa.rag.generate import Completion, Generator, GenParams, load_generator  # noqa: E402

FILLER = (
    "The river that crossed the valley was clear and cold, and it came down from the mountains where the snow "
    "stayed until the middle of summer. Every morning the boats went out before sunrise and came back at dusk. "
    "The market in the town sold bread, fish, cheese and apples, and the prices were written on small boards. "
)


def make_prompt(gen: Generator, n_tokens: int) -> str:
    """A plain-text prompt of about n_tokens model tokens (binary search on characters with the real tokenizer)."""
    text = FILLER * (n_tokens // 8 + 2)
    lo, hi = 1, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if gen.count_tokens(text[:mid]) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def run_batch(gen: Generator, prompt: str, params: GenParams, concurrency: int) -> tuple[list[Completion], float]:
    results: list[Completion | None] = [None] * concurrency
    barrier = threading.Barrier(concurrency)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = gen.generate(prompt, params)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = [r for r in results if r is not None]
    if len(done) != concurrency:
        raise RuntimeError("a request failed; see the traceback above")
    return done, wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["llama_cpp", "exllamav2"], default=None)
    p.add_argument("--model", default=None, help="GGUF file, GPTQ/EXL2 dir or bundled:smollm2 (default: settings)")
    p.add_argument("--prompt-tokens", type=int, nargs="+", default=[128, 512])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1])
    p.add_argument("--context", type=int, default=None, help="context length (default: model/settings)")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads")
    p.add_argument("--gpu-layers", type=int, default=None, help="llama.cpp layers offloaded to the GPU (-1: all)")
    p.add_argument("--cache", choices=["fp16", "q8", "q6", "q4"], default=None, help="ExLlamaV2 KV cache")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    a = p.parse_args(argv)

    overrides: dict[str, Any] = {}
    for key, value in (("llm_backend", a.backend), ("llm_model", a.model), ("llm_context_length", a.context),
                       ("llm_threads", a.threads), ("llm_gpu_layers", a.gpu_layers), ("llm_cache", a.cache)):
        if value is not None:
            overrides[key] = value
    if a.concurrency and max(a.concurrency) > 1:
        overrides.setdefault("llm_max_batch_size", max(a.concurrency))
    settings = Settings(**overrides)

    t0 = time.perf_counter()
    gen = load_generator(settings)
    load_s = time.perf_counter() - t0
    print(f"# {settings.llm_backend}: {gen.name}, context {gen.context_length}, loaded in {load_s:.1f}s "
          f"({platform.machine()}, threads={settings.llm_threads or 'auto'})", flush=True)

    rows: list[dict[str, Any]] = []
    with gen:
        gen.generate(make_prompt(gen, 16), GenParams(max_new_tokens=4))  # warm-up: allocations, kernel tuning
        for n_prompt in a.prompt_tokens:
            if n_prompt + a.new_tokens > gen.context_length:
                print(f"# skip prompt {n_prompt}: + {a.new_tokens} new tokens exceeds context {gen.context_length}")
                continue
            prompt = make_prompt(gen, n_prompt)
            params = GenParams(max_new_tokens=a.new_tokens)
            for conc in a.concurrency:
                samples = [run_batch(gen, prompt, params, conc) for _ in range(a.runs)]
                flat = [c for batch, _ in samples for c in batch]
                rows.append({
                    "backend": settings.llm_backend,
                    "model": gen.name,
                    "prompt_tokens": flat[0].prompt_tokens,
                    "new_tokens": statistics.median(c.completion_tokens for c in flat),
                    "concurrency": conc,
                    "ttft_s": statistics.median(c.time_prefill for c in flat),
                    "prefill_tps": statistics.median(c.prefill_tokens_per_second for c in flat),
                    "decode_tps": statistics.median(c.tokens_per_second for c in flat),
                    "aggregate_tps": statistics.median(sum(c.completion_tokens for c in b) / w for b, w in samples),
                    "finish": sorted({c.finish_reason for c in flat}),
                })
                print_row(rows[-1], header=len(rows) == 1)

    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"load_s": load_s, "context": gen.context_length, "rows": rows}, indent=2))
    return 0


COLUMNS = [("prompt_tokens", "prompt tok", "d"), ("new_tokens", "new tok", "g"), ("concurrency", "conc", "d"),
           ("ttft_s", "TTFT s", ".3f"), ("prefill_tps", "prefill t/s", ".1f"), ("decode_tps", "decode t/s", ".1f"),
           ("aggregate_tps", "aggregate t/s", ".1f")]


def print_row(row: dict[str, Any], header: bool) -> None:
    if header:
        print(" | ".join(f"{title:>13}" for _, title, _ in COLUMNS) + " | finish")
        print("-|-".join("-" * 13 for _ in COLUMNS) + "-|-------")
    print(" | ".join(f"{format(row[key], fmt):>13}" for key, _, fmt in COLUMNS) + " | " + ",".join(row["finish"]), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
