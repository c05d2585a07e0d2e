"""Benchmark the two PDF text extractors of ingest/loaders/pdf.py: pypdfium2 ("pdfium") and pypdf.

1. Speed: pages/s on the real SEC 10-Q filings (shared/data/corpora/sec-10q/*.pdf), best of --repeat runs.
2. Robustness: over every PDF of shared/data/pdf/manifest.json (80 real files: encrypted, malformed, scanned,
   forms, Arabic...), how many each engine opens and gets text from (with the manifest's user password for
   encrypted ones), how many it opens without finding text, and how many fail.

The loader's DEFAULT_ENGINE is the one this benchmark shows faster without reading fewer files; the other is its
fallback. Usage:  python bench/pdf_extract.py [--repeat N] [--data DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ctxqa.ingest.loaders.pdf import ENGINES, EXTRACTORS, PasswordRequired  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"


def speed(engine: str, files: list[Path], repeat: int) -> dict:
    fn = EXTRACTORS[engine]
    per_file = []
    total_pages = 0
    total_best = 0.0
    for f in files:
        best = float("inf")
        pages = chars = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn(f, None)
            dt = time.perf_counter() - t0
            best = min(best, dt)
            pages, chars = len(out.pages), sum(len(p) for p in out.pages)
        per_file.append({"file": f.name, "pages": pages, "chars": chars, "seconds": round(best, 3),
                         "pages_per_s": round(pages / best, 1)})
        total_pages += pages
        total_best += best
    return {"engine": engine, "files": per_file, "pages": total_pages, "seconds": round(total_best, 3),
            "pages_per_s": round(total_pages / total_best, 1)}


def robustness(engine: str, data: Path) -> dict:
    manifest = json.loads((data / "pdf" / "manifest.json").read_text())
    fn = EXTRACTORS[engine]
    counts = {"text": 0, "no_text": 0, "password": 0, "error": 0}
    failures = []
    t0 = time.perf_counter()
    for rel, info in sorted(manifest.items()):
        path = data / "pdf" / rel
        pw = info.get("user_password") or None
        try:
            try:
                out = fn(path, None)
            except PasswordRequired:
                if pw is None:
                    raise
                out = fn(path, pw)
            counts["text" if any(p.strip() for p in out.pages) else "no_text"] += 1
        except PasswordRequired:
            counts["password"] += 1
            failures.append(f"{rel}: password not accepted")
        except Exception as e:  # noqa: BLE001 - counting failures is the point
            counts["error"] += 1
            failures.append(f"{rel}: {type(e).__name__}: {str(e)[:120]}")
    return {"engine": engine, "files": len(manifest), **counts, "seconds": round(time.perf_counter() - t0, 2),
            "failures": failures}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per 10-Q file; the best is kept (default 3)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # pypdf logs every repaired xref; not what is measured here

    tenq = sorted((args.data / "corpora" / "sec-10q").glob("*.pdf"))
    if not tenq:
        print(f"no PDFs under {args.data / 'corpora' / 'sec-10q'}", file=sys.stderr)
        return 2
    results = {"python": platform.python_version(), "machine": platform.machine(), "speed": [], "robustness": []}
    import pypdf
    import pypdfium2

    results["versions"] = {"pypdf": pypdf.__version__, "pypdfium2": pypdfium2.PYPDFIUM_INFO.__str__()}

    print(f"Speed on {len(tenq)} SEC 10-Q filings (best of {args.repeat}):")
    for engine in ENGINES:
        r = speed(engine, tenq, args.repeat)
        results["speed"].append(r)
        for f in r["files"]:
            print(f"  {engine:7s} {f['file']:24s} {f['pages']:4d} pages {f['seconds']:7.3f}s "
                  f"{f['pages_per_s']:8.1f} pages/s  ({f['chars']} chars)")
        print(f"  {engine:7s} {'TOTAL':24s} {r['pages']:4d} pages {r['seconds']:7.3f}s {r['pages_per_s']:8.1f} pages/s")

    print(f"\nRobustness on {args.data / 'pdf' / 'manifest.json'} (manifest user passwords):")
    for engine in ENGINES:
        r = robustness(engine, args.data)
        results["robustness"].append(r)
        print(f"  {engine:7s} {r['files']} files: {r['text']} with text, {r['no_text']} opened without text, "
              f"{r['password']} password refused, {r['error']} errors ({r['seconds']}s)")
        for f in r["failures"]:
            print(f"           - {f}")

    fast = max(results["speed"], key=lambda r: r["pages_per_s"])
    rob = {r["engine"]: r["text"] for r in results["robustness"]}
    best = max(ENGINES, key=lambda e: (rob[e], next(r["pages_per_s"] for r in results["speed"] if r["engine"] == e)))
    results["recommended_default"] = best
    print(f"\nFastest: {fast['engine']}; most files with text: {max(rob, key=rob.get)}; "
          f"recommended default: {best} (the other is the fallback)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
