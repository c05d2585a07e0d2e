"""Which filing does retrieval find? The 4 NVIDIA 10-Qs of ../shared/data/eval/sec10q-nvda plus the two 10-Qs of
../shared/data/corpora/sec-10q as distractors, and the 35 questions about them (questions.csv).

For each question, the retrieved chunks' distinct source files in rank order; a question is a hit at 1 (or 5)
when a file matching its "Source Docs" glob ranks first (or in the top 5); MRR over the first matching file.
Reported separately for single-filing questions ("*2023 Q3 NVDA*") and multi-filing ones ("*NVDA*"), by
question kind: names a quarter / says "latest" / other.

    python bench/retrieval_filings.py [--k 30] [--mode hybrid] [--no-periods] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CTXQA_SHARED", ROOT.parent / "shared")) / "data"

from ctxqa.context import Context  # noqa: E402
from ctxqa.rag.config import Settings  # noqa: E402
from ctxqa.rag.periods import parse_question  # noqa: E402


def kind_of(question: str) -> str:
    q = parse_question(question)
    if q.quarters or q.dates or q.months:
        return "names a quarter/date"
    if q.recent:
        return "says latest"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=30, help="chunks retrieved per question")
    ap.add_argument("--mode", default=None)
    ap.add_argument("--no-periods", action="store_true", help="period- and recency-aware ranking off")
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()
    corpus = Path(tempfile.mkdtemp(prefix="ctxqa-filings-"))
    for f in sorted((SHARED / "eval/sec10q-nvda/docs").glob("*.pdf")) + sorted((SHARED / "corpora/sec-10q").glob("*.pdf")):
        shutil.copy(f, corpus / f.name)
    extra = {"period_weight": 0.0, "recency_weight": 0.0} if args.no_periods else {}
    if "period_weight" not in Settings.model_fields:
        extra = {}
    ctx = Context(Settings(data_dir=args.data_dir or Path(tempfile.mkdtemp(prefix="ctxqa-filings-data-")), **extra))
    t = time.perf_counter()
    rep = ctx.ingestor.ingest([corpus])
    print(f"ingested {len(rep.results)} filings, {rep.chunks} chunks in {time.perf_counter() - t:.1f}s")
    with ctx.db.session() as s:
        from ctxqa.rag.db import repo

        coll = repo.require_collection(s, ctx.settings.default_collection)
        docs, _ = repo.list_documents(s, coll.id)
        for d in docs:
            # getattr: the script also runs against code from before document context (the "before" figures).
            print(f"  {d.source}: title {d.title!r} ({getattr(d, 'title_source', None)}); date "
                  f"{getattr(d, 'date', None)} ({getattr(d, 'date_source', None)}); period {getattr(d, 'period', None)}")
    rows = list(csv.DictReader((SHARED / "eval/sec10q-nvda/questions.csv").open()))
    stats: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
    lat = []
    for r in rows:
        glob, question = r["Source Docs"], r["Question"]
        scope = "multi-filing" if glob == "*NVDA*" else "single-filing"
        t = time.perf_counter()
        hits = ctx.retriever.search(question, k=args.k, mode=args.mode).hits
        lat.append(time.perf_counter() - t)
        files = list(dict.fromkeys(h.source for h in hits))
        rank = next((i + 1 for i, f in enumerate(files) if fnmatch.fnmatch(f, glob)), None)
        row = (int(rank == 1), int(rank is not None and rank <= 5), 1.0 / rank if rank else 0.0)
        for key in ((scope, "all"), (scope, kind_of(question))):
            stats.setdefault(key, []).append(row)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    print(f"\ncpu: {cpu}; k={args.k}; mode {args.mode or ctx.settings.retrieval_mode}; periods "
          f"{'off' if args.no_periods else 'on'}; search p50 {1000 * sorted(lat)[len(lat) // 2]:.1f} ms")
    print(f"{'questions':<42}{'n':>4}{'hit@1':>8}{'hit@5':>8}{'MRR':>8}")
    for (scope, kind), vals in sorted(stats.items(), key=lambda kv: (kv[0][0], kv[0][1] != "all", kv[0][1])):
        n = len(vals)
        h1, h5, mrr = (sum(v[i] for v in vals) / n for i in range(3))
        print(f"{scope + ' / ' + kind:<42}{n:>4}{h1:>8.2f}{h5:>8.2f}{mrr:>8.3f}")


if __name__ == "__main__":
    main()
