"""Answer latency through the `openai` backend (llama-cpp-python's OpenAI-compatible server on 127.0.0.1) against
the in-process llama.cpp backend: same GGUF (the bundled SmolLM2-135M Q4_1), same machine, same prompts.

Ingests a corpus (default: ../shared/data/corpora/fastapi-docs, else examples/docs) once, then answers each
question three ways, interleaved so machine noise hits all alike:
- in-process: `CTXQA_LLM_BACKEND=llama_cpp`;
- remote, server tokenizer: `openai` with tokens counted by the server's /extras/tokenize (one round trip per
  count: the packer counts each candidate block prefix);
- remote, local tokenizer: `openai` with `CTXQA_LLM_TOKENIZER` = the GGUF (counts in-process, no round trip).
The server runs with --no_prompt_cache (each prompt evaluated whole, as the in-process backend does) and the
same thread defaults as in-process llama.cpp; both use a 2,048-token context. Prints p50/p95 of the whole
answer and of generation alone, and how many answers were the same text as in-process.

    python bench/remote_backend.py [--corpus DIR] [--questions 20] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
from _report import cpu_model, pct  # noqa: E402

from ctxqa.context import Context  # noqa: E402
from ctxqa.rag.config import Settings  # noqa: E402
from ctxqa.rag.generate import resolve_model_path  # noqa: E402


def _questions() -> list[str]:
    spec = importlib.util.spec_from_file_location("bench_ask", HERE / "bench" / "ask.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return list(mod.QUESTIONS)


EXAMPLE_QUESTIONS = ["How long are daily snapshots kept?", "Who is on call at night?", "How do I claim expenses?",
                     "How often are databases snapshotted?", "How fast must pages be answered?"]


def start_server(gguf: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(HERE / "scripts/llama_server.py"), "--model", str(gguf), "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--no_prompt_cache"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("llama server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=HERE.parent / "shared/data/corpora/fastapi-docs")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--port", type=int, default=18093)
    args = ap.parse_args()

    corpus, questions = args.corpus, _questions()
    if not corpus.is_dir():
        corpus, questions = HERE / "examples/docs", EXAMPLE_QUESTIONS
    qs = (questions * (args.questions // len(questions) + 1))[: args.questions]
    gguf = resolve_model_path("bundled:smollm2")
    data = Path(tempfile.mkdtemp(prefix="ctxqa-bench-remote-"))
    common = dict(data_dir=data, max_new_tokens=args.max_new_tokens, llm_context_length=2048)
    base = f"http://127.0.0.1:{args.port}/v1"
    remote = dict(llm_backend="openai", llm_base_url=base, llm_model="smollm2", llm_timeout=600.0,
                  llm_request_extra={"repeat_penalty": 1.0})  # the in-process backend applies no penalty
    ways = {
        "in-process": Context(Settings(**common)),
        "remote, server tokenizer": Context(Settings(**common, **remote, llm_tokenizer="server")),
        "remote, local tokenizer": Context(Settings(**common, **remote, llm_tokenizer=str(gguf))),
    }
    first = ways["in-process"]
    for ctx in ways.values():
        ctx.__dict__["embedder"] = first.embedder  # one embedder for all three (same vectors, less memory)
    t = time.perf_counter()
    rep = first.ingestor.ingest([corpus])
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average {os.getloadavg()[0]:.1f}")
    print(f"corpus {corpus}: {rep.chunks} chunks in {time.perf_counter() - t:.1f}s; {len(qs)} questions, "
          f"max_new_tokens {args.max_new_tokens}")

    proc = start_server(gguf, args.port, data / "llama-server.log")
    try:
        for ctx in ways.values():
            ctx.answerer.answer(qs[0])  # warm-up: loads the model, first decode, first connection
        rows: dict[str, dict[str, list[float]]] = {w: {"total": [], "generate": [], "tokens": []} for w in ways}
        texts: dict[str, list[str]] = {w: [] for w in ways}
        names = list(ways)
        for i, q in enumerate(qs):
            for name in names[i % 3:] + names[: i % 3]:  # each way goes first, second, third in turn
                ctx = ways[name]
                t0 = time.perf_counter()
                ans = ctx.answerer.answer(q)
                rows[name]["total"].append(time.perf_counter() - t0)
                rows[name]["generate"].append(ans.timings.get("generate", 0.0))
                rows[name]["tokens"].append(ans.usage.completion_tokens)
                texts[name].append(ans.raw_output)
    finally:
        proc.terminate()
        proc.wait(30)
        for ctx in ways.values():
            ctx.close()

    print(f"{'backend':<26} {'answer p50':>10} {'p95':>7} {'generate p50':>12} {'tokens/answer':>13} "
          f"{'same text as in-process':>24}")
    summary = {}
    for name, r in rows.items():
        same = sum(a == b for a, b in zip(texts[name], texts["in-process"]))
        summary[name] = {"answer_p50_s": round(pct(r["total"], 0.5), 3), "answer_p95_s": round(pct(r["total"], 0.95), 3),
                         "generate_p50_s": round(pct(r["generate"], 0.5), 3), "same_text": f"{same}/{len(qs)}"}
        print(f"{name:<26} {pct(r['total'], 0.5):>9.3f}s {pct(r['total'], 0.95):>6.3f}s "
              f"{pct(r['generate'], 0.5):>11.3f}s {statistics.mean(r['tokens']):>13.1f} {same:>20}/{len(qs)}")
    local = pct(rows["in-process"]["total"], 0.5)
    for name in list(ways)[1:]:
        print(f"{name}: p50 {pct(rows[name]['total'], 0.5) / local:.2f}x in-process "
              f"({(pct(rows[name]['total'], 0.5) - local) * 1000:+.0f} ms)")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
