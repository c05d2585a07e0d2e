"""End-to-end ingestion throughput: pages/s, chunks/s, peak memory, and where the time goes.

    python bench/ingest.py [--corpora fastapi-docs,sec-10q,corpora,scifact] [--backends onnx-int8] [--threads N]
                           [--profile] [--json bench/results/ingest.json]

Each (corpus, backend) runs in a fresh child process (so peak RSS is that run's own) with a fresh data dir, through
the real pipeline: `Context(Settings(data_dir=tmp, embedding_backend=...)).ingestor.ingest([path])`.

- fastapi-docs: ../shared/data/corpora/fastapi-docs (Markdown site, 155 pages)
- sec-10q: ../shared/data/corpora/sec-10q (10-Q PDFs)
- corpora: ../shared/data/corpora as one folder (both of the above in one run: what the issue names)
- scifact: the 5,183 BEIR SciFact abstracts written as .txt files (title on the first line) into a temp folder
  first (not timed), then ingested like any folder

Reported per run: files, pages (PDF pages; one per Markdown/text file), chunks, wall time of `ingest` (model load
excluded and shown apart), docs/s, pages/s, chunks/s, peak RSS, the pipeline's own split (extract, chunk, embed,
store = SQL rows, index = faiss + lexical + save), then "embedding alone": the same chunk texts (read back from
the database) embedded again by the same warm embedder in one `encode` call, and the ratio wall / embedding alone
(target <= 1.3). Last, the speed against LlamaIndex's figures measured on a quiet machine of this kind
(same MiniLM embedder): Markdown 155 pages in 42 s; 10-Q 3.5 pages/s; SciFact 14.2 docs/s (target >= 3x each).
Note LlamaIndex's 1024-token chunks are truncated to MiniLM's 256 word pieces (most text is never embedded);
ctxqa embeds every token, so it embeds ~3-4x more text for the same corpus.

Peer benchmark on this same machine: `bash bench/peer_llamaindex.sh` (own virtualenv .venv-peer, offline) runs
LlamaIndex's default pipeline (SimpleDirectoryReader, SentenceSplitter 1024, HuggingFaceEmbedding with the same
bundled MiniLM, VectorStoreIndex) and a plain MiniLM + faiss SciFact baseline over the same corpora, timing load /
split / embed+index and counting nodes truncated at 256 word pieces (bench/results/peer_llamaindex.json); use it
instead of the figures above when comparing. `--limit N` is a quick smoke test on the first N files of each corpus.
When that file holds a full run, this benchmark adds "vs LlamaIndex here" (same machine, same MiniLM) and compares
word pieces actually embedded per second (LlamaIndex's: nodes x mean word pieces x the share inside the window).

`--profile` runs cProfile over the ingest call (all threads' time shows up as the main thread waiting on the
extraction worker: read "extract"/"chunk" from the pipeline's own timings) and writes the top functions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the project: bench/ingest.py must not shadow the ingest package
from _child import emit, run_child  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = ROOT / "bench" / "results"
SHARED = Path(os.environ.get("CTXQA_SHARED", ROOT.parent / "shared")) / "data"
CORPORA = {
    "fastapi-docs": SHARED / "corpora" / "fastapi-docs",
    "sec-10q": SHARED / "corpora" / "sec-10q",
    "scifact": SHARED / "eval" / "scifact" / "corpus.jsonl",
    "corpora": SHARED / "corpora",  # the whole folder the issue names: Markdown site + 10-Q PDFs in one run
}
# LlamaIndex default pipeline + the same MiniLM embedder, on a quiet machine of this kind (from the issue).
LLAMAINDEX = {
    "fastapi-docs": {"what": "155 pages in 42 s", "pages_per_s": 155 / 42},
    "sec-10q": {"what": "268 pages in 77 s (3.5 pages/s)", "pages_per_s": 3.5},
    "scifact": {"what": "5,183 docs at 14.2 docs/s", "docs_per_s": 14.2},
    # 155 Markdown pages in 42 s, then the 93 pages of the two 10-Qs at 3.5 pages/s
    "corpora": {"what": "248 pages in 68.6 s (42 s + 93 pages at 3.5 pages/s)", "pages_per_s": 248 / (42 + 93 / 3.5)},
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_scifact(jsonl: Path, out: Path) -> int:
    n = 0
    with jsonl.open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            name = "".join(c if c.isalnum() else "_" for c in str(r["_id"]))
            (out / f"{name}.txt").write_text(f"{r.get('title', '').strip()}\n\n{r.get('text', '').strip()}\n",
                                             encoding="utf-8")
            n += 1
    return n


def run_one(corpus: str, backend: str, threads: int | None, profile: bool, alone_sample: int = 0) -> dict:
    from sqlalchemy import select

    from ctxqa.context import Context
    from ctxqa.rag.config import Settings
    from ctxqa.rag.db.models import Chunk, Document
    from ctxqa.rag.index.chunk_text import embedding_text

    with tempfile.TemporaryDirectory(prefix=f"ctxqa-bench-{corpus}-") as tmp:
        src = CORPORA[corpus]
        if corpus == "scifact":
            folder = Path(tmp) / "scifact"
            folder.mkdir()
            write_scifact(src, folder)
            src = folder
        settings = Settings(data_dir=Path(tmp) / "data", embedding_backend=backend, embedding_threads=threads)
        ctx = Context(settings)
        t = time.perf_counter()
        emb = ctx.embedder
        ingestor = ctx.ingestor
        load_s = time.perf_counter() - t
        if backend != "auto" and emb.backend != backend:
            raise SystemExit(f"backend {backend} unavailable here (fell back to {emb.backend})")
        rss_loaded = _rss_mb()
        prof = None
        if profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0, c0 = time.perf_counter(), time.process_time()
        report = ingestor.ingest([src])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if prof is not None:
            import io
            import pstats

            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
            (RESULTS / f"ingest_profile_{corpus}_{backend}.txt").write_text(buf.getvalue())
        rss_peak = _rss_mb()
        with ctx.db.session() as s:  # exactly what the pipeline embedded: each chunk under its title and headings
            texts = list(dict.fromkeys(
                embedding_text(t, title, hp or (), count_tokens=emb.count_tokens, max_tokens=emb.max_tokens,
                               text_tokens=n)
                for t, title, hp, n in s.execute(select(Chunk.text, Document.title, Chunk.heading_path,
                                                        Chunk.token_count)
                                                 .join(Document, Chunk.document_id == Document.id)
                                                 .order_by(Chunk.id))))
        n_all = len(texts)
        word_pieces = sum(min(len(ids), emb.max_tokens) for ids in emb.tokenizer(texts)["input_ids"])
        if alone_sample and n_all > alone_sample:  # a fixed random sample, scaled to all chunks
            import random

            texts = random.Random(0).sample(texts, alone_sample)
        t, c = time.perf_counter(), time.process_time()
        emb.encode(texts)
        scale = n_all / len(texts) if texts else 1.0
        embed_alone = (time.perf_counter() - t) * scale
        embed_alone_cpu = (time.process_time() - c) * scale
        ctx.close()
    files = report.count("added") + report.count("updated")
    pdf_pages = report.pages
    pages = sum((r.pages or 1) for r in report.results if r.status in ("added", "updated"))
    tm = {k: round(v, 3) for k, v in report.timings.items()}
    row = {
        "corpus": corpus, "backend": backend if emb.backend == backend else f"{backend}: {emb.backend}", "threads": threads or os.cpu_count(),
        "files": files, "failed": report.count("failed"), "skipped": report.count("skipped"),
        "pages": pages, "pdf_pages": pdf_pages, "chunks": report.chunks, "chunks_embedded": report.chunks_embedded,
        "model_load_s": round(load_s, 2), "wall_s": round(wall, 2),
        "docs_per_s": files / wall, "pages_per_s": pages / wall, "chunks_per_s": report.chunks / wall,
        "timings": tm, "embed_alone_s": round(embed_alone, 2),
        "embed_alone_chunks_per_s": n_all / embed_alone if embed_alone else None,
        "embed_alone_sampled": len(texts) if len(texts) < n_all else None,
        "pipeline_over_embedding": wall / embed_alone if embed_alone else None,
        # CPU seconds (all threads) are much less sensitive to other load than wall time on a busy machine.
        "cpu_s": round(cpu, 2), "embed_alone_cpu_s": round(embed_alone_cpu, 2),
        "pipeline_over_embedding_cpu": cpu / embed_alone_cpu if embed_alone_cpu else None,
        "rss_after_model_load_mb": round(rss_loaded), "peak_rss_mb": round(rss_peak),
        "load_average": os.getloadavg()[0],
    }
    row["word_pieces_embedded"] = word_pieces
    row["word_pieces_per_s"] = word_pieces / wall
    li = LLAMAINDEX[corpus]
    if "pages_per_s" in li:
        row["vs_llamaindex"] = row["pages_per_s"] / li["pages_per_s"]
    else:
        row["vs_llamaindex"] = row["docs_per_s"] / li["docs_per_s"]
    row["llamaindex"] = li["what"]
    peer = _peer(corpus)
    if peer is not None:  # LlamaIndex measured on this machine (bench/peer_llamaindex.sh)
        row["vs_llamaindex_here"] = peer["wall_s"] / wall
        tok = peer.get("tokens") or {}
        peer_wp = peer["nodes"] * tok.get("word_pieces_mean", 0) * tok.get("word_pieces_embedded_share", 0)
        row["llamaindex_here"] = {"wall_s": peer["wall_s"], "word_pieces_embedded": round(peer_wp),
                                  "word_pieces_per_s": peer_wp / peer["wall_s"],
                                  "load_average": peer.get("load_average")}
    return row


def _peer(corpus: str) -> dict | None:
    """The full (not --limit) LlamaIndex run of `corpus` in bench/results/peer_llamaindex.json, if any."""
    try:
        rows = json.loads((RESULTS / "peer_llamaindex.json").read_text())
    except (OSError, ValueError):
        return None
    return next((r for r in rows if r.get("corpus") == corpus and r.get("pipeline") == "llamaindex"
                 and not r.get("limit")), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default="fastapi-docs,sec-10q,corpora,scifact")
    ap.add_argument("--backends", default=None, help="comma-separated; default: Settings().embedding_backend")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--embed-alone-sample", type=int, default=0,
                    help="time 'embedding alone' on this many random chunks, scaled to all (0: all chunks)")
    ap.add_argument("--json", type=Path, default=RESULTS / "ingest.json")
    ap.add_argument("--one", nargs=2, metavar=("CORPUS", "BACKEND"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        row = run_one(args.one[0], args.one[1], args.threads, args.profile, args.embed_alone_sample)
        emit(row)
        return

    from ctxqa.rag.config import Settings

    backends = (args.backends or Settings().embedding_backend).split(",")
    rows = []
    for corpus in args.corpora.split(","):
        for backend in backends:
            cmd = [sys.executable, __file__, "--one", corpus, backend]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.profile:
                cmd.append("--profile")
            if args.embed_alone_sample:
                cmd += ["--embed-alone-sample", str(args.embed_alone_sample)]
            row = run_child(cmd, f"{corpus} / {backend}")
            rows.append(row)
            t = row["timings"]
            print(f"   {row['files']} files, {row['pages']} pages, {row['chunks']} chunks in {row['wall_s']:.1f}s: "
                  f"{row['pages_per_s']:.1f} pages/s, {row['chunks_per_s']:.1f} chunks/s; extract {t['extract']:.1f}s "
                  f"chunk {t['chunk']:.1f}s embed {t['embed']:.1f}s store {t['store']:.1f}s index {t['index']:.1f}s; "
                  f"embedding alone {row['embed_alone_s']:.1f}s -> x{row['pipeline_over_embedding']:.2f} "
                  f"(CPU {row['cpu_s']:.0f}s / {row['embed_alone_cpu_s']:.0f}s -> "
                  f"x{row['pipeline_over_embedding_cpu']:.2f}); "
                  f"peak RSS {row['peak_rss_mb']} MB; vs LlamaIndex x{row['vs_llamaindex']:.2f}"
                  + (f" (here: x{row['vs_llamaindex_here']:.2f})" if "vs_llamaindex_here" in row else ""),
                  flush=True)

    print("\n| corpus | backend | files | pages | chunks | wall s | docs/s | pages/s | chunks/s | extract | chunk | "
          "embed | store+index | embed alone s | wall / embed alone | CPU s / embed alone CPU s | peak RSS MB | "
          "vs LlamaIndex |")
    print("| --- " * 18 + "|")
    for r in rows:
        t = r["timings"]
        print(f"| {r['corpus']} | {r['backend']} | {r['files']} | {r['pages']} | {r['chunks']} | {r['wall_s']:.1f} | "
              f"{r['docs_per_s']:.1f} | {r['pages_per_s']:.1f} | {r['chunks_per_s']:.1f} | {t['extract']:.1f} | "
              f"{t['chunk']:.1f} | {t['embed']:.1f} | {t['store'] + t['index']:.1f} | {r['embed_alone_s']:.1f} | "
              f"{r['pipeline_over_embedding']:.2f} | {r['cpu_s']:.0f} / {r['embed_alone_cpu_s']:.0f} = "
              f"{r['pipeline_over_embedding_cpu']:.2f} | {r['peak_rss_mb']} | x{r['vs_llamaindex']:.2f} "
              f"({r['llamaindex']}) |")
    here = [r for r in rows if "vs_llamaindex_here" in r]
    if here:
        print("\nAgainst LlamaIndex measured on this machine (bench/peer_llamaindex.sh):\n")
        print("| corpus | ctxqa wall s | LlamaIndex wall s | speed-up | word pieces embedded ctxqa / LlamaIndex | "
              "embedded word pieces/s ctxqa / LlamaIndex | ratio |")
        print("| --- " * 7 + "|")
        for r in here:
            li = r["llamaindex_here"]
            print(f"| {r['corpus']} | {r['wall_s']:.1f} | {li['wall_s']:.1f} | x{r['vs_llamaindex_here']:.2f} | "
                  f"{r['word_pieces_embedded']:,} / {li['word_pieces_embedded']:,} | "
                  f"{r['word_pieces_per_s']:,.0f} / {li['word_pieces_per_s']:,.0f} | "
                  f"x{r['word_pieces_per_s'] / li['word_pieces_per_s']:.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
