#!/usr/bin/env python
"""The figures of the ExLlamaV2 GPU check (bench/gpu_check.sh runs this, section by section, time-boxed).

Sections (each prints PASS / FAIL / INFO lines and adds to $OUT/gpu_check.json):
  prepare  build every random-weight GPTQ checkpoint the other sections use (CPU only; the dry run stops after it)
  groups   ExLlamaV2 logits vs the independent pure-torch dequantised reference (tests/rag/generate/
           llama_reference.py), group sizes none/32/64/128 with and without act-order: correlation, argmax agreement
  rope     linear RoPE x2 at 8192: positions 4096..6143 against a scale-2 reference and an unscaled one; a prompt
           of ~8,128 tokens plus 64 new tokens completes, one more token overflows with ContextOverflowError
  stream   streaming == non-streaming (greedy), cancellation mid-stream, an abandoned stream frees its slot
  bench    decode tokens/s of a 7B-shaped 4-bit checkpoint (hidden 4096, 32 layers, act-order g128): 1 stream,
           then 16 concurrent streams, with the HBM-bandwidth bound (bytes read per token = the weights)

Usage: python bench/gpu_check.py SECTION WORKDIR [--bench-layers N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # tests.rag.generate.llama_reference; appended: the checkout's bare ctxqa/ must not shadow ctxqa

import torch  # noqa: E402

OUT = Path(os.environ.get("OUT") or "/tmp/ctxqa-gpu-check-out")
GROUPS = [(-1, False), (-1, True), (32, False), (32, True), (64, False), (64, True), (128, False), (128, True)]
ROPE_POSITIONS = 6144
# Peak HBM bandwidth (TB/s) when torch cannot report the memory clock and bus width.
HBM_TBS = {"H200": 4.8, "H100 SXM": 3.35, "H100 PCIe": 2.0, "H100": 3.35, "A100": 2.0, "L40S": 0.864, "4090": 1.008}


def _mk() -> Any:
    spec = importlib.util.spec_from_file_location("make_gptq_llama", ROOT / "scripts" / "make_gptq_llama.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


REPORT: dict[str, Any] = {}


def say(status: str, name: str, detail: str, **data: Any) -> None:
    print(f"{status:4} {name}: {detail}", flush=True)
    path = OUT / "gpu_check.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report[name] = {"status": status, "detail": detail, **data}
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))


# --- prepare (CPU) --------------------------------------------------------------------------------------------


def prepare(work: Path, bench_layers: int) -> None:
    mk = _mk()
    t = time.perf_counter()
    for gs, act in GROUPS:
        d = work / f"g{gs}-act{int(act)}"
        if not (d / "config.json").is_file():
            mk.build_checkpoint(d, hidden=512, layers=2, heads=8, group_size=gs, act_order=act, seed=gs + 7 + act)
    d = work / "rope"
    if not (d / "config.json").is_file():
        mk.build_checkpoint(d, hidden=512, layers=2, heads=8, group_size=32, act_order=True, max_position=4096,
                            attn_gain=2.0, seed=11)
    say("INFO", "prepare small", f"{len(GROUPS) + 1} checkpoints in {time.perf_counter() - t:.1f}s")
    d = work / f"b7-{bench_layers}"
    if not (d / "config.json").is_file():
        t = time.perf_counter()
        mk.build_repeated_checkpoint(d, bench_layers, hidden=4096, heads=32, intermediate=11008, vocab=32000,
                                     group_size=128, act_order=True, max_position=2048)
        size = (d / "model.safetensors").stat().st_size / 2**30
        say("INFO", "prepare bench", f"7B-shaped, {bench_layers} layers, {size:.2f} GiB in {time.perf_counter() - t:.1f}s")


# --- shared -------------------------------------------------------------------------------------------------------


def exl_logits(model_dir: Path, ids: torch.Tensor, max_seq_len: int, rope_scale: float | None = None) -> torch.Tensor:
    """All-position logits from the real ExLlamaV2 model, configured as the backend configures it."""
    from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Config

    from ctxqa.rag.generate.exl_support import configure_attention
    from ctxqa.rag.generate.exllamav2 import flash_attn_paged_available

    config = ExLlamaV2Config(str(model_dir))
    config.max_seq_len = max_seq_len
    if rope_scale is not None:
        config.scale_pos_emb = rope_scale
    config.arch_compat_overrides()
    configure_attention(config, flash_attn=flash_attn_paged_available())
    model = ExLlamaV2(config)
    cache = ExLlamaV2Cache(model, max_seq_len=max_seq_len, lazy=True)
    model.load_autosplit(cache, progress=False)
    try:
        return model.forward(ids, cache).float().cpu()
    finally:
        model.unload()
        del cache, model
        torch.cuda.empty_cache()


def reference(model_dir: Path, ids: torch.Tensor, rope_scale: float | None = None) -> torch.Tensor:
    from tests.rag.generate.llama_reference import ReferenceLlama

    ref = ReferenceLlama.load(model_dir, rope_scale=rope_scale).to("cuda")
    out = ref.logits(ids).float().cpu()
    del ref
    torch.cuda.empty_cache()
    return out


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return corr, agree


# --- sections -----------------------------------------------------------------------------------------------------


def groups(work: Path) -> None:
    ids = torch.randint(3, 512, (1, 128), generator=torch.Generator().manual_seed(1))
    for gs, act in GROUPS:
        name = f"logits g{'none' if gs == -1 else gs} act-order {'on' if act else 'off'}"
        d = work / f"g{gs}-act{int(act)}"
        try:
            corr, agree = compare(exl_logits(d, ids, 256), reference(d, ids))
        except Exception as exc:  # noqa: BLE001 - report and go on with the next case
            say("FAIL", name, f"{type(exc).__name__}: {exc}")
            continue
        ok = corr > 0.999 and agree > 0.9
        say("PASS" if ok else "FAIL", name, f"corr {corr:.5f}, argmax agreement {agree:.3f}", corr=corr, agree=agree)


def rope(work: Path) -> None:
    from ctxqa.rag.generate import ContextOverflowError, GenParams
    from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator

    d = work / "rope"
    ids = torch.randint(3, 512, (1, ROPE_POSITIONS), generator=torch.Generator().manual_seed(2))
    exl = exl_logits(d, ids, 8192, rope_scale=2.0)[0, 4096:]
    c2, a2 = compare(exl, reference(d, ids, 2.0)[0, 4096:])
    c1, a1 = compare(exl, reference(d, ids, 1.0)[0, 4096:])
    ok = c2 > 0.995 and a2 > 0.8 and c1 < 0.95
    say("PASS" if ok else "FAIL", "rope x2 positions 4096..6143",
        f"vs scale-2 reference: corr {c2:.5f} agree {a2:.3f}; vs unscaled: corr {c1:.5f} agree {a1:.3f}",
        corr_scaled=c2, corr_unscaled=c1)
    with ExLlamaV2Generator(d, context_length=8192, rope_scale=2.0, max_batch_size=1) as g:
        words = " ".join(f"word{i % 97}" for i in range(12000))
        lo, hi = 0, len(words)
        while lo < hi:  # the longest prefix with <= 8192 - 64 tokens
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if g.count_tokens(words[:mid]) <= 8192 - 64 else (lo, mid - 1)
        prompt = words[:lo]
        t = time.perf_counter()
        c = g.generate(prompt, GenParams(max_new_tokens=64))
        wall = time.perf_counter() - t
        try:
            g.generate(prompt + " word1", GenParams(max_new_tokens=64))
            overflow = "no error (FAIL)"
        except ContextOverflowError as exc:
            overflow = f"ContextOverflowError: {exc}"
        ok = c.prompt_tokens + c.completion_tokens > 8100 and overflow.startswith("ContextOverflowError")
        say("PASS" if ok else "FAIL", "rope 8192-token request",
            f"{c.prompt_tokens} prompt + {c.completion_tokens} new tokens ({c.finish_reason}) in {wall:.2f}s; "
            f"one more token: {overflow}", prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens)


def stream(work: Path) -> None:
    from ctxqa.rag.generate import Completion, GenParams
    from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator

    prompt = "BEGININPUT\nBEGINCONTEXT\nurl: https://web.site/123\nENDCONTEXT\nBlueberries are now green.\nENDINPUT\n"
    with ExLlamaV2Generator(work / "g32-act1", context_length=1024, max_batch_size=4) as g:
        params = GenParams(max_new_tokens=64)
        full = g.generate(prompt, params)
        *deltas, done = list(g.stream(prompt, params))
        same = "".join(deltas) == done.text == full.text and done.completion_tokens == full.completion_tokens
        say("PASS" if same else "FAIL", "streaming == non-streaming",
            f"{len(deltas)} deltas, {done.completion_tokens} tokens, equal={same} (paged={g.paged})")
        cancel = threading.Event()
        seen, end = [], None
        for item in g.stream(prompt, GenParams(max_new_tokens=500), cancel=cancel):
            if isinstance(item, Completion):
                end = item
                break
            seen.append(item)
            if len(seen) == 2:
                cancel.set()
        ok = end is not None and end.finish_reason == "cancelled" and end.completion_tokens < 500
        s = g.stream(prompt, GenParams(max_new_tokens=500))
        next(s)
        s.close()
        after = g.generate(prompt, GenParams(max_new_tokens=4)).completion_tokens
        say("PASS" if ok and after == 4 else "FAIL", "cancellation",
            f"stopped after {end.completion_tokens if end else '?'} tokens ({end.finish_reason if end else '?'}); "
            f"after an abandoned stream the next request got {after} of 4 tokens")


def _bandwidth_tbs() -> tuple[float, str]:
    props = torch.cuda.get_device_properties(0)
    clock, bus = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock and bus:  # kHz, bits; double data rate
        return 2 * clock * 1e3 * bus / 8 / 1e12, "from torch's memory clock and bus width"
    name = torch.cuda.get_device_name(0)
    for key, tbs in HBM_TBS.items():
        if key in name:
            return tbs, f"datasheet value for {key}"
    return 0.0, "unknown"


def bench(work: Path, bench_layers: int) -> None:
    from ctxqa.rag.generate import GenParams
    from ctxqa.rag.generate.exllamav2 import ExLlamaV2Generator

    d = work / f"b7-{bench_layers}"
    weights = sum(f.stat().st_size for f in d.glob("*.safetensors"))
    t = time.perf_counter()
    with ExLlamaV2Generator(d, context_length=2048, max_batch_size=16) as g:
        say("INFO", "bench load", f"{time.perf_counter() - t:.1f}s, paged={g.paged}, {g.plan.describe()}, "
            f"max_concurrency={g.max_concurrency}, GPU memory peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        words = "The river that crossed the valley was clear and cold, and it came down from the mountains. "
        prompts = [f"Request {i}. " + words * 6 for i in range(16)]
        one = [g.generate(prompts[0], GenParams(max_new_tokens=256)) for _ in range(3)]
        tps1 = statistics.median(c.tokens_per_second for c in one)
        tbs, source = _bandwidth_tbs()
        bound = tbs * 1e12 / weights if tbs else 0.0
        say("INFO", "decode 1 stream",
            f"{tps1:.1f} t/s (median of 3; {one[0].prompt_tokens} prompt tokens, {one[0].completion_tokens} new, "
            f"TTFT {one[0].time_prefill * 1e3:.1f} ms); HBM bound {bound:.0f} t/s = {tbs:.2f} TB/s ({source}) / "
            f"{weights / 1e9:.2f} GB of weights per token ({100 * tps1 / bound if bound else 0:.0f}% of it)",
            tps=tps1, bound=bound)
        for rep in range(2):
            res: dict[int, Any] = {}
            barrier = threading.Barrier(16)

            def work_(i: int, barrier: threading.Barrier = barrier, res: dict[int, Any] = res) -> None:
                barrier.wait()
                res[i] = g.generate(prompts[i], GenParams(max_new_tokens=128))

            threads = [threading.Thread(target=work_, args=(i,)) for i in range(16)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t
            toks = sum(c.completion_tokens for c in res.values())
            agg = toks / wall
            say("PASS" if agg >= 6 * tps1 else "FAIL", f"decode 16 streams run {rep}",
                f"aggregate {agg:.1f} t/s ({toks} tokens in {wall:.2f}s) = x{agg / tps1:.2f} one stream (target >= x6); "
                f"per-stream median {statistics.median(c.tokens_per_second for c in res.values()):.1f} t/s; "
                f"peak batch {g.peak_batch}; HBM bound for 16 rows sharing one weight read {16 * bound:.0f} t/s",
                aggregate=agg, ratio=agg / tps1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("section", choices=["prepare", "groups", "rope", "stream", "bench"])
    p.add_argument("work", type=Path)
    p.add_argument("--bench-layers", type=int, default=32)
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.section == "prepare":
        cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True, text=True)
        say("INFO", "machine", f"{cpu.stdout.strip() or platform.processor()}, python {platform.python_version()}, "
            f"torch {torch.__version__}, CUDA available {torch.cuda.is_available()}")
        prepare(a.work, a.bench_layers)
        return 0
    if not torch.cuda.is_available():
        say("FAIL", a.section, "no CUDA device: this section runs on the GPU machine")
        return 2
    {"groups": groups, "rope": rope, "stream": stream}.get(a.section, lambda w: bench(w, a.bench_layers))(a.work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
