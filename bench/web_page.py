"""The web page's figures, measured in a real Chromium (Playwright) against a real `ctxqa serve` on 127.0.0.1 with
the embedded default: time from "ask" to the first streamed text and to the final verdict, as the page itself
measures them (performance.now() around its fetch of POST /v1/ask), in generate and quote mode; the time to open
the evidence (click → page image decoded with its boxes); and the size of the static assets.

    python bench/web_page.py [--questions 6]

Uploads the two 10-Q filings of ../shared/data/corpora/sec-10q through the API first (not timed here). Page-image
render times through the API alone: bench/page_images.py.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CTXQA_EMBEDDING_CACHE_DIR", str(Path(tempfile.gettempdir()) / "ctxqa-bench-cache"))

import httpx  # noqa: E402
from _report import cpu_model, pct  # noqa: E402

from tests.api.test_api import create_key, start_server, stop_server  # noqa: E402

SHARED = HERE.parent / "shared"
QUESTIONS = [
    "What was total net revenue for the quarter?",
    "How much cash and cash equivalents did the company hold at the end of the quarter?",
    "What was the operating income for the quarter?",
    "What restructuring charges were recorded?",
    "What are the main risk factors the company mentions?",
    "How many shares were repurchased?",
    "What was the effective tax rate?",
    "What were the research and development expenses?",
]


def assets() -> tuple[int, int, int]:
    files = [p for p in (HERE / "api" / "static").iterdir() if p.is_file()]
    raw = sum(p.stat().st_size for p in files)
    gz = sum(len(gzip.compress(p.read_bytes(), 9)) for p in files)
    return len(files), raw, gz


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--chromium", default=os.environ.get("CTXQA_CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from tests.api.test_web_page import ask, sign_in

    n, raw, gz = assets()
    root = Path(tempfile.mkdtemp(prefix="ctxqa-web-bench-"))
    srv = start_server(root)
    try:
        key = create_key(srv, "bench")
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as c:
            pdfs = sorted((SHARED / "data/corpora/sec-10q").glob("*.pdf"))
            files = [("files", (p.name, p.read_bytes(), "application/pdf")) for p in pdfs]
            r = c.post("/v1/documents", files=files, data={"collection": "filings"})
            r.raise_for_status()
        results: dict[str, list[dict[str, float]]] = {"generate": [], "quote": []}
        opens: list[float] = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            sign_in(page, srv, key)
            page.wait_for_selector("#ask-view", state="visible")
            page.select_option("#collection", "filings")
            for q in QUESTIONS[:args.questions]:
                for mode in ("generate", "quote"):
                    res = ask(page, q, quote=mode == "quote")
                    results[mode].append(res)
                    target = page.locator("#answer button.cite, #source-list button.source-open, "
                                          "#passage-list button.source-open").first
                    if mode == "quote" and target.count():
                        t0 = time.perf_counter()
                        target.click()
                        page.wait_for_selector("#evidence .page[data-loaded=true], #evidence .passage", timeout=60_000)
                        opens.append((time.perf_counter() - t0) * 1000)
                        page.keyboard.press("Escape")
                        page.wait_for_selector("#evidence", state="hidden")
                    print(f"  {mode:8s} first text {res['first_text_ms']:6d} ms  final {res['final_ms']:6d} ms  "
                          f"{res['grounding']:11s} {q}", flush=True)
            browser.close()
    finally:
        stop_server(srv)

    print(f"\nweb page, {args.questions} question(s) over two 10-Q filings, embedded default; CPU: {cpu_model()}, "
          f"{os.cpu_count()} cores")
    print(f"{'mode':10s} {'first text p50':>15s} {'p95':>8s} {'final verdict p50':>18s} {'p95':>8s}")
    for mode, rows in results.items():
        ft = [r["first_text_ms"] for r in rows]
        fin = [r["final_ms"] for r in rows]
        print(f"{mode:10s} {statistics.median(ft):12.0f} ms {pct(ft, .95):5.0f} ms {statistics.median(fin):15.0f} ms "
              f"{pct(fin, .95):5.0f} ms")
    if opens:
        print(f"open the evidence (click → page image with boxes): p50 {statistics.median(opens):.0f} ms, "
              f"p95 {pct(opens, .95):.0f} ms over {len(opens)}")
    print(f"static assets: {n} files, {raw / 1024:.1f} KiB ({gz / 1024:.1f} KiB gzipped)")
    print(json.dumps({"results": results, "open_ms": opens}))


if __name__ == "__main__":
    main()
