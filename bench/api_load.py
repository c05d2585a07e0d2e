"""Load test of the HTTP API: N concurrent clients for T seconds per endpoint (/v1/search, /v1/ask).

By default it starts its own `ctxqa serve` (embedded default model: llama.cpp + bundled SmolLM2-135M) on a free
port with a fresh data directory, creates an API key, uploads a corpus through /v1/documents, then runs each
endpoint in turn and prints a Markdown table: requests/s, p50/p95/p99 latency, error count and the server's
peak resident memory (sampled from /proc during the phase; VmHWM for the whole run).

    python bench/api_load.py --clients 4 --duration 20
    python bench/api_load.py --url http://127.0.0.1:8000 --key ctxqa_... --collection default   # existing server

Errors are non-2xx answers (a 503 from a full generation queue included) and transport failures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ctxqa.rag.embed.onnx_runtime import default_cache_dir  # noqa: E402

# The server it starts uses the product's own cache of exported models and the `auto` choice.
os.environ.setdefault("CTXQA_EMBEDDING_CACHE_DIR", str(default_cache_dir()))

from tests.api.test_api import Server, create_key, start_server, stop_server  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared/data/corpora/fastapi-docs/tutorial"

QUESTIONS = [
    "How do I declare query parameters?",
    "How do I make a query parameter optional?",
    "What is a path parameter?",
    "How do I declare a request body?",
    "How can I return a custom status code?",
    "How do I add middleware?",
    "How do I handle errors with HTTPException?",
    "How do I upload files?",
    "What are dependencies used for?",
    "How do I enable CORS?",
]


@dataclass
class Phase:
    endpoint: str
    clients: int
    duration: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    wall: float = 0.0
    peak_rss: int = 0
    tokens: int = 0

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            if not lat:
                return float("nan")
            return lat[min(len(lat) - 1, max(0, int(round(p / 100 * len(lat) + 0.5)) - 1))]

        ok = len(lat)
        return {
            "endpoint": self.endpoint, "clients": self.clients, "seconds": round(self.wall, 1),
            "requests": ok + self.errors, "ok": ok, "errors": self.errors,
            "rps": round(ok / self.wall, 2) if self.wall else 0.0,
            "p50_ms": round(pct(50) * 1000, 1), "p95_ms": round(pct(95) * 1000, 1),
            "p99_ms": round(pct(99) * 1000, 1),
            "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else float("nan"),
            "server_peak_rss_mib": round(self.peak_rss / 2**20, 1), "statuses": self.statuses,
            "completion_tokens": self.tokens,
            "tokens_per_s": round(self.tokens / self.wall, 1) if self.wall else 0.0,
        }


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


class RssSampler(threading.Thread):
    def __init__(self, pid: int | None, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set() and self.pid:
            self.peak = max(self.peak, proc_status(self.pid).get("VmRSS", 0))
            self._halt.wait(self.every)

    def stop(self) -> int:
        self._halt.set()
        self.join(2)
        return self.peak


def upload_corpus(client: httpx.Client, corpus: Path, collection: str, limit: int) -> dict[str, Any]:
    files = sorted(p for p in corpus.rglob("*.md") if p.is_file())[:limit]
    if not files:
        sys.exit(f"no .md files under {corpus}")
    t = time.perf_counter()
    results: list[dict[str, Any]] = []
    for i in range(0, len(files), 4):
        batch = files[i:i + 4]
        r = client.post("/v1/documents", data={"collection": collection},
                        files=[("files", (p.name, p.read_bytes(), "text/markdown")) for p in batch], timeout=600)
        r.raise_for_status()
        results.extend(r.json()["results"])
    return {"files": len(files), "chunks": sum(x["chunks"] for x in results),
            "seconds": round(time.perf_counter() - t, 1)}


def run_phase(url: str, key: str, endpoint: str, clients: int, duration: float, body_for: Any,
              pid: int | None) -> Phase:
    phase = Phase(endpoint, clients, duration)
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration
    counter = itertools.count()
    start = threading.Barrier(clients + 1)

    def worker() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as c:
            start.wait()
            while time.perf_counter() < stop_at:
                body = body_for(next(counter))
                t = time.perf_counter()
                try:
                    r = c.post(endpoint, json=body)
                    status = str(r.status_code)
                    ok = r.status_code < 300
                    tokens = r.json().get("usage", {}).get("completion_tokens", 0) if ok else 0
                except httpx.HTTPError as e:
                    status, ok, tokens = type(e).__name__, False, 0
                took = time.perf_counter() - t
                with lock:
                    phase.statuses[status] = phase.statuses.get(status, 0) + 1
                    if ok:
                        phase.latencies.append(took)
                        phase.tokens += tokens
                    else:
                        phase.errors += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    sampler = RssSampler(pid)
    sampler.start()
    start.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    phase.wall = time.perf_counter() - t0  # includes the last in-flight requests
    phase.peak_rss = sampler.stop()
    return phase


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| endpoint | clients | seconds | requests | errors | req/s | p50 ms | p95 ms | p99 ms | "
            "server peak RSS MiB |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['endpoint']} | {r['clients']} | {r['seconds']} | {r['requests']} | {r['errors']} | "
                     f"{r['rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['server_peak_rss_mib']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds per endpoint.")
    ap.add_argument("--endpoints", default="search,ask")
    ap.add_argument("--url", help="Use a running server instead of starting one.")
    ap.add_argument("--key", help="API key for --url.")
    ap.add_argument("--pid", type=int, help="Server pid for memory sampling (with --url).")
    ap.add_argument("--collection", default="bench")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--max-files", type=int, default=40)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--queue-size", type=int, default=16)
    ap.add_argument("--server-env", action="append", default=[], metavar="CTXQA_X=VALUE",
                    help="Extra setting for the started server (repeatable), e.g. CTXQA_LLM_THREADS=2.")
    ap.add_argument("--json", type=Path, help="Write the results here (default: bench/results/api_load-*.json).")
    args = ap.parse_args()

    srv: Server | None = None
    tmp = None
    info: dict[str, Any] = {}
    if args.url:
        if not args.key:
            sys.exit("--url needs --key")
        url, key, pid = args.url.rstrip("/"), args.key, args.pid
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ctxqa-bench-")
        extra = {"CTXQA_QUEUE_SIZE": str(args.queue_size), "CTXQA_MAX_TOP_K": str(max(10, args.top_k))}
        for item in args.server_env:
            k, sep, v = item.partition("=")
            if not sep or not k.startswith("CTXQA_"):
                sys.exit(f"--server-env expects CTXQA_NAME=VALUE, got {item!r}")
            extra[k] = v
        srv = start_server(Path(tmp.name), extra)
        url, key, pid = srv.url, create_key(srv, "bench", admin=True), srv.proc.pid
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            info["corpus"] = upload_corpus(c, args.corpus, args.collection, args.max_files)
        print(f"corpus: {info['corpus']}", file=sys.stderr)
    try:
        bodies = {
            "search": lambda i: {"query": QUESTIONS[i % len(QUESTIONS)], "collection": args.collection,
                                 "top_k": args.top_k},
            "ask": lambda i: {"question": QUESTIONS[i % len(QUESTIONS)], "collection": args.collection,
                              "top_k": args.top_k, "max_new_tokens": args.max_new_tokens, "temperature": 0},
        }
        rows = []
        for name in [e.strip() for e in args.endpoints.split(",") if e.strip()]:
            endpoint = f"/v1/{name}"
            # one warm-up request (first-use costs are not what this measures)
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as c:
                c.post(endpoint, json=bodies[name](0))
            print(f"{endpoint}: {args.clients} clients for {args.duration:.0f}s ...", file=sys.stderr)
            rows.append(run_phase(url, key, endpoint, args.clients, args.duration, bodies[name], pid).row())
        hwm = proc_status(pid).get("VmHWM", 0) if pid else 0
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            metrics_text = c.get("/metrics").text
    finally:
        if srv is not None:
            stop_server(srv)
        if tmp is not None:
            tmp.cleanup()
    result = {
        "rows": rows, "server_vm_hwm_mib": round(hwm / 2**20, 1), "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_avg": os.getloadavg()}, "args": {k: str(v) for k, v in vars(args).items() if k != "key"},
        **info,
        "server_5xx": sum(int(float(line.rsplit(" ", 1)[1])) for line in metrics_text.splitlines()
                          if line.startswith("ctxqa_http_requests_total{") and 'status="5' in line),
    }
    out = args.json or REPO / "bench/results" / f"api_load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table(rows))
    print(f"\nserver peak RSS over the whole run (VmHWM): {result['server_vm_hwm_mib']} MiB; "
          f"server 5xx: {result['server_5xx']}; machine: {os.cpu_count()} CPUs, load avg "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; results: {out}")
    for r in rows:
        if r["endpoint"] == "/v1/ask":
            print(f"/v1/ask generated {r['completion_tokens']} tokens ({r['tokens_per_s']} tokens/s); "
                  f"statuses {r['statuses']}")


if __name__ == "__main__":
    main()
