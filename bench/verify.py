"""Latency of answer verification: POST /v1/verify for a 200-word answer over 8 passages (ClapNQ passages and
human answers), through the real FastAPI app in-process (auth off), and the core check alone.

    python bench/verify.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
CLAPNQ = Path(os.environ.get("CTXQA_SHARED", ROOT.parent / "shared")) / "data" / "eval" / "clapnq"

from _report import pct  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ctxqa.api.app import create_app  # noqa: E402
from ctxqa.context import Context  # noqa: E402
from ctxqa.rag.config import Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    rows = [json.loads(line) for line in (CLAPNQ / "answerable.dev100.jsonl").open()]
    cases = []
    for start in range(0, 8 * args.rounds, 8):
        group = [rows[(start + i) % len(rows)] for i in range(8)]
        passages = [r["passages"][0]["text"] for r in group]
        words: list[str] = []
        for r in group:
            words += r["output"][0]["answer"].split()
            if len(words) >= 200:
                break
        cases.append({"answer": " ".join(words[:200]).rstrip(",;") + ".", "passages": passages})
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    ctx = Context(Settings(data_dir=Path(tempfile.mkdtemp(prefix="ctxqa-bench-verify-")), auth_disabled=True))
    app = create_app(ctx, load_model=False)
    core, http = [], []
    with TestClient(app) as client:
        client.post("/v1/verify", json=cases[0])  # warm-up: the embedder's first calls
        for case in cases:
            # Cold each time: the answerer keeps sentence vectors, and both calls check the same passages.
            ctx.answerer.embed_sentences.clear()
            t = time.perf_counter()
            ctx.answerer.verify(case["answer"], passages=case["passages"])
            core.append((time.perf_counter() - t) * 1000)
            ctx.answerer.embed_sentences.clear()
            t = time.perf_counter()
            r = client.post("/v1/verify", json=case)
            http.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
    n_sent = statistics.mean(len(client.post("/v1/verify", json=c).json()["sentences"]) for c in cases[:5])
    print(f"cpu: {cpu} ({os.cpu_count()} cores); {len(cases)} answers of 200 words (~{n_sent:.0f} sentences) over "
          f"8 passages each; embedder backend {ctx.embedder.backend}")
    print(f"POST /v1/verify   p50 {pct(http, 0.5):.1f} ms  p95 {pct(http, 0.95):.1f} ms")
    print(f"Answerer.verify   p50 {pct(core, 0.5):.1f} ms  p95 {pct(core, 0.95):.1f} ms")


if __name__ == "__main__":
    main()
