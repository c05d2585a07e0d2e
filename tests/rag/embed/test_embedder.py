"""The embedding backends: ONNX (fp32, int8) and OpenVINO against the torch reference, batching, windows, export
cache. The "auto" choice: tests/rag/embed/test_choose.py.

The ONNX model is exported once per test session into a temporary cache (the real export path: torch.onnx, the
ONNX Runtime optimiser, the int8 recipe, the probe check; fixtures in conftest.py), so these tests also prove a
fresh machine can build it offline. Bars are what the product promises on any CPU: fp32-exact graphs within
cosine 0.9999 of torch, bf16 within 0.998, int8 within `choose.MIN_COSINE` (0.99) per vector and the same ranking
on a fixed set, not figures measured on one processor.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest

from ctxqa.rag.config import Settings  # noqa: E402
from ctxqa.rag.embed import onnx_runtime as onnx_embed  # noqa: E402
from ctxqa.rag.embed.choose import MIN_COSINE  # noqa: E402
from ctxqa.rag.embed.embedder import Embedder  # noqa: E402
from tests.rag.embed.conftest import TEXTS  # noqa: E402


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1)


def test_onnx_fp32_matches_torch(embedder: Embedder, onnx_fp32: Embedder, real_texts: list[str]) -> None:
    ref = embedder.encode(real_texts)
    got = onnx_fp32.encode(real_texts)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert _cos(got, ref).min() > 0.9999


def _ranking_agrees(docs: np.ndarray, ref_docs: np.ndarray, queries: np.ndarray, ref_queries: np.ndarray,
                    k: int = 5) -> float:
    """Mean overlap of each query's top-k documents with the reference's."""
    top = np.argsort(-(queries @ docs.T), axis=1)[:, :k]
    ref = np.argsort(-(ref_queries @ ref_docs.T), axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top, ref)]))


RANK_QUERIES = ["How do I declare a path parameter?", "What were net sales in the quarter?",
                "dependency injection", "how to run the tests", "cash and marketable securities",
                "risk factors", "deploy with Docker", "request body validation"]


def test_onnx_int8_close_to_torch(embedder: Embedder, onnx_int8: Embedder, real_texts: list[str]) -> None:
    """The int8 recipe (rag/embed/onnx_int8.py, the one for this CPU's int8 kernels) keeps every real chunk within
    the product's bar of fp32 and the same top documents for real queries; and it really is int8."""
    assert len(real_texts) > onnx_int8.small_call_texts  # a bulk call: the int8 graph
    ref = embedder.encode(real_texts)
    got = onnx_int8.encode(real_texts)
    cos = _cos(got, ref)
    assert cos.min() >= MIN_COSINE
    assert _ranking_agrees(got, ref, onnx_int8.encode(RANK_QUERIES), embedder.encode(RANK_QUERIES)) >= 0.9
    long = [t for t in real_texts if onnx_int8.count_tokens(t) > onnx_int8.full_precision_tokens]
    assert len(long) > 100 and _cos(onnx_int8.encode(long), embedder.encode(long)).max() < 0.99999


def test_int8_small_calls_run_at_full_precision(embedder: Embedder, onnx_fp32: Embedder,
                                                onnx_int8: Embedder, real_texts: list[str]) -> None:
    """Queries (and any call of at most `small_call_texts` texts) use the fp32 graph: the query side of the
    search is exact, whatever the documents were embedded with. So do short texts inside a bulk call; the rest of
    a bulk call runs int8, within the product's bar of fp32."""
    queries = ["ok", "What is FastAPI?", "net sales growth in the third quarter"]
    for q in queries:
        assert float(onnx_int8.encode_query(q) @ embedder.encode_query(q)) > 0.9999
    small = onnx_int8.encode(queries)
    assert np.array_equal(small, onnx_fp32.encode(queries))
    long = [t for t in real_texts if onnx_int8.count_tokens(t) > onnx_int8.full_precision_tokens][:20]
    assert all(onnx_int8.count_tokens(q) <= onnx_int8.full_precision_tokens for q in queries)
    bulk = onnx_int8.encode(queries + long)
    assert _cos(bulk[:3], small).min() > 0.99999  # short texts: the fp32 graph, even in a bulk call
    assert not np.array_equal(bulk[3:], onnx_fp32.encode(long))  # the rest: the int8 graph...
    assert _cos(bulk[3:], embedder.encode(long)).min() >= MIN_COSINE  # ...within the bar


def test_openvino_close_to_torch(embedder: Embedder, openvino: Embedder, real_texts: list[str]) -> None:
    """bf16 (where the CPU has it) keeps ~3 significant digits per activation: vectors stay far closer to fp32
    than int8's; f32 elsewhere is exact to rounding."""
    from ctxqa.rag.embed.openvino_runtime import bf16_capable

    ref = embedder.encode(real_texts)
    cos = _cos(openvino.encode(real_texts), ref)
    assert openvino._onnx.precision == ("bf16" if bf16_capable() else "f32")
    assert cos.min() > (0.998 if openvino._onnx.precision == "bf16" else 0.9999)
    for q in ["ok", "What is FastAPI?"]:  # queries run the same graph, compiled for latency
        assert float(openvino.encode_query(q) @ embedder.encode_query(q)) > 0.998


def test_openvino_bulk_runs_a_batch_per_stream(embedder: Embedder, openvino: Embedder, real_texts: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Bulk calls go to the throughput-compiled model, a batch in flight per stream, widths padded to 16; each
    vector lands in its own text's row whatever order the streams finish in; queries use the latency model,
    which a bulk call does not hold."""
    bulk, small = openvino._onnx, openvino._onnx_fp32
    assert (bulk.mode, small.mode, small.streams) == ("throughput", "latency", 1)
    assert bulk.streams == int(bulk.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    if (os.cpu_count() or 1) >= 2:
        assert bulk.streams >= 2
    calls: list[list[tuple[int, int]]] = []
    real_many = bulk.embed_many

    def spy(feeds):  # type: ignore[no-untyped-def]
        feeds = list(feeds)
        calls.append([ids.shape for ids, _ in feeds])
        return real_many(feeds)

    monkeypatch.setattr(bulk, "embed_many", spy)
    texts = real_texts + [t * (1 + i % 5) for i, t in enumerate(TEXTS)]  # many lengths: many batches
    got = openvino.encode(texts)
    assert len(calls) == 1 and len(calls[0]) > 2 * bulk.streams  # one call, many batches
    assert len(bulk._queue) == bulk.streams  # a request per stream
    assert all(w % bulk.align == 0 for _, w in calls[0])
    assert _cos(got, embedder.encode(texts)).min() > 0.998  # a vector in another text's row would fail this
    # The padding to 16 columns is masked out: one text alone gives the same vector padded or not.
    ids = np.array([openvino._batch_tokenizer.encode("net sales increased 8%").ids])
    mask = np.ones_like(ids)
    wide, wmask = np.zeros((1, 16), dtype=np.int64), np.zeros((1, 16), dtype=np.int64)
    wide[0, :ids.shape[1]], wmask[0, :ids.shape[1]] = ids[0], 1
    assert ids.shape[1] < 16
    assert _cos(bulk.embed(ids, mask), bulk.embed(wide, wmask))[0] > 0.9999
    openvino.encode(["What is FastAPI?", "ok"])  # a small call: the latency model, not the bulk one
    assert len(calls) == 1
    # ... which an ingest's bulk call does not hold: a query answers while the bulk model is busy.
    import threading

    answered: list[np.ndarray] = []
    with bulk.lock:
        t = threading.Thread(target=lambda: answered.append(openvino.encode_query("What is FastAPI?")))
        t.start()
        t.join(timeout=120)
        assert answered, "a query waited for the bulk model's lock"


def test_batch_token_budget_defaults_by_runtime(onnx_cache: Path, openvino: Embedder, onnx_int8: Embedder) -> None:
    """OpenVINO's streams take small batches (2k padded tokens), ONNX Runtime big ones (8k); a setting wins."""
    from ctxqa.rag.embed.embedder import DEFAULT_BATCH_TOKENS

    assert Embedder(backend="openvino", cache_dir=onnx_cache).batch_tokens == DEFAULT_BATCH_TOKENS["openvino"] == 2048
    assert Embedder(backend="onnx-int8", cache_dir=onnx_cache).batch_tokens == 8192
    assert Embedder(backend="openvino", cache_dir=onnx_cache, batch_tokens=1000).batch_tokens == 1000


def test_openvino_verdict_is_memoised(onnx_cache: Path, openvino: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from ctxqa.rag.embed import openvino_runtime as openvino_embed

    memo = json.loads(next(onnx_cache.glob("onnx/*/openvino-verified.json")).read_text())
    assert [k for k in memo if k.endswith(f"|{openvino._onnx.precision}")]
    assert min(v for k, v in memo.items() if "|int8" not in k) > 0.998

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("re-verified although the verdict is memoised")

    monkeypatch.setattr(openvino_embed, "verify", boom)
    again = Embedder(backend="openvino", cache_dir=onnx_cache)
    assert again.backend == "openvino"
    assert np.array_equal(again.encode(TEXTS), openvino.encode(TEXTS))


def test_a_bad_openvino_graph_falls_back_to_onnx_int8(tmp_path: Path, onnx_cache: Path, openvino: Embedder,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A compiled graph that does not reproduce ONNX Runtime's fp32 vectors (a plugin bug) is refused: the
    embedder warns and runs ONNX Runtime int8, and nothing is memoised as verified."""
    import shutil

    from ctxqa.rag.embed import openvino_runtime as openvino_embed

    cache = tmp_path / "cache"
    shutil.copytree(onnx_cache, cache)
    for memo in cache.glob("onnx/*/openvino-verified.json"):
        memo.unlink()
    monkeypatch.setitem(openvino_embed.MIN_COSINE, openvino._onnx.precision, 1.5)
    with caplog.at_level(logging.WARNING, logger="ctxqa.rag.embed.embedder"):
        e = Embedder(backend="openvino", cache_dir=cache)
    assert e.backend == "onnx-int8" and e.requested_backend == "openvino"
    assert "does not reproduce the fp32 vectors" in caplog.text
    assert not list(cache.glob("onnx/*/openvino-verified.json"))


def test_openvino_int8_close_to_torch(embedder: Embedder, openvino_int8: Embedder, real_texts: list[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Static int8 (NNCF, calibrated on the shipped texts, first FFN output in floating point). `auto` runs it only
    where its vectors pass the fidelity check (test_choose.py); here: it is really int8, it is deterministic per
    text whatever the batch, and it ranks real queries as fp32 does."""
    assert len(real_texts) > openvino_int8.small_call_texts  # a bulk call: the int8 graph
    assert openvino_int8._onnx.precision == "int8"
    got = openvino_int8.encode(real_texts)
    ref = embedder.encode(real_texts)
    long = [t for t in real_texts if openvino_int8.count_tokens(t) > openvino_int8.full_precision_tokens]
    assert len(long) > 100 and _cos(openvino_int8.encode(long), embedder.encode(long)).max() < 0.99999  # int8
    assert _ranking_agrees(got, ref, openvino_int8.encode(RANK_QUERIES), embedder.encode(RANK_QUERIES)) >= 0.9
    # A bulk call of short texts on the int8 graph (the full-precision route for short texts turned off): each
    # text's vector in the batch is that of the text alone. On the AMX Xeon, batches padded to a multiple of 16
    # broke this (cosine 0.74 for the longest row; SciFact queries fell to 0.73): int8 batches get no alignment
    # columns.
    assert openvino_int8._onnx.align == 1
    monkeypatch.setattr(openvino_int8, "full_precision_tokens", 0)
    short = ["What is FastAPI?", "net sales growth", "cerebral white matter", "path parameters",
             "Intel revenue for the quarter", "how to install", "dependency injection in FastAPI", "BM25",
             "quarterly operating income of Amazon Web Services", "a b c d e f g h i j k l m n o p q r s t u v w"]
    together = openvino_int8.encode(short)
    tk = openvino_int8._batch_tokenizer
    alone = np.stack([openvino_int8._onnx.embed(*openvino_int8._pad([tk.encode(t).ids]))[0] for t in short])
    alone /= np.linalg.norm(alone, axis=1, keepdims=True)
    assert _cos(together, alone).min() > 0.999


def test_openvino_int8_queries_run_the_full_precision_graph(embedder: Embedder, openvino: Embedder,
                                                            openvino_int8: Embedder, real_texts: list[str]) -> None:
    queries = ["ok", "What is FastAPI?", "net sales growth in the third quarter"]
    for q in queries:
        assert float(openvino_int8.encode_query(q) @ embedder.encode_query(q)) > 0.998
    small = openvino_int8.encode(queries)
    assert _cos(small, openvino.encode(queries)).min() > 0.99999  # the same bf16/f32 graph as "openvino"
    long = [t for t in real_texts if openvino_int8.count_tokens(t) > openvino_int8.full_precision_tokens][:20]
    bulk = openvino_int8.encode(queries + long)
    assert _cos(bulk[:3], small).min() > 0.99999  # short texts in a bulk call: that graph too
    assert _cos(bulk[3:], openvino.encode(long)).max() < 0.99999  # the rest: int8


def test_openvino_int8_model_is_cached_and_reused(onnx_cache: Path, openvino_int8: Embedder,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import nncf

    from ctxqa.rag.embed import openvino_runtime as openvino_embed
    from ctxqa.rag.embed import samples

    quantised = list(onnx_cache.glob("onnx/*/openvino-int8-*/model.xml"))
    assert len(quantised) == 1 and quantised[0].with_suffix(".bin").is_file()
    assert not list(onnx_cache.glob("onnx/*/.openvino-int8-*"))  # no temporary directory left behind

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("quantised again although the cache holds the int8 model")

    monkeypatch.setattr(nncf, "quantize", boom)
    monkeypatch.setattr(openvino_embed, "verify", boom)
    monkeypatch.setattr(samples, "calibration_texts", boom)  # cached: no calibration work at start-up
    again = Embedder(backend="openvino-int8", cache_dir=onnx_cache, batch_tokens=2048)
    assert again.backend == "openvino-int8"
    assert np.array_equal(again.encode(TEXTS * 2), openvino_int8.encode(TEXTS * 2))


def test_openvino_int8_bad_quantisation_is_refused_and_quiet(tmp_path: Path, onnx_cache: Path,
                                                             openvino_int8: Embedder,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capfd: pytest.CaptureFixture[str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Quantising runs again from the fp32 export in a cache without the int8 model; it prints nothing on stdout
    (the CLI's --json output goes there). A quantised graph that fails the check against fp32 is refused, deleted
    (no later process picks it up), and the embedder runs ONNX Runtime int8."""
    import shutil

    from ctxqa.rag.embed import openvino_runtime as openvino_embed

    cache = tmp_path / "cache"
    shutil.copytree(onnx_cache, cache)
    for d in cache.glob("onnx/*/openvino-int8-*"):
        shutil.rmtree(d)
    for memo in cache.glob("onnx/*/openvino-verified.json"):
        memo.unlink()
    monkeypatch.setitem(openvino_embed.MIN_COSINE, "int8", 1.5)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="ctxqa.rag.embed.embedder"):
        e = Embedder(backend="openvino-int8", cache_dir=cache)
    assert capfd.readouterr().out == ""
    assert e.backend == "onnx-int8" and e.requested_backend == "openvino-int8"
    assert "does not reproduce the fp32 vectors" in caplog.text
    assert not list(cache.glob("onnx/*/openvino-int8-*")) and not list(cache.glob("onnx/*/.openvino-int8-*"))
    memo = next(cache.glob("onnx/*/openvino-verified.json"), None)
    assert memo is None or not [k for k in json_keys(memo) if "|int8" in k]


def json_keys(path: Path) -> list[str]:
    import json

    return list(json.loads(path.read_text()))


def test_calibration_texts_are_shipped_and_varied() -> None:
    from ctxqa.rag.embed.samples import calibration_kinds, calibration_texts, check_set

    texts = calibration_texts()
    assert len(texts) >= 150 and all(t.strip() for t in texts)
    kinds = calibration_kinds()
    assert {"code", "query", "finance", "science"} <= kinds and len(kinds) >= 10
    # The fidelity check `auto` runs is held out from calibration.
    check = check_set()
    assert not set(check.passages) & set(texts) and not set(check.queries) & set(texts)


@pytest.mark.parametrize("which", ["onnx_fp32", "onnx_int8", "openvino", "openvino_int8"])
def test_shape_dtype_normalisation(which: str, request: pytest.FixtureRequest) -> None:
    e: Embedder = request.getfixturevalue(which)
    v = e.encode(TEXTS)
    assert v.shape == (len(TEXTS), e.dim) == (len(TEXTS), 384)
    assert v.dtype == np.float32 and v.flags["C_CONTIGUOUS"]
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert e.encode([]).shape == (0, e.dim)
    q = e.encode_query(TEXTS[0])
    assert q.shape == (e.dim,) and abs(float(np.linalg.norm(q)) - 1) < 1e-5
    # Different texts, different vectors: the pooling is not degenerate.
    assert _cos(v[:1], v[1:2])[0] < 0.9


@pytest.mark.parametrize("which", ["onnx_fp32", "onnx_int8", "openvino", "openvino_int8"])
def test_order_does_not_change_vectors(which: str, request: pytest.FixtureRequest, real_texts: list[str]) -> None:
    """Batches depend on the set of texts, not their order: a permuted input gives bit-identical vectors (int8
    activation scales are per batch, so this only holds because the batching is canonical)."""
    e: Embedder = request.getfixturevalue(which)
    texts = real_texts[:60] + [real_texts[0], "ok"]  # duplicates and a tie in length
    perm = list(range(len(texts)))
    random.Random(1).shuffle(perm)
    a = e.encode(texts)
    b = e.encode([texts[i] for i in perm])
    assert np.array_equal(a[perm], b)
    assert len(e.batches([len(t) for t in texts])) > 1  # the budget really split it into several batches


def test_batches_respect_token_budget_and_cap(onnx_int8: Embedder) -> None:
    rng = random.Random(2)
    lengths = [rng.randint(3, 256) for _ in range(500)] + [5000]
    keys = [f"t{i}" for i in range(len(lengths))]
    batches = onnx_int8.batches(lengths, keys, batch_size=50)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    widths = [lengths[b[-1]] for b in batches]
    assert widths == sorted(widths)  # length-bucketed: ascending padded width
    for b in batches:
        assert len(b) <= 50
        assert max(lengths[i] for i in b) == lengths[b[-1]]
        assert len(b) == 1 or len(b) * lengths[b[-1]] <= onnx_int8.batch_tokens
    assert [5000 in [lengths[i] for i in b] and len(b) == 1 for b in batches].count(True) == 1
    # Short texts share big batches, long ones small ones.
    assert len(batches[0]) > len(batches[-2])


def test_long_text_is_counted_not_silently_truncated(embedder: Embedder, onnx_int8: Embedder) -> None:
    long = " ".join(f"word{i} is here." for i in range(400))
    n = onnx_int8.count_tokens(long)
    assert n == embedder.count_tokens(long) > onnx_int8.max_tokens == 256
    onnx_int8.encode([long, "short"])  # the batch tokenizer truncates at the window...
    assert onnx_int8.count_tokens(long) == n  # ...but the shared tokenizer still reports the full length
    assert len(onnx_int8.tokenizer(long)["input_ids"]) == n
    # The pipeline's chunker, given this embedder, never produces a chunk beyond the window.
    from ctxqa.ingest.chunk import chunk
    from ctxqa.rag.types import LoadedDocument

    specs = chunk(LoadedDocument(text=long, media_type="text/plain"), onnx_int8.tokenizer, 254, 32,
                  max_tokens=onnx_int8.max_tokens)
    assert len(specs) > 1
    assert all(onnx_int8.count_tokens(s.text) <= onnx_int8.max_tokens for s in specs)
    # Beyond the window both backends embed the same first 256 word pieces (as sentence-transformers does).
    cos = _cos(onnx_int8.encode([long]), embedder.encode([long]))[0]
    assert cos >= MIN_COSINE


def test_same_name_and_space_across_backends(embedder: Embedder, onnx_fp32: Embedder, onnx_int8: Embedder) -> None:
    assert embedder.name == onnx_fp32.name == onnx_int8.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.dim == onnx_fp32.dim == onnx_int8.dim
    assert embedder.max_tokens == onnx_fp32.max_tokens == onnx_int8.max_tokens
    # Interchangeable: a query embedded by one backend finds the right text among vectors of another.
    docs = embedder.encode(TEXTS[:4])
    for e in (onnx_fp32, onnx_int8):
        q = e.encode_query("What web framework uses Python type hints?")
        assert int(np.argmax(docs @ q)) == 0


def test_export_is_cached_and_reused(onnx_cache: Path, onnx_int8: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctxqa.rag.embed.onnx_int8 import recipe_for_this_cpu

    files = sorted(p.name for p in onnx_cache.glob("onnx/*/*.onnx"))
    assert files == ["model.fp32.onnx", f"model.{recipe_for_this_cpu().tag}.onnx"]

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("re-exported although the cache holds the model")

    monkeypatch.setattr(onnx_embed, "_export_fp32", boom)
    again = Embedder(backend="onnx-int8", cache_dir=onnx_cache, batch_tokens=2048)
    assert again.backend == "onnx-int8"
    assert np.array_equal(again.encode(TEXTS), onnx_int8.encode(TEXTS))


def test_a_bad_export_is_refused_and_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """The probe check compares the exported graph with torch; an export that does not reproduce the vectors is
    never published, and the embedder falls back to torch (same vectors, slower)."""
    monkeypatch.setitem(onnx_embed.MIN_COSINE, "fp32", 1.5)  # no graph can pass: simulates a broken export
    with caplog.at_level(logging.WARNING, logger="ctxqa.rag.embed.embedder"):
        e = Embedder(backend="onnx", cache_dir=tmp_path)
    assert e.backend == "torch" and e.requested_backend == "onnx"
    assert "does not reproduce the torch vectors" in caplog.text
    assert not list(tmp_path.glob("onnx/*/*.onnx"))
    assert e.encode(["x"]).shape == (1, 384)


def test_unsupported_model_falls_back_to_torch(tmp_path: Path, embedder: Embedder,
                                               caplog: pytest.LogCaptureFixture) -> None:
    import json
    import shutil

    model = tmp_path / "maxpool-minilm"
    shutil.copytree(embedder.path, model)
    cfg = json.loads((model / "1_Pooling" / "config.json").read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    (model / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING, logger="ctxqa.rag.embed.embedder"):
        e = Embedder(str(model), backend="onnx-int8", cache_dir=tmp_path / "cache")
    assert e.backend == "torch"
    assert "not supported by the ONNX backend" in caplog.text


def test_settings_select_the_backend(embedder: Embedder, onnx_cache: Path, onnx_int8: Embedder) -> None:
    s = Settings(embedding_backend="onnx-int8", embedding_cache_dir=onnx_cache, embedding_batch_tokens=1234,
                 embedding_threads=1)
    e = Embedder.from_settings(s)
    assert (e.backend, e.batch_tokens, e.threads) == ("onnx-int8", 1234, 1)
    assert _cos(e.encode(TEXTS), onnx_int8.encode(TEXTS)).min() > 0.9999  # a small call: fp32 either way
    ref = embedder.encode(TEXTS * 3)
    assert _cos(e.encode(TEXTS * 3), ref).min() >= MIN_COSINE  # a bulk call, other batches: within the bar
    with pytest.raises(Exception):
        Settings(embedding_backend="tensorflow")
