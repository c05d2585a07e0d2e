"""What the lexical (BM25) index pays per chunk to tokenize its window texts: one pass per document
(`Tokenizer.window_terms`) against tokenizing each chunk's window text on its own (what it replaced).

    python bench/lexical_terms.py [--corpora scifact,fastapi-docs] [--window 2] [--rounds 3]

Documents are loaded and chunked as ingestion does (Settings() chunk size and overlap, the bundled MiniLM
tokenizer); chunking is not timed. Both ways must give the same term lists (checked). Prints ms per chunk and
the speed-up; each chunk's lexical text holds its window (2 neighbours each side) plus the chunk again, so the
per-window way tokenizes ~6x the document's text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = Path(os.environ.get("CTXQA_SHARED", ROOT.parent / "shared")) / "data"


def documents(name: str) -> list:  # type: ignore[type-arg]
    from ctxqa.ingest.loaders import load
    from ctxqa.rag.types import LoadedDocument

    if name == "scifact":
        docs = []
        with open(SHARED / "eval" / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                docs.append(LoadedDocument(text=f"{row['title']}\n{row['text']}", media_type="text/plain",
                                           title=row["title"]))
        return docs
    root = SHARED / "corpora" / name
    return [load(p) for p in sorted(root.rglob("*")) if p.suffix.lower() in (".md", ".pdf", ".html", ".txt")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default="scifact,fastapi-docs")
    ap.add_argument("--window", type=int, default=None, help="default: Settings().lexical_window")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from ctxqa.ingest.chunk import chunk
    from ctxqa.rag.config import Settings
    from ctxqa.rag.embed.embedder import resolve_embedding_model
    from ctxqa.rag.index.chunk_text import lexical_texts
    from ctxqa.rag.index.lexical import Tokenizer

    settings = Settings()
    window = settings.lexical_window if args.window is None else args.window
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_embedding_model(settings.embedding_model)))
    tok = Tokenizer()
    for name in args.corpora.split(","):
        per_doc = []
        for doc in documents(name):
            specs = chunk(doc, tokenizer, settings.chunk_size, settings.chunk_overlap, max_tokens=256)
            per_doc.append(([(sp.text, sp.char_start, sp.char_end) for sp in specs], doc.title,
                            [sp.heading_path for sp in specs]))
        n_chunks = sum(len(c) for c, _t, _h in per_doc)
        best = {"one pass": float("inf"), "per window": float("inf")}
        for _ in range(args.rounds):
            t = time.perf_counter()
            fast = [tok.window_terms(c, window, title, heads) for c, title, heads in per_doc]
            best["one pass"] = min(best["one pass"], time.perf_counter() - t)
            t = time.perf_counter()
            slow = [[tok(t) for t in lexical_texts(c, window, title, heads)] for c, title, heads in per_doc]
            best["per window"] = min(best["per window"], time.perf_counter() - t)
            if fast != slow:
                raise SystemExit(f"{name}: the one-pass terms differ from the per-window terms")
        print(f"{name}: {len(per_doc)} documents, {n_chunks} chunks, window {window}: "
              f"one pass {best['one pass']:.2f} s ({1000 * best['one pass'] / n_chunks:.3f} ms/chunk), "
              f"per window {best['per window']:.2f} s ({1000 * best['per window'] / n_chunks:.3f} ms/chunk): "
              f"x{best['per window'] / best['one pass']:.1f}", flush=True)


if __name__ == "__main__":
    main()
