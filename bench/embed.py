"""Embedding throughput of the backends on real chunks, interleaved so a busy machine hurts all variants alike, and
what `auto` picks on this CPU and how long deciding takes.

    python bench/embed.py [--sample 512] [--rounds 3] [--threads 2] [--variants ...] [--budgets 4096,8192,16384]
                          [--no-auto] [--int8-recipe cpu|no-vnni]

Chunks: every Markdown/PDF file under ../shared/data/corpora, loaded and chunked exactly as the pipeline does
(Settings() chunk size and overlap), cached in bench/results/. A fixed random sample (seed 0) is embedded by each
variant in turn, `--rounds` times, in the same process; the table shows the best and the median round and the
speed-up over "torch" (sentence-transformers, fp32, batch 64: the baseline). Also the cosine of each variant's
vectors to torch's (fp32) on the sample (mean/min). The first table is issue 18's: word pieces/s (best round),
x torch, cosine to fp32 mean / min; the CPU is named above it.

Then `auto`'s decision, measured afresh (rag/embed/choose.py `measure`, the cached choice is neither read nor
written; the exported models are cached, so this is the time a first start takes once the exports exist): the
choice, the reason, and the time taken (loading the variants included). `--no-auto` skips it.

`--int8-recipe no-vnni` builds ONNX Runtime int8 with the recipe for CPUs without VNNI (7-bit weights, two FFN
outputs in fp32) on this CPU: its vectors are those an AVX2-only CPU computes (nothing saturates, so the integers are
the same), its speed is this CPU's, not theirs. OpenVINO can emulate an older CPU itself: ONEDNN_MAX_CPU_ISA=AVX2.

Variants
- torch: `Embedder(backend="torch")` (sentence-transformers, sorts by characters, 64 per batch)
- onnx / onnx-int8 / openvino / openvino-int8: the ONNX export run by ONNX Runtime (fp32, dynamic int8) or
  OpenVINO (bf16 where the CPU has it; static int8 quantised by NNCF), with length-bucketed batches of `--budget`
  padded tokens
- onnx-int8@fixed64: int8, sorted but 64 texts per batch whatever their length (no token budget)
- onnx-int8@unsorted64: int8, 64 texts per batch in input order (what naive batching pays in padding)
- onnx-int8@B for each B in --budgets: the token-budget sweep (any backend@B works in --variants)
- openvino@latency / openvino-int8@latency: every batch on the query model (one stream using all threads)
  instead of the bulk model (one single-thread stream per core, a batch in flight on each)
Results go to bench/results/embed.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = ROOT / "bench" / "results"
CORPORA = Path(os.environ.get("CTXQA_SHARED", ROOT.parent / "shared")) / "data" / "corpora"


def corpus_chunks(root: Path, tokenizer: Any, size: int, overlap: int, max_tokens: int) -> list[str]:
    """The chunk texts the pipeline would embed for every supported file under `root` (cached)."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".md", ".pdf", ".html", ".txt")
                   and p.name != "LICENSE")
    h = hashlib.sha256(f"{size}/{overlap}/{max_tokens}".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = RESULTS / f"chunks_{h.hexdigest()[:16]}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from ctxqa.ingest.chunk import chunk
    from ctxqa.ingest.loaders import load

    out: list[str] = []
    for p in files:
        try:
            doc = load(p)
        except Exception:  # noqa: BLE001 - a file the loaders refuse is not an embedding question
            continue
        out.extend(sp.text for sp in chunk(doc, tokenizer, size, overlap, max_tokens=max_tokens))
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def fixed_batches(embedder: Any, texts: list[str], size: int, sort: bool) -> np.ndarray:
    """int8 ONNX with count-based batches (for comparison with the token budget)."""
    ids = [e.ids for e in embedder._batch_tokenizer.encode_batch([t.strip() for t in texts])]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i])) if sort else list(range(len(ids)))
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    for s in range(0, len(order), size):
        b = order[s:s + size]
        width = max(len(ids[i]) for i in b)
        arr = np.zeros((len(b), width), dtype=np.int64)
        mask = np.zeros_like(arr)
        for r, i in enumerate(b):
            arr[r, :len(ids[i])] = ids[i]
            mask[r, :len(ids[i])] = 1
        out[b] = embedder._onnx.embed(arr, mask)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", type=Path, default=CORPORA)
    ap.add_argument("--sample", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--budget", type=int, default=None, help="padded tokens per batch; default: the backend's own")
    ap.add_argument("--budgets", default="", help="comma-separated token budgets to sweep for onnx-int8")
    ap.add_argument("--variants",
                    default="torch,onnx,onnx-int8,openvino,openvino-int8",
                    help="also: onnx-int8@fixed64, onnx-int8@unsorted64, BACKEND@latency, BACKEND@TOKENS")
    ap.add_argument("--no-auto", action="store_true", help="skip measuring auto's decision")
    ap.add_argument("--int8-recipe", choices=["cpu", "no-vnni"], default="cpu",
                    help="ONNX Runtime int8 recipe: this CPU's, or the one for CPUs without VNNI (emulated)")
    ap.add_argument("--out", type=Path, default=RESULTS / "embed.json")
    args = ap.parse_args()

    from ctxqa.rag.config import Settings
    from ctxqa.rag.embed.cpu import cpu_info
    from ctxqa.rag.embed.embedder import Embedder

    settings = Settings()
    cache_dir = settings.embedding_cache_dir
    if args.int8_recipe == "no-vnni":
        import tempfile

        from ctxqa.rag.embed import onnx_int8

        onnx_int8.int8_kernels_saturate = lambda: True  # type: ignore[assignment] - the probe's answer there
        cache_dir = Path(tempfile.mkdtemp(prefix="ctxqa-embed-no-vnni-"))  # not the real cache: another recipe
    info = cpu_info()
    feats = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
             if f in info.flags]
    print(f"CPU: {info.model}; {info.cores} cores; {' '.join(feats)}"
          + (f"; ONEDNN_MAX_CPU_ISA={info.onednn_max_isa}" if info.onednn_max_isa else "")
          + ("; ONNX Runtime int8: the no-VNNI recipe (emulated)" if args.int8_recipe == "no-vnni" else ""),
          flush=True)
    wanted = [v for v in args.variants.split(",") if v]
    wanted += [f"onnx-int8@{b}" for b in args.budgets.split(",") if b]
    backends = {v.split("@")[0] for v in wanted}
    emb: dict[str, Embedder] = {}
    for b in sorted(backends):
        t = time.perf_counter()
        emb[b] = Embedder(settings.embedding_model, backend=b, threads=args.threads, batch_tokens=args.budget,
                          cache_dir=cache_dir)
        if emb[b].backend != b:
            raise SystemExit(f"backend {b} is not available here (fell back to {emb[b].backend})")
        print(f"loaded {b} in {time.perf_counter() - t:.1f}s", flush=True)
    any_e = next(iter(emb.values()))
    limit = min(settings.chunk_size, any_e.max_tokens - 2)
    chunks = corpus_chunks(args.corpora, any_e.new_tokenizer(), limit, min(settings.chunk_overlap, limit // 2),
                           any_e.max_tokens)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(chunks), min(args.sample, len(chunks)), replace=False)
    sample = [chunks[i] for i in pick]
    tok = any_e.new_tokenizer()
    n_tokens = sum(len(x) for x in tok(sample, add_special_tokens=True, truncation=True,
                                       max_length=any_e.max_tokens)["input_ids"])
    chars = sum(len(t) for t in sample)
    print(f"{len(chunks)} chunks in the corpora; sample {len(sample)} chunks, {chars / len(sample):.0f} chars and "
          f"{n_tokens / len(sample):.0f} word pieces per chunk on average", flush=True)

    runs: dict[str, Callable[[list[str]], np.ndarray]] = {}
    for v in wanted:
        base, _, mod = v.partition("@")
        e = emb[base]
        if not mod:
            runs[v] = e.encode
        elif mod == "fixed64":
            runs[v] = lambda texts, e=e: fixed_batches(e, texts, 64, sort=True)
        elif mod == "unsorted64":
            runs[v] = lambda texts, e=e: fixed_batches(e, texts, 64, sort=False)
        elif mod == "latency":  # every call on the query model (one stream, all threads): the pre-streams path

            def run_latency(texts: list[str], e: Embedder = e) -> np.ndarray:
                old = e.small_call_texts
                e.small_call_texts = len(texts)
                try:
                    return e.encode(texts)
                finally:
                    e.small_call_texts = old
            runs[v] = run_latency
        else:
            budget = int(mod)

            def run(texts: list[str], e: Embedder = e, budget: int = budget) -> np.ndarray:
                old = e.batch_tokens
                e.batch_tokens = budget
                try:
                    return e.encode(texts, batch_size=max(64, budget // 16))
                finally:
                    e.batch_tokens = old
            runs[v] = run

    ref = None
    vecs: dict[str, np.ndarray] = {}
    times: dict[str, list[float]] = {v: [] for v in runs}
    cpu: dict[str, list[float]] = {v: [] for v in runs}
    load0 = os.getloadavg()[0]
    for r in range(args.rounds):
        for v, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            out = fn(sample)
            times[v].append(time.perf_counter() - t)
            cpu[v].append(time.process_time() - c)
            if r == 0:
                vecs[v] = out
        print(f"round {r + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})", flush=True)
    ref_name = "torch" if "torch" in vecs else wanted[0]
    ref = vecs[ref_name]
    best_ref = min(times[ref_name])
    rows = []
    for v, ts in times.items():
        best, med = min(ts), statistics.median(ts)
        cos = (vecs[v] * ref).sum(1)
        rows.append({"variant": v, "best_s": best, "median_s": med, "chunks_per_s": len(sample) / best,
                     "chunks_per_s_median": len(sample) / med, "tokens_per_s": n_tokens / best,
                     "speedup_vs_" + ref_name: best_ref / best, "cpu_s": min(cpu[v]),
                     "cpu_speedup_vs_" + ref_name: min(cpu[ref_name]) / min(cpu[v]), "cos_mean": float(cos.mean()),
                     "cos_min": float(cos.min())})
    print(f"\n| variant | word pieces/s | x {ref_name} | cosine to {ref_name} (fp32) mean / min |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['speedup_vs_' + ref_name]:.2f} | "
              f"{r['cos_mean']:.4f} / {r['cos_min']:.4f} |")
    print(f"\n| variant | chunks/s (best) | chunks/s (median) | CPU s | x {ref_name} (CPU) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['chunks_per_s']:.1f} | {r['chunks_per_s_median']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['cpu_speedup_vs_' + ref_name]:.2f} |")
    auto: dict[str, Any] | None = None
    if not args.no_auto:
        emb.clear()
        vecs.clear()
        from ctxqa.rag.embed import choose

        def factory(backend: str) -> Embedder:
            return Embedder(settings.embedding_model, backend=backend, threads=args.threads,
                            batch_tokens=args.budget, cache_dir=cache_dir)

        report = choose.measure(factory, choose.CANDIDATES)
        auto = report.to_json()
        print(f"\nauto picks {report.choice} here, decided in {report.decided_s:.1f} s ({report.load_s:.1f} s of it "
              f"loading the variants): {report.reason}")
        print("| variant | word pieces/s (check set) | cosine mean / min | query min | top-5 agreement | passed |")
        print("|---|---:|---:|---:|---:|---|")
        for v in report.variants:
            if v.available:
                print(f"| {v.backend} | {v.word_pieces_per_s:,.0f} | {v.cos_mean:.4f} / {v.cos_min:.4f} | "
                      f"{v.query_cos_min:.4f} | {v.rank_agreement:.2f} | {'yes' if v.passed else 'no: ' + v.note} |")
            else:
                print(f"| {v.backend} | - | - | - | - | {v.note} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": info.model, "cores": info.cores, "cpu_features": feats,
                                    "onednn_max_isa": info.onednn_max_isa, "int8_recipe": args.int8_recipe,
                                    "sample_chunks": len(sample), "tokens": n_tokens, "chars": chars,
                                    "threads": args.threads, "load_average_start": load0,
                                    "load_average_end": os.getloadavg()[0], "rows": rows, "auto": auto}, indent=1))


if __name__ == "__main__":
    main()
