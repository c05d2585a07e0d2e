"""Calibrate the "nothing relevant was retrieved" threshold used by `ask` (Retriever.is_relevant).

    python bench/calibrate_abstention.py [--mode hybrid] [--k 5] [--keep 0.95]

Data: ClapNQ dev (../shared/data/eval/clapnq): 100 answerable + 100 unanswerable questions, each with the passage it
was annotated against. All 200 passages are indexed as one ctxqa collection (chunked by ctxqa's chunker, embedded
with the bundled MiniLM), then every question is searched as `ask` searches it. As a third group, 200 SciFact
claims (../shared/data/eval/scifact) are asked of the same collection: questions from another domain, which
retrieval should certainly reject.

ClapNQ's unanswerable questions are hard negatives for a retrieval score: their passage *is* on topic (it was
retrieved for them by a search engine), it just lacks the answer. A retrieval threshold can only catch "nothing on
topic"; deciding that an on-topic passage lacks the answer is the model's job (the context-obedient models answer
"I don't know" then). So the default is chosen to keep >= `--keep` of the answerable questions (losing an
answerable question is worse than letting the model decline), and the script reports how many unanswerable and
out-of-domain questions it stops, with the balanced-accuracy optimum for comparison.

Scores compared (each query-independent in scale, except the fused one, shown for contrast): best dense cosine of
the hits (used by ctxqa), best BM25, best fused (RRF) score. Results: bench/results/abstention.json + tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sqlalchemy import select  # noqa: E402

from ctxqa.context import Context  # noqa: E402
from ctxqa.rag.config import Settings  # noqa: E402
from ctxqa.rag.db import repo  # noqa: E402
from ctxqa.rag.db.models import Chunk, Collection, Document  # noqa: E402

SHARED = Path(os.environ.get("CTXQA_SHARED", ROOT.parent / "shared")) / "data" / "eval"
RESULTS = ROOT / "bench" / "results"
WORK = RESULTS / "clapnq"


def load() -> tuple[list[dict], list[dict], list[str]]:
    ans = [json.loads(x) for x in (SHARED / "clapnq" / "answerable.dev100.jsonl").open()]
    una = [json.loads(x) for x in (SHARED / "clapnq" / "unanswerable.dev100.jsonl").open()]
    sci = [json.loads(x)["text"] for x in (SHARED / "scifact" / "queries_train.jsonl").open()][:200]
    return ans, una, sci


def build(ctx: Context, records: list[dict]) -> None:
    from ctxqa.ingest.chunk import chunk
    from ctxqa.rag.types import LoadedDocument

    emb = ctx.embedder
    docs: list[tuple[str, str, str, list[Any]]] = []
    seen: set[str] = set()
    for r in records:
        for i, p in enumerate(r["passages"]):
            text = f"{p['title']}\n\n{p['text']}"
            if text in seen:
                continue
            seen.add(text)
            specs = chunk(LoadedDocument(text=text, media_type="text/plain"), emb.tokenizer, ctx.settings.chunk_size,
                          ctx.settings.chunk_overlap, max_tokens=emb.max_tokens)
            docs.append((f"{r['id']}-{i}", p["title"], text, specs))
    texts = [sp.text for _, _, _, specs in docs for sp in specs]
    t = time.perf_counter()
    vecs = emb.encode(texts)
    print(f"{len(docs)} passages, {len(texts)} chunks embedded in {time.perf_counter() - t:.0f}s", flush=True)
    with ctx.db.session() as s:
        coll = repo.create_collection(s, "clapnq", emb.name, emb.dim)
        i = 0
        for source, title, text, specs in docs:
            d = Document(collection_id=coll.id, source=source, title=title, sha256="0" * 64,
                         media_type="text/plain", size=len(text), meta={}, chunk_count=len(specs))
            s.add(d)
            s.flush()
            for sp in specs:
                s.add(Chunk(document_id=d.id, collection_id=coll.id, ordinal=sp.ordinal, text=sp.text,
                            char_start=sp.char_start, char_end=sp.char_end, token_count=sp.token_count, meta={},
                            heading_path=[], embedding=vecs[i].tobytes()))
                i += 1
        repo.bump_generation(s, coll.id)
    with ctx.db.session() as s:
        coll = s.scalar(select(Collection).where(Collection.name == "clapnq"))
    ctx.store.rebuild(coll)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count half."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def at_threshold(t: float, answerable: np.ndarray, negatives: np.ndarray) -> dict[str, float]:
    """Abstain when score < t. Abstention precision: abstained questions that are negatives; recall: negatives
    abstained on."""
    abst_pos = int((answerable < t).sum())
    abst_neg = int((negatives < t).sum())
    abstained = abst_pos + abst_neg
    return {"threshold": float(t), "answerable_kept": 1 - abst_pos / len(answerable),
            "abstain_precision": abst_neg / abstained if abstained else 1.0,
            "abstain_recall": abst_neg / len(negatives),
            "balanced_accuracy": 0.5 * (1 - abst_pos / len(answerable) + abst_neg / len(negatives))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="hybrid")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--keep", type=float, default=0.95, help="share of answerable questions the default keeps")
    args = ap.parse_args()
    if WORK.exists():
        shutil.rmtree(WORK)
    ctx = Context(Settings(data_dir=WORK))
    ans, una, sci = load()
    build(ctx, ans + una)
    r = ctx.retriever

    def scores(questions: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, list[float]] = {"dense": [], "lexical": [], "fused": []}
        for q in questions:
            hits = r.search(q, collection="clapnq", k=args.k, mode=args.mode).hits
            out["dense"].append(max((h.scores.get("dense", -1.0) for h in hits), default=-1.0))
            out["lexical"].append(max((h.scores.get("lexical", 0.0) for h in hits), default=0.0))
            out["fused"].append(max((h.score for h in hits), default=0.0))
        return {k: np.asarray(v) for k, v in out.items()}

    s_ans = scores([x["input"] for x in ans])
    s_una = scores([x["input"] for x in una])
    s_sci = scores(sci)
    report: dict[str, Any] = {"mode": args.mode, "k": args.k, "signals": {}}
    print(f"\n### Separation (AUC: answerable scores above the negatives), mode={args.mode}, k={args.k}\n")
    print("| signal | answerable mean | unanswerable mean | out-of-domain mean | AUC vs unanswerable | "
          "AUC vs out-of-domain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for sig in ("dense", "lexical", "fused"):
        a, u, o = s_ans[sig], s_una[sig], s_sci[sig]
        report["signals"][sig] = {"auc_unanswerable": auc(a, u), "auc_out_of_domain": auc(a, o),
                                  "mean": [float(a.mean()), float(u.mean()), float(o.mean())]}
        print(f"| best {sig} | {a.mean():.3f} | {u.mean():.3f} | {o.mean():.3f} | {auc(a, u):.3f} | "
              f"{auc(a, o):.3f} |")

    a, u, o = s_ans["dense"], s_una["dense"], s_sci["dense"]
    grid = np.round(np.arange(0.0, 0.9, 0.01), 2)
    best_bal = max(grid, key=lambda t: at_threshold(t, a, u)["balanced_accuracy"])
    keep_t = max(t for t in grid if at_threshold(t, a, u)["answerable_kept"] >= args.keep)
    keep99 = max(t for t in grid if at_threshold(t, a, u)["answerable_kept"] >= 0.99)
    rows = {"balanced-accuracy optimum (ClapNQ)": best_bal, f"keeps >= {args.keep:.0%} answerable (default)": keep_t,
            "keeps >= 99% answerable": keep99}
    report["thresholds"] = {}
    print("\n### Thresholds on the best dense cosine (abstain when below)\n")
    print("| rule | threshold | answerable kept | unanswerable: abstain precision | unanswerable: abstain recall | "
          "out-of-domain abstain recall |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, t in rows.items():
        m_u = at_threshold(t, a, u)
        m_o = at_threshold(t, a, o)
        report["thresholds"][name] = {"unanswerable": m_u, "out_of_domain": m_o}
        print(f"| {name} | {t:.2f} | {m_u['answerable_kept']:.2f} | {m_u['abstain_precision']:.2f} | "
              f"{m_u['abstain_recall']:.2f} | {m_o['abstain_recall']:.2f} |")
    report["default"] = float(keep_t)
    report["raw"] = {"answerable": {k: v.tolist() for k, v in s_ans.items()},
                     "unanswerable": {k: v.tolist() for k, v in s_una.items()},
                     "out_of_domain": {k: v.tolist() for k, v in s_sci.items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "abstention.json").write_text(json.dumps(report, indent=2))
    print(f"\nsuggested DEFAULT_ABSTAIN_THRESHOLD = {keep_t:.2f}")
    ctx.close()


if __name__ == "__main__":
    main()
