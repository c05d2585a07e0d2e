"""Retrieval quality of the embedding backends: BEIR SciFact nDCG@10, dense only.

    python bench/embed_quality.py [--variants torch,onnx,onnx-int8,openvino,openvino-int8]
                                  [--extra NAME=model.onnx ...] [--scifact DIR] [--limit-queries N]

Protocol (the same for every variant): each document is `title + "\\n\\n" + abstract`, cut by the project chunker
(ingest/chunk.py) into chunks of at most 254 word pieces (+[CLS]/[SEP] = the model's 256-token window, so no
text is truncated); every chunk is embedded, a flat inner-product faiss index holds them, a document scores the
max over its chunks, and the top 10 documents are scored against qrels/train.tsv with the standard BEIR/trec_eval
nDCG@10 (graded gains, log2 discount, ideal DCG from the judged documents). Queries are embedded by the same
variant. Embeddings are cached in bench/results/ (keyed by variant and the chunk texts' hash), so a re-run only
embeds what changed. Also reports, per variant, the cosine of each chunk vector to the torch one (mean/min).

`--extra NAME=path.onnx` adds an ONNX file (for example another quantisation recipe) run through the ONNX backend's
batching; the results JSON goes to bench/results/embed_quality.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = ROOT / "bench" / "results"
DEFAULT_SCIFACT = Path(os.environ.get("CTXQA_SHARED", ROOT.parent / "shared")) / "data" / "eval" / "scifact"
CHUNK_TOKENS = 254


def load_scifact(d: Path) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    corpus: dict[str, str] = {}
    with (d / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            corpus[str(r["_id"])] = f"{r.get('title', '').strip()}\n\n{r.get('text', '').strip()}".strip()
    queries: dict[str, str] = {}
    with (d / "queries_train.jsonl").open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            queries[str(r["_id"])] = r["text"]
    qrels: dict[str, dict[str, int]] = {}
    with (d / "qrels" / "train.tsv").open(encoding="utf-8") as f:
        next(f)
        for line in f:
            q, doc, score = line.rstrip("\n").split("\t")
            qrels.setdefault(q, {})[doc] = int(score)
    return corpus, queries, qrels


def chunk_corpus(corpus: dict[str, str], tokenizer) -> tuple[list[str], list[str]]:  # type: ignore[no-untyped-def]
    from ctxqa.ingest.chunk import chunk
    from ctxqa.rag.types import LoadedDocument

    texts: list[str] = []
    owners: list[str] = []
    for doc_id, text in corpus.items():
        specs = chunk(LoadedDocument(text=text, media_type="text/plain"), tokenizer, CHUNK_TOKENS, 32,
                      max_tokens=CHUNK_TOKENS + 2)
        for sp in specs or []:
            texts.append(sp.text)
            owners.append(doc_id)
    return texts, owners


def ndcg_at_k(ranked: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int = 10) -> float:
    """Mean over judged queries of trec_eval's ndcg_cut_k (gain = relevance grade, discount log2(rank + 1))."""
    scores = []
    for q, rel in qrels.items():
        got = ranked.get(q, [])[:k]
        dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(got))
        ideal = sorted((g for g in rel.values() if g > 0), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        scores.append(dcg / idcg if idcg > 0 else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def _hash(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def embed_cached(name: str, embedder, texts: list[str], tag: str) -> tuple[np.ndarray, float]:  # type: ignore[no-untyped-def]
    path = RESULTS / f"emb_{name}_{tag}_{_hash(texts)}.npy"
    if path.is_file():
        return np.load(path), float("nan")
    t = time.perf_counter()
    vecs = embedder.encode(texts)
    dt = time.perf_counter() - t
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs, dt


def search(doc_vecs: np.ndarray, owners: list[str], q_vecs: np.ndarray, qids: list[str], k: int = 10,
           depth: int = 200) -> dict[str, list[str]]:
    import faiss

    index = faiss.IndexFlatIP(doc_vecs.shape[1])
    index.add(np.ascontiguousarray(doc_vecs, dtype=np.float32))
    scores, ids = index.search(np.ascontiguousarray(q_vecs, dtype=np.float32), depth)
    out: dict[str, list[str]] = {}
    for qi, q in enumerate(qids):
        seen: list[str] = []
        for j in ids[qi]:  # chunk hits in descending score: the first hit of a document is its max
            if j < 0:
                break
            d = owners[j]
            if d not in seen:
                seen.append(d)
                if len(seen) == k:
                    break
        out[q] = seen
    return out


def make_embedder(variant: str, extra: dict[str, str], threads: int | None):  # type: ignore[no-untyped-def]
    from ctxqa.rag.embed.embedder import Embedder
    from ctxqa.rag.embed.onnx_runtime import OnnxEncoder

    if variant in extra:
        e = Embedder(backend="onnx", threads=threads)
        e._onnx = OnnxEncoder(Path(extra[variant]), threads=threads)
        return e
    e = Embedder(backend=variant, threads=threads)
    if e.backend != variant:
        raise SystemExit(f"variant {variant} fell back to {e.backend}")
    return e


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scifact", type=Path, default=DEFAULT_SCIFACT)
    ap.add_argument("--variants", default="torch,onnx,onnx-int8,openvino,openvino-int8")
    ap.add_argument("--extra", action="append", default=[], help="NAME=path.onnx")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--limit-queries", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "embed_quality.json")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from ctxqa.rag.config import DEFAULT_EMBEDDING_MODEL
    from ctxqa.rag.embed.embedder import resolve_embedding_model

    extra = dict(x.split("=", 1) for x in args.extra)
    variants = [v for v in args.variants.split(",") if v] + list(extra)
    corpus, queries, qrels = load_scifact(args.scifact)
    qrels = {q: r for q, r in qrels.items() if q in queries}
    if args.limit_queries:
        qrels = dict(list(qrels.items())[: args.limit_queries])
    qids = list(qrels)
    qtexts = [queries[q] for q in qids]
    tok = AutoTokenizer.from_pretrained(str(resolve_embedding_model(DEFAULT_EMBEDDING_MODEL)))
    t = time.perf_counter()
    texts, owners = chunk_corpus(corpus, tok)
    n_long = sum(1 for n in Counter(owners).values() if n > 1)
    print(f"SciFact: {len(corpus)} documents -> {len(texts)} chunks ({n_long} documents needed >1 chunk), "
          f"{len(qids)} judged queries; chunking {time.perf_counter() - t:.1f}s", flush=True)

    report: dict[str, dict] = {}
    ref_docs = ref_queries = None
    for v in variants:
        e = make_embedder(v, extra, args.threads)
        dv, dt = embed_cached(v, e, texts, "docs")
        qv, _ = embed_cached(v, e, qtexts, "queries")
        ranked = search(dv, owners, qv, qids)
        nd = ndcg_at_k(ranked, qrels)
        row: dict = {"ndcg@10": nd, "chunks": len(texts), "embed_s": dt,
                     "chunks_per_s": (len(texts) / dt) if dt == dt else None}
        if ref_docs is None:
            ref_docs, ref_queries = dv, qv
            ref_name = v
        else:
            # The same documents searched with the reference's query vectors: how much of the change is the
            # document side (queries may be embedded at full precision at no cost to ingestion speed).
            row[f"ndcg@10_{ref_name}_queries"] = ndcg_at_k(search(dv, owners, ref_queries, qids), qrels)
            qcos = (qv * ref_queries).sum(1)
            row.update({f"query_cos_to_{ref_name}_mean": float(qcos.mean()),
                        f"query_cos_to_{ref_name}_min": float(qcos.min())})
            cos = (dv * ref_docs).sum(1)
            row.update({f"cos_to_{ref_name}_mean": float(cos.mean()), f"cos_to_{ref_name}_min": float(cos.min()),
                        f"cos_to_{ref_name}_p1": float(np.percentile(cos, 1))})
        report[v] = row
        print(v, json.dumps(row), flush=True)
        del e

    base = report[variants[0]]["ndcg@10"]
    ref = variants[0]
    print(f"\n| variant | nDCG@10 | delta vs {ref} | nDCG@10 with {ref} queries | delta | chunk cosine to {ref} "
          f"mean / min | query cosine mean / min |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for v, r in report.items():
        rel = (r["ndcg@10"] - base) / base * 100
        if f"cos_to_{ref}_mean" in r:
            mixed = r[f"ndcg@10_{ref}_queries"]
            extra = (f"{mixed:.4f} | {(mixed - base) / base * 100:+.2f}% | {r[f'cos_to_{ref}_mean']:.4f} / "
                     f"{r[f'cos_to_{ref}_min']:.4f} | {r[f'query_cos_to_{ref}_mean']:.4f} / "
                     f"{r[f'query_cos_to_{ref}_min']:.4f}")
        else:
            extra = "- | - | - | -"
        print(f"| {v} | {r['ndcg@10']:.4f} | {rel:+.2f}% | {extra} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"variants": report, "queries": len(qids), "documents": len(corpus),
                                    "chunks": len(texts)}, indent=1))


if __name__ == "__main__":
    main()
