#!/usr/bin/env python
"""Load and generation times of the GGUF seed architectures through ctxqa's llama.cpp backend, on CPU.

Builds the tiny random-weight GGUF files of tests/rag/generate/test_gguf_seeds.py (scripts/make_tiny_gguf.py:
MPT F16, Mixtral 8 experts / 2 active Q8_0, Llama-2 linear RoPE x2 at 8192 F32) in a temporary folder, loads
each with `load_generator` as `ctxqa ask` does, and times a greedy generation. The models are ~0.2-0.5 MB, so
these are the backend's fixed costs (load, context allocation, per-token overhead), not model speed.

Usage: python bench/gguf_seeds.py [--new-tokens 32] [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxqa.rag.config import Settings  # noqa: E402
from ctxqa.rag.generate import GenParams, load_generator  # noqa: E402
from ctxqa.rag.generate.inspect import inspect_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "the river and the valley of green berries " * 6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    spec = importlib.util.spec_from_file_location("make_tiny_gguf", ROOT / "scripts" / "make_tiny_gguf.py")
    assert spec and spec.loader
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True, text=True)
    print(f"CPU: {cpu.stdout.strip()}; {a.threads} threads; {a.new_tokens} new tokens, median of {a.runs}")
    print(f"{'model':<14} {'architecture':<40} {'ctx':>5} {'load ms':>8} {'TTFT ms':>8} {'decode t/s':>10} {'profile'}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (build, name) in mk.SEEDS.items():
            path = build(Path(tmp) / f"{kind}.gguf", name)
            info = inspect_model(path)
            loads, ttft, tps = [], [], []
            for _ in range(a.runs):
                t = time.perf_counter()
                g = load_generator(Settings(llm_model=str(path), llm_threads=a.threads))
                loads.append(time.perf_counter() - t)
                c = g.generate(PROMPT, GenParams(max_new_tokens=a.new_tokens))
                ttft.append(c.time_prefill)
                tps.append(c.tokens_per_second)
                ctx = g.context_length
                g.close()
            print(f"{kind:<14} {info.architecture:<40} {ctx:>5} {statistics.median(loads) * 1e3:>8.1f} "
                  f"{statistics.median(ttft) * 1e3:>8.1f} {statistics.median(tps):>10.1f} {info.profile.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
