"""Per-stage latency of `ctxqa ask` on the embedded default (bundled MiniLM + SmolLM2 GGUF via llama.cpp).

Ingests a corpus into a fresh data dir (default: ../shared/data/corpora/fastapi-docs), warms up, then answers
N questions and prints p50/p95 per stage: embed query, search (retrieval incl. fusion and fetch), assemble
(prompt packing with the model's tokenizer), generate, parse (parse + resolve), verify (every sentence checked
against the blocks, cited blocks checked, the passages that answer an unsupported answer chosen), and the sum of
the non-generation stages. Then quote mode on the same questions: its latency on top of retrieval (target: p50
under 50 ms), and the verdicts the bundled model's answers got.

    python bench/ask.py [--corpus DIR] [--questions 20] [--max-new-tokens 64] [--quote-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from _report import pct  # noqa: E402

from ctxqa.context import Context  # noqa: E402
from ctxqa.rag.answer import AskOptions  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser()
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--corpus", type=Path, default=here.parent / "shared/data/corpora/fastapi-docs")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--quote-only", action="store_true", help="only quote mode (no model is loaded)")
    args = ap.parse_args()

    data = args.data_dir or Path(tempfile.mkdtemp(prefix="ctxqa-bench-ask-"))
    ctx = Context(Settings(data_dir=data, max_new_tokens=args.max_new_tokens))
    t = time.perf_counter()
    rep = ctx.ingestor.ingest([args.corpus])
    print(f"ingested {rep.count('added') + rep.count('unchanged')} files, {rep.chunks} chunks "
          f"in {time.perf_counter() - t:.1f}s (data dir {data})")
    qs = (QUESTIONS * (args.questions // len(QUESTIONS) + 1))[: args.questions]
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    print(f"cpu: {cpu} ({os.cpu_count()} cores)")
    if not args.quote_only:
        generate_mode(ctx, qs)
    quote_mode(ctx, qs)


def generate_mode(ctx: Context, qs: list[str]) -> None:
    ctx.answerer.answer(QUESTIONS[0])  # warm-up: loads the model, first-call allocations
    stages = ["embed", "search", "assemble", "generate", "parse", "verify"]
    rows: dict[str, list[float]] = {s: [] for s in stages + ["non_generation", "total"]}
    tokens = 0
    verdicts: dict[str, int] = {}
    for q in qs:
        t0 = time.perf_counter()
        ans = ctx.answerer.answer(q)
        total = time.perf_counter() - t0
        for s in stages:
            rows[s].append(ans.timings.get(s, 0.0) * 1000)
        rows["non_generation"].append(sum(ans.timings.get(s, 0.0) for s in stages if s != "generate") * 1000)
        rows["total"].append(total * 1000)
        tokens += ans.usage.completion_tokens
        verdicts[ans.replaced or ans.grounding] = verdicts.get(ans.replaced or ans.grounding, 0) + 1
    print(f"\n{len(qs)} questions, {tokens} completion tokens, model {ctx.settings.llm_model}")
    print(f"{'stage':<16}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
    for name, vals in rows.items():
        print(f"{name:<16}{pct(vals, 0.5):>10.1f}{pct(vals, 0.95):>10.1f}{statistics.mean(vals):>10.1f}")
    print("verdicts of the model's answers: " + ", ".join(
        f"{k} {v} ({100 * v / len(qs):.0f} %)" for k, v in sorted(verdicts.items())))


def quote_mode(ctx: Context, qs: list[str]) -> None:
    opts = AskOptions(mode="quote")
    ctx.answerer.answer(QUESTIONS[0], opts)  # warm-up
    retrieval, extra, answered = [], [], 0
    for q in qs:
        # Cold: no sentence vector of an earlier question or of the generate-mode pass reused.
        ctx.answerer.embed_sentences.clear()
        ans = ctx.answerer.answer(q, opts)
        retrieval.append((ans.timings.get("embed", 0.0) + ans.timings.get("search", 0.0)) * 1000)
        extra.append(ans.timings.get("quote", 0.0) * 1000)
        answered += not ans.abstained
    p50 = pct(extra, 0.5)
    print(f"\nquote mode (sentence vectors not cached), {len(qs)} questions ({answered} answered, "
          f"{len(qs) - answered} not found): "
          f"retrieval p50 {pct(retrieval, 0.5):.1f} ms; on top of retrieval p50 {p50:.1f} ms, "
          f"p95 {pct(extra, 0.95):.1f} ms (target: p50 under 50 ms) -> {'OK' if p50 < 50 else 'OVER'}")


if __name__ == "__main__":
    main()
