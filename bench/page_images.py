"""Page images and span boxes of the evidence viewer, through a real `ctxqa serve` on 127.0.0.1.

Starts its own server (quote backend: no model is loaded; a page-image cache big enough for every page), uploads
the 10-Q filings of ../shared/data/corpora/sec-10q, then requests, one at a time:

  cold         every page of every filing once (PDFium render + PNG encoding: the first request for a page)
  cold + span  every page again with a chunk on it painted (boxes computed, then rendered: not in the cache)
  cached       the same page requests again (served from the server's byte LRU; X-Render-Seconds "0")
  304          the same again with If-None-Match: the ETag (no body)
  boxes        the boxes of a chunk on every page

Latency is the client's (request sent to body read); `render` is the server's own X-Render-Seconds of the cold
requests. Prints a Markdown table and the CPU.

    python bench/page_images.py [--scale 1.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CTXQA_EMBEDDING_CACHE_DIR", str(Path(tempfile.gettempdir()) / "ctxqa-bench-cache"))

import httpx  # noqa: E402
from _report import cpu_model  # noqa: E402

from tests.api.test_api import create_key, start_server, stop_server  # noqa: E402

FILINGS = REPO.parent / "shared/data/corpora/sec-10q"


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))] if s else float("nan")


def timed_get(c: httpx.Client, url: str, **kw: Any) -> tuple[httpx.Response, float]:
    t = time.perf_counter()
    r = c.get(url, **kw)
    took = time.perf_counter() - t
    if r.status_code not in (200, 304):
        sys.exit(f"GET {url} -> {r.status_code}: {r.text[:300]}")
    return r, took


def row(name: str, lat: list[float], extra: str = "") -> dict[str, Any]:
    return {"phase": name, "n": len(lat), "p50_ms": round(pct(lat, 50) * 1000, 1),
            "p95_ms": round(pct(lat, 95) * 1000, 1), "max_ms": round(max(lat) * 1000, 1) if lat else float("nan"),
            "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else float("nan"), "note": extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filings", type=Path, default=FILINGS, help="folder of PDFs to upload")
    ap.add_argument("--scale", type=float, default=None, help="?scale= of the page images (default: the "
                                                                "server's page_scale, 1.5)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    pdfs = sorted(args.filings.glob("*.pdf"))
    if not pdfs:
        sys.exit(f"no PDFs under {args.filings}")
    root = Path(tempfile.mkdtemp(prefix="ctxqa-bench-pages-"))
    srv = start_server(root, {"CTXQA_LLM_BACKEND": "quote", "CTXQA_PAGE_CACHE_MB": "2048"})
    try:
        srv.keys["bench"] = create_key(srv, "bench", admin=True)
        with srv.client("bench", timeout=900) as c:
            t = time.perf_counter()
            r = c.post("/v1/documents", data={"collection": "filings"},
                       files=[("files", (p.name, p.read_bytes(), "application/pdf")) for p in pdfs])
            r.raise_for_status()
            upload_s = time.perf_counter() - t
            docs = []
            for res in r.json()["results"]:
                if res["status"] != "added":
                    sys.exit(f"upload of {res['filename']}: {res}")
                d = c.get(f"/v1/documents/{res['document_id']}", params={"include_chunks": True}).json()
                docs.append(d)
            pages = [(d["id"], n) for d in docs for n in range(1, d["pages"] + 1)]
            # A chunk on each page (the first whose pages include it), as a citation would point at.
            span: dict[tuple[int, int], tuple[int, int]] = {}
            for d in docs:
                for ch in d["chunks"]:
                    for n in ch["pages"]:
                        span.setdefault((d["id"], n), (ch["char_start"], ch["char_end"]))
            params = {"scale": args.scale} if args.scale is not None else {}

            cold, render, sizes, etags = [], [], [], {}
            for doc_id, n in pages:
                r, took = timed_get(c, f"/v1/documents/{doc_id}/pages/{n}.png", params=params)
                cold.append(took)
                render.append(float(r.headers["x-render-seconds"]))
                sizes.append(len(r.content))
                etags[(doc_id, n)] = r.headers["etag"]
            cold_span, render_span = [], []
            for doc_id, n in pages:
                if (doc_id, n) not in span:
                    continue
                a, b = span[(doc_id, n)]
                r, took = timed_get(c, f"/v1/documents/{doc_id}/pages/{n}.png",
                                    params={**params, "start": a, "end": b})
                cold_span.append(took)
                render_span.append(float(r.headers["x-render-seconds"]))
            cached, not_modified = [], []
            for doc_id, n in pages:
                r, took = timed_get(c, f"/v1/documents/{doc_id}/pages/{n}.png", params=params)
                if r.headers.get("x-render-seconds") != "0":
                    sys.exit(f"page {doc_id}/{n} was rendered again: is the cache too small?")
                cached.append(took)
            for doc_id, n in pages:
                r, took = timed_get(c, f"/v1/documents/{doc_id}/pages/{n}.png", params=params,
                                    headers={"If-None-Match": etags[(doc_id, n)]})
                if r.status_code != 304:
                    sys.exit(f"expected 304 for page {doc_id}/{n}, got {r.status_code}")
                not_modified.append(took)
            boxes, methods = [], {}
            for (doc_id, n), (a, b) in span.items():
                r, took = timed_get(c, f"/v1/documents/{doc_id}/pages/{n}/boxes", params={"start": a, "end": b})
                boxes.append(took)
                m = r.json()["method"]
                methods[m] = methods.get(m, 0) + 1
    finally:
        stop_server(srv)

    rows = [
        row("cold", cold, f"server render p50 {pct(render, 50) * 1000:.1f} ms, p95 {pct(render, 95) * 1000:.1f} "
                          f"ms; PNG median {statistics.median(sizes) / 1024:.0f} KiB"),
        row("cold + span", cold_span, f"server boxes+render p50 {pct(render_span, 50) * 1000:.1f} ms, "
                                      f"p95 {pct(render_span, 95) * 1000:.1f} ms"),
        row("cached", cached, "byte LRU, same bytes"),
        row("304", not_modified, "If-None-Match"),
        row("boxes", boxes, "methods " + ", ".join(f"{k}: {v}" for k, v in sorted(methods.items()))),
    ]
    print(f"cpu: {cpu_model()} ({os.cpu_count()} cores, {platform.machine()}); python {platform.python_version()}")
    print(f"{len(pdfs)} PDFs, {len(pages)} pages; upload + ingest {upload_s:.1f}s; scale "
          f"{args.scale if args.scale is not None else 'server default (1.5)'}")
    print()
    print("| phase | n | p50 ms | p95 ms | max ms | mean ms | note |")
    print("|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['phase']} | {x['n']} | {x['p50_ms']} | {x['p95_ms']} | {x['max_ms']} | {x['mean_ms']} | "
              f"{x['note']} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "cpus": os.cpu_count(), "pages": len(pages),
                                         "upload_s": round(upload_s, 1), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
