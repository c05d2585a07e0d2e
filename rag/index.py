"""faiss vector index per collection: vector ids are chunk ids.

The SQL database is the source of truth; an index file is a derived cache stamped with the collection
`generation` it was built at. Any mismatch (a crash between the database commit and the index write, an
ingest by another process) is detected on load and repaired by rebuilding from the stored vectors.

Index types (inner product on normalised vectors = cosine):
- flat: exact; `IndexIDMap2(IndexFlatIP)`; remove_ids is exact.
- hnsw: `IndexIDMap2(IndexHNSWFlat)`; HNSW cannot delete, so removed ids become tombstones excluded through an
  IDSelector at search time (never returned) and the graph is rebuilt once tombstones pass 20 %.
- ivf: `IndexIDMap2(IndexIVFFlat)` trained on the data; supports exact removal.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

INDEX_TYPES = ("flat", "hnsw", "ivf")
TOMBSTONE_REBUILD_FRACTION = 0.2


@dataclass
class IndexParams:
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 32


def choose_index_type(requested: str, n_vectors: int, auto_threshold: int) -> str:
    """'auto' keeps exact search while it is fast enough and switches to HNSW for large collections."""
    if requested != "auto":
        return requested
    return "hnsw" if n_vectors >= auto_threshold else "flat"


def _ivf_nlist(n: int) -> int:
    # ~4*sqrt(n) lists, the faiss guideline, with at least 39 training points per list.
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39 or 1))


def _fsync_write(path: Path, data: bytes) -> None:
    """Write atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class VectorIndex:
    """A faiss index of (chunk id, vector) pairs for one collection."""

    def __init__(self, dim: int, index_type: str = "flat", params: IndexParams | None = None) -> None:
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index type must be one of {INDEX_TYPES}, got {index_type!r}")
        self.dim = dim
        self.index_type = index_type
        self.params = params or IndexParams()
        self.generation = 0
        self.tombstones: set[int] = set()
        self._index: faiss.IndexIDMap2 | None = None
        self._lock = threading.RLock()
        if index_type != "ivf":  # IVF needs training data: created on the first add
            self._index = faiss.IndexIDMap2(self._new_base(0, None))

    # -- construction --------------------------------------------------------------------------------------
    def _new_base(self, n: int, train: np.ndarray | None) -> faiss.Index:
        if self.index_type == "flat":
            return faiss.IndexFlatIP(self.dim)
        if self.index_type == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = self.params.hnsw_ef_construction
            base.hnsw.efSearch = self.params.hnsw_ef_search
            return base
        quantizer = faiss.IndexFlatIP(self.dim)
        base = faiss.IndexIVFFlat(quantizer, self.dim, _ivf_nlist(n), faiss.METRIC_INNER_PRODUCT)
        assert train is not None
        base.train(train)
        base.nprobe = self.params.ivf_nprobe
        return base

    @classmethod
    def build(cls, dim: int, index_type: str, ids: np.ndarray, vecs: np.ndarray,
              params: IndexParams | None = None) -> "VectorIndex":
        idx = cls(dim, index_type, params)
        idx.add(ids, vecs)
        return idx

    # -- mutation ------------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray | Iterable[int], vecs: np.ndarray) -> None:
        ids = np.ascontiguousarray(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids,
                                              dtype=np.int64))
        vecs = np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1, self.dim)
        if len(ids) != len(vecs):
            raise ValueError(f"{len(ids)} ids for {len(vecs)} vectors")
        if not len(ids):
            return
        with self._lock:
            if self._index is None:  # IVF: train on the first batch (reindex passes the whole collection)
                self._index = faiss.IndexIDMap2(self._new_base(len(vecs), vecs))
            revived = self.tombstones.intersection(ids.tolist())
            if revived:  # HNSW: an id re-added after deletion must not be hidden, nor appear twice
                self._compact(drop=revived)
            self._index.add_with_ids(vecs, ids)

    def remove(self, ids: np.ndarray | Iterable[int]) -> int:
        ids_arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if not len(ids_arr) or self._index is None:
            return 0
        with self._lock:
            if self.index_type == "hnsw":
                present = [i for i in ids_arr.tolist() if i not in self.tombstones and self._has(i)]
                self.tombstones.update(present)
                if len(self.tombstones) > TOMBSTONE_REBUILD_FRACTION * max(self._index.ntotal, 1):
                    self._compact()
                return len(present)
            return int(self._index.remove_ids(faiss.IDSelectorBatch(ids_arr)))

    def _has(self, chunk_id: int) -> bool:
        assert self._index is not None
        try:
            self._index.id_map  # noqa: B018 - IndexIDMap2 keeps a reverse map
            self._index.reconstruct(int(chunk_id))
            return True
        except RuntimeError:
            return False

    def _compact(self, drop: set[int] | None = None) -> None:
        """Rebuild the graph without tombstoned (and `drop`) ids."""
        ids, vecs = self.vectors()
        remove = self.tombstones | (drop or set())
        keep = ~np.isin(ids, np.fromiter(remove, dtype=np.int64, count=len(remove)))
        self.tombstones = set()
        self._index = faiss.IndexIDMap2(self._new_base(int(keep.sum()), vecs[keep] if keep.any() else None))
        if keep.any():
            self._index.add_with_ids(vecs[keep], ids[keep])

    # -- queries -------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal) - len(self.tombstones)

    def ids(self) -> np.ndarray:
        if self._index is None:
            return np.zeros(0, dtype=np.int64)
        all_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if self.tombstones:
            all_ids = all_ids[~np.isin(all_ids, np.fromiter(self.tombstones, dtype=np.int64))]
        return all_ids

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) currently stored, tombstones included (used for compaction and checks)."""
        if self._index is None or self._index.ntotal == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vecs = np.vstack([self._index.reconstruct(int(i)) for i in ids]) if self.index_type == "ivf" else \
            self._index.index.reconstruct_n(0, self._index.ntotal)
        return ids, vecs

    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query, -1 ids padded. `allowed_ids` restricts the search *before* top-k,
        so a filtered search still returns k hits when k exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        nq = len(queries)
        empty = (np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64))
        with self._lock:
            if self._index is None or self.ntotal == 0 or k <= 0:
                return empty
            sel = None
            if allowed_ids is not None:
                allowed = np.asarray(allowed_ids, dtype=np.int64)
                if self.tombstones:
                    allowed = allowed[~np.isin(allowed, np.fromiter(self.tombstones, dtype=np.int64))]
                if not len(allowed):
                    return empty
                if self.index_type == "flat" or len(allowed) <= 4 * k:
                    # Exact scoring of a small allowed set beats a filtered graph walk (and is exact).
                    return self._score_subset(queries, allowed, k)
                sel = faiss.IDSelectorBatch(allowed)
            elif self.tombstones:
                sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self.tombstones, dtype=np.int64)))
            params = self._search_params(sel)
            scores, ids = self._index.search(queries, k, params=params) if params else self._index.search(
                queries, k)
            scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
            return scores, ids
        return empty  # pragma: no cover

    def _score_subset(self, queries: np.ndarray, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._index is not None
        present = [i for i in allowed.tolist() if self._has(i)]
        nq = len(queries)
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        if not present:
            return out_s, out_i
        vecs = np.vstack([self._index.reconstruct(int(i)) for i in present])
        sims = queries @ vecs.T
        ids = np.asarray(present, dtype=np.int64)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        n = top.shape[1]
        out_s[:, :n] = np.take_along_axis(sims, top, axis=1)
        out_i[:, :n] = ids[top]
        return out_s, out_i

    def _search_params(self, sel: faiss.IDSelector | None) -> faiss.SearchParameters | None:
        if self.index_type == "hnsw":
            return faiss.SearchParametersHNSW(sel=sel, efSearch=self.params.hnsw_ef_search)
        if self.index_type == "ivf":
            return faiss.SearchParametersIVF(sel=sel, nprobe=self.params.ivf_nprobe)
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, path: Path, generation: int) -> None:
        """Atomic: the index file first, then the meta file that stamps it; a reader trusts the pair only
        when meta's checksum-free fields (generation, ntotal) agree with the loaded index."""
        with self._lock:
            data = faiss.serialize_index(self._index).tobytes() if self._index is not None else b""
            _fsync_write(path, data)
            meta = {"generation": generation, "ntotal": 0 if self._index is None else int(self._index.ntotal),
                    "dim": self.dim, "index_type": self.index_type, "tombstones": sorted(self.tombstones)}
            _fsync_write(path.with_suffix(".json"), json.dumps(meta).encode())
            self.generation = generation

    @classmethod
    def load(cls, path: Path, params: IndexParams | None = None) -> "VectorIndex | None":
        """The saved index, or None when missing or inconsistent (then the caller rebuilds)."""
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            data = path.read_bytes()
            idx = cls(int(meta["dim"]), meta["index_type"], params)
            if data:
                idx._index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
                if idx._index.ntotal != meta["ntotal"]:
                    return None
                if isinstance(idx._index.index, faiss.IndexHNSW):
                    idx._index.index.hnsw.efSearch = idx.params.hnsw_ef_search
            idx.tombstones = set(int(i) for i in meta.get("tombstones", []))
            idx.generation = int(meta["generation"])
            return idx
        except (OSError, ValueError, KeyError, RuntimeError):
            return None
