"""faiss vector index: exact ids after removals (all types), filtered search, persistence, size-based choice."""

from __future__ import annotations

import numpy as np
import pytest

from ctxqa.rag.index.vector import IndexParams, VectorIndex, choose_index_type


def _data(n: int = 3000, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.arange(n, dtype=np.int64) + 1000, x


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_removal_keeps_the_id_mapping_exact(kind: str) -> None:
    # Regression: IVF wrapped in IndexIDMap2 returned the wrong chunk ids after remove_ids.
    ids, x = _data()
    idx = VectorIndex.build(16, kind, ids, x, IndexParams(ivf_nprobe=10_000, hnsw_ef_search=256))
    assert idx.remove(ids[:100]) == 100
    assert idx.ntotal == 2900
    _, found = idx.search(x[500:520], 1)
    assert found.ravel().tolist() == ids[500:520].tolist()
    _, found = idx.search(x[:50], 10)
    assert not np.isin(found, ids[:100]).any()  # deleted ids are never returned
    assert sorted(idx.ids().tolist()) == ids[100:].tolist()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_filtered_search_returns_k_from_the_allowed_set(kind: str) -> None:
    ids, x = _data()
    idx = VectorIndex.build(16, kind, ids, x)
    allowed = ids[::7]
    scores, found = idx.search(x[3:4], 10, allowed_ids=allowed)
    assert (found >= 0).sum() == 10
    assert np.isin(found, allowed).all()
    exact = np.argsort(-(x[::7] @ x[3]))[:10]
    assert found[0].tolist() == allowed[exact].tolist()  # small allowed sets are scored exactly
    _, found = idx.search(x[3:4], 5, allowed_ids=np.array([ids[1], 999_999]))
    assert found[0].tolist() == [ids[1], -1, -1, -1, -1]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_readd_replaces_and_get_vectors(kind: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ids, x = _data(2000)
    idx = VectorIndex.build(16, kind, ids, x)
    idx.remove([ids[0]])
    idx.add([ids[5]], x[0:1])  # id 5 now holds vector 0 (an update in place)
    assert idx.ntotal == 1999
    found, vecs = idx.get_vectors([ids[5], ids[0], ids[7], 123])
    assert found.tolist() == [ids[5], ids[7]]
    np.testing.assert_allclose(vecs[0], x[0], atol=1e-6)
    path = tmp_path / "c.faiss"
    idx.save(path, 4)
    loaded = VectorIndex.load(path)
    assert loaded is not None and loaded.generation == 4 and loaded.ntotal == 1999
    _, found = loaded.search(x[0:1], 1)
    assert found[0, 0] == ids[5]


def test_hnsw_tombstones_compact() -> None:
    ids, x = _data(1000)
    idx = VectorIndex.build(16, "hnsw", ids, x)
    idx.remove(ids[:50])
    assert idx.tombstones and idx.ntotal == 950
    idx.remove(ids[50:300])  # past 20 %: the graph is rebuilt without them
    assert not idx.tombstones and idx.ntotal == 700
    _, found = idx.search(x[:300], 5)
    assert not np.isin(found, ids[:300]).any()


def test_choose_index_type_and_ivf_retrain() -> None:
    from ctxqa.rag.index.vector import ivf_needs_retrain

    assert choose_index_type("auto", 10_000, 200_000) == "flat"
    assert choose_index_type("auto", 500_000, 200_000) == "ivf"
    assert choose_index_type("auto", 500, 100) == "flat"  # too few to train IVF
    assert choose_index_type("ivf", 10, 200_000) == "ivf"
    assert choose_index_type("hnsw", 10, 200_000) == "hnsw"
    ids, x = _data(2000)
    idx = VectorIndex.build(16, "ivf", ids[:1000], x[:1000])  # 25 lists
    assert not ivf_needs_retrain(idx)
    idx.add(ids[1000:], x[1000:])  # 2000 vectors would want 51 lists: retrain
    assert ivf_needs_retrain(idx)
    assert not ivf_needs_retrain(VectorIndex.build(16, "flat", ids, x))
