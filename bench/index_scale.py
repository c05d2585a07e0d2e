"""Vector index at scale: 1,000,000 synthetic 384-d chunk vectors, flat vs HNSW vs IVF, through ctxqa's VectorIndex.

    python bench/index_scale.py [--n 1000000] [--queries 200] [--data clustered|gaussian|both] [--threads 2]

For each index type: build time, memory (RSS growth while building, and the serialised size), single-query search
latency p50/p95 (one query at a time, as the API serves them) and recall@10 against exact search, for a sweep of
the search-time parameter (HNSW efSearch, IVF nprobe). Exact flat search is also timed on prefixes of the data
(10k .. 1M) to find where flat stops meeting the 5 ms p50 budget: that sets `index_auto_threshold`.

Data: "hierarchical" (default): 1,000 topics x 50 sub-topics on the unit sphere, points ~0.85 cosine from their
sub-topic centre (~20 per sub-topic), like real embedding neighbourhoods where near-duplicates and same-topic
chunks form small tight groups. "clustered": 2,000 broad Gaussian clusters (points ~0.6 cosine from the centre,
~500 per cluster, isotropic inside: locally as hard as random data). Queries are fresh draws from the same
distribution (never in the index).
"gaussian" is isotropic random vectors: a worst case with no structure (every neighbour almost equidistant),
reported for completeness.

Results go to bench/results/index_scale.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from ctxqa.rag.index.vector import IndexParams, VectorIndex  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PREFIXES: list[int] = []


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_data(kind: str, n: int, nq: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = np.empty((n + nq, dim), dtype=np.float32)
    if kind == "hierarchical":
        # 1,000 topics x 50 sub-topics; a sub-topic centre sits at cosine ~0.75 from its topic, a point at ~0.85
        # from its sub-topic centre (~20 points each): nearest neighbours are a point's sub-topic mates.
        topics = rng.standard_normal((1000, dim), dtype=np.float32)
        topics /= np.linalg.norm(topics, axis=1, keepdims=True)
        subs = np.repeat(topics, 50, axis=0) + rng.standard_normal((50_000, dim), dtype=np.float32) * 0.045
        subs /= np.linalg.norm(subs, axis=1, keepdims=True)
        for a in range(0, n + nq, 100_000):
            b = min(a + 100_000, n + nq)
            which = rng.integers(0, len(subs), b - a)
            out[a:b] = subs[which] + rng.standard_normal((b - a, dim), dtype=np.float32) * 0.0316
    elif kind == "gaussian":
        for a in range(0, n + nq, 100_000):
            b = min(a + 100_000, n + nq)
            out[a:b] = rng.standard_normal((b - a, dim), dtype=np.float32)
    else:
        n_centres = 2000
        centres = rng.standard_normal((n_centres, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        for a in range(0, n + nq, 100_000):
            b = min(a + 100_000, n + nq)
            which = rng.integers(0, n_centres, b - a)
            noise = rng.standard_normal((b - a, dim), dtype=np.float32)
            scale = rng.uniform(0.055, 0.075, (b - a, 1)).astype(np.float32)  # spread per point
            out[a:b] = centres[which] + noise * scale
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out[:n], out[n:]


def time_queries(fn, queries: np.ndarray) -> tuple[list[float], np.ndarray]:  # type: ignore[no-untyped-def]
    for q in queries[:5]:
        fn(q)
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        ids = fn(q)
        lat.append(time.perf_counter() - t)
        found.append(ids)
    return lat, np.stack(found)


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10].tolist()) & set(t[:10].tolist())) / 10 for f, t in zip(found, truth)]))


def pct(lat: list[float], p: float) -> float:
    return float(np.percentile(lat, p) * 1e3)


def run(kind: str, n: int, nq: int, dim: int, types: list[str]) -> dict:
    print(f"\n## {kind}: {n:,} vectors x {dim}, {nq} queries", flush=True)
    t = time.perf_counter()
    x, q = make_data(kind, n, nq, dim)
    ids = np.arange(n, dtype=np.int64) + 1
    print(f"data generated in {time.perf_counter() - t:.1f}s", flush=True)
    res: dict = {"data": kind, "n": n, "dim": dim, "queries": nq, "flat_prefix": [], "types": {}}

    # Exact ground truth and flat latency on prefixes.
    sizes = sorted({s for s in PREFIXES if s < n} | {n})
    truth = None
    for size in sizes:
        r0 = rss_mb()
        t = time.perf_counter()
        idx = VectorIndex.build(dim, "flat", ids[:size], x[:size])
        build = time.perf_counter() - t
        lat, found = time_queries(lambda v, idx=idx: idx.search(v[None, :], 10)[1][0], q)
        row = {"n": size, "build_s": build, "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
               "rss_mb": rss_mb() - r0}
        res["flat_prefix"].append(row)
        print(f"flat n={size:>9,}: build {build:6.2f}s  p50 {row['p50_ms']:7.2f} ms  p95 {row['p95_ms']:7.2f} ms",
              flush=True)
        if size == n:
            truth = found
            res["types"]["flat"] = {"build_s": build, "rss_mb": row["rss_mb"], "size_mb": x.nbytes / 2**20,
                                    "sweep": [{"param": None, "p50_ms": row["p50_ms"], "p95_ms": row["p95_ms"],
                                               "recall10": 1.0}]}
        del idx
    assert truth is not None

    if "hnsw" in types:
        params = IndexParams(hnsw_m=32, hnsw_ef_construction=40)
        r0 = rss_mb()
        t = time.perf_counter()
        idx = VectorIndex.build(dim, "hnsw", ids, x, params)
        build = time.perf_counter() - t
        mem = rss_mb() - r0
        size_mb = (x.nbytes + n * params.hnsw_m * 2 * 4 + n * 8) / 2**20  # vectors + level-0 links + id map
        sweep = []
        for ef in (16, 32, 64, 128, 256, 512):
            idx.params.hnsw_ef_search = ef
            lat, found = time_queries(lambda v, idx=idx: idx.search(v[None, :], 10)[1][0], q)
            row = {"param": f"efSearch={ef}", "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
                   "recall10": recall_at_10(found, truth)}
            sweep.append(row)
            print(f"hnsw M=32 {row['param']:>13}: p50 {row['p50_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f} ms  "
                  f"recall@10 {row['recall10']:.3f}", flush=True)
        res["types"]["hnsw"] = {"build_s": build, "rss_mb": mem, "size_mb": size_mb, "params": "M=32, efC=40",
                                "sweep": sweep}
        print(f"hnsw build {build:.1f}s, RSS +{mem:.0f} MB", flush=True)
        del idx

    if "ivf" in types:
        r0 = rss_mb()
        t = time.perf_counter()
        idx = VectorIndex.build(dim, "ivf", ids, x)
        build = time.perf_counter() - t
        mem = rss_mb() - r0
        nlist = idx._index.nlist
        sweep = []
        for nprobe in (8, 16, 32, 64, 128):
            idx.params.ivf_nprobe = nprobe
            lat, found = time_queries(lambda v, idx=idx: idx.search(v[None, :], 10)[1][0], q)
            row = {"param": f"nprobe={nprobe}", "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
                   "recall10": recall_at_10(found, truth)}
            sweep.append(row)
            print(f"ivf nlist={nlist} {row['param']:>11}: p50 {row['p50_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f} ms  "
                  f"recall@10 {row['recall10']:.3f}", flush=True)
        res["types"]["ivf"] = {"build_s": build, "rss_mb": mem, "size_mb": (x.nbytes + n * 8) / 2**20,
                               "params": f"nlist={nlist}", "sweep": sweep}
        print(f"ivf build {build:.1f}s, RSS +{mem:.0f} MB", flush=True)
        del idx
    return res


def table(res: dict) -> str:
    lines = [f"### {res['data']} — {res['n']:,} x {res['dim']}-d, {res['queries']} single queries",
             "", "| index | params | build s | memory MB (RSS / est.) | p50 ms | p95 ms | recall@10 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, t in res["types"].items():
        for row in t["sweep"]:
            lines.append(f"| {name} | {t.get('params', '')} {row['param'] or ''} | {t['build_s']:.1f} | "
                         f"{t['rss_mb']:.0f} / {t['size_mb']:.0f} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
                         f"{row['recall10']:.3f} |")
    lines += ["", "| flat prefix n | p50 ms | p95 ms |", "| ---: | ---: | ---: |"]
    lines += [f"| {r['n']:,} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |" for r in res["flat_prefix"]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--data", choices=["clustered", "hierarchical", "gaussian", "both"], default="hierarchical")
    ap.add_argument("--ivf-nlist", type=int, default=0, help="override IVF's 4*sqrt(n) lists (training time)")
    ap.add_argument("--prefixes", default="10000,50000,100000,200000,500000")
    ap.add_argument("--types", default="hnsw,ivf")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    PREFIXES[:] = [int(x) for x in args.prefixes.split(",") if x]
    if args.ivf_nlist:
        from ctxqa.rag.index import vector

        vector._ivf_nlist = lambda n: args.ivf_nlist  # noqa: E731 - bench-only override
    kinds = ["hierarchical", "clustered"] if args.data == "both" else [args.data]
    out = {"threads": args.threads, "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(), "runs": []}
    for kind in kinds:
        out["runs"].append(run(kind, args.n, args.queries, args.dim, args.types.split(",")))
        print(table(out["runs"][-1]), flush=True)
    out["load_avg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "index_scale.json").write_text(json.dumps(out, indent=2))
    print(f"\nload average start {out['load_avg_start']}, end {out['load_avg_end']}")


if __name__ == "__main__":
    main()
