"""Per-stage latency of `ctxqa ask` on the embedded default (bundled MiniLM + SmolLM2 GGUF via llama.cpp).

Ingests a corpus into a fresh data dir (default: ../shared/data/corpora/fastapi-docs), warms up, then answers
N questions and prints p50/p95 per stage: embed query, search (retrieval incl. fusion and fetch), assemble
(prompt packing with the model's tokenizer), generate, parse (parse + resolve + verify), and the sum of the
non-generation stages, which the answers issue bounds at 50 ms p50.

    python bench/ask.py [--corpus DIR] [--questions 20] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxqa.context import Context  # noqa: E402
from ctxqa.rag.config import Settings  # noqa: E402

QUESTIONS = [
    "How do I declare an optional query parameter?",
    "How can I return a custom status code?",
    "How do I add CORS middleware?",
    "What is a dependency with yield used for?",
    "How do I upload a file?",
    "How are path parameters validated?",
    "How do I run the app with uvicorn?",
    "What does response_model do?",
    "How can I set a cookie in the response?",
    "How do background tasks work?",
    "How do I handle errors with HTTPException?",
    "What is OAuth2PasswordBearer?",
    "How do I test an app with TestClient?",
    "How do I serve static files?",
    "How are request bodies declared with Pydantic models?",
    "How can I add metadata to the OpenAPI docs?",
    "How do I use WebSockets?",
    "What is the difference between async def and def endpoints?",
    "How do I read headers from a request?",
    "How do I deploy with Docker?",
]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--corpus", type=Path, default=here.parent / "shared/data/corpora/fastapi-docs")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()

    data = args.data_dir or Path(tempfile.mkdtemp(prefix="ctxqa-bench-ask-"))
    ctx = Context(Settings(data_dir=data, max_new_tokens=args.max_new_tokens))
    t = time.perf_counter()
    rep = ctx.ingestor.ingest([args.corpus])
    print(f"ingested {rep.count('added') + rep.count('unchanged')} files, {rep.chunks} chunks "
          f"in {time.perf_counter() - t:.1f}s (data dir {data})")
    ctx.answerer.answer(QUESTIONS[0])  # warm-up: loads the model, first-call allocations

    stages = ["embed", "search", "assemble", "generate", "parse"]
    rows: dict[str, list[float]] = {s: [] for s in stages + ["non_generation", "total"]}
    qs = (QUESTIONS * (args.questions // len(QUESTIONS) + 1))[: args.questions]
    tokens = 0
    for q in qs:
        t0 = time.perf_counter()
        ans = ctx.answerer.answer(q)
        total = time.perf_counter() - t0
        for s in stages:
            rows[s].append(ans.timings.get(s, 0.0) * 1000)
        rows["non_generation"].append(sum(ans.timings.get(s, 0.0) for s in stages if s != "generate") * 1000)
        rows["total"].append(total * 1000)
        tokens += ans.usage.completion_tokens
    print(f"\n{len(qs)} questions, {tokens} completion tokens, model {ctx.settings.llm_model}")
    print(f"{'stage':<16}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
    for name, vals in rows.items():
        print(f"{name:<16}{pct(vals, 0.5):>10.1f}{pct(vals, 0.95):>10.1f}{statistics.mean(vals):>10.1f}")
    p50 = pct(rows["non_generation"], 0.5)
    print(f"\nnon-generation stages p50: {p50:.1f} ms (bound: 50 ms) -> {'OK' if p50 <= 50 else 'OVER'}")


if __name__ == "__main__":
    main()
