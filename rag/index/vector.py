"""faiss vector index per collection: vector ids are chunk ids.

The SQL database is the source of truth; an index file is a derived cache stamped with the collection
`generation` it was built at. Any mismatch (a crash between the database commit and the index write, an
ingest by another process) is detected on load and repaired by rebuilding from the stored vectors.

Index types (inner product on normalised vectors = cosine):
- flat: exact; `IndexIDMap2(IndexFlatIP)`; remove_ids is exact.
- hnsw: `IndexIDMap2(IndexHNSWFlat)`; HNSW cannot delete, so removed ids become tombstones excluded through an
  IDSelector at search time (never returned) and the graph is rebuilt once tombstones pass 20 %.
- ivf: `IndexIVFFlat` trained on the data, holding chunk ids natively (a hashtable direct map gives
  reconstruction and exact removal). Not wrapped in IndexIDMap2: IVF removal does not renumber internal ids,
  which silently corrupted an IDMap's id mapping (a test covers it).

Choice by size (`choose_index_type`), measured by bench/index_scale.py (1,000,000 synthetic 384-d vectors, 200
single queries, 2 shared cores under load 9-13, so absolute times are pessimistic):
- flat: p50 0.9 ms at 10k, 2.2 ms at 20k, 20 ms at 50k, 223 ms at 1M vectors → exact search up to
  `index_auto_threshold` (20k) chunks.
- IVF (1,024 lists): build 54 s, p50 1.0 / 2.1 ms at nprobe 8 / 16 with recall@10 1.000 against exact search on
  topic-structured data (1,000 topics x 50 sub-topics).
- HNSW (M=32, efConstruction=40): build 920 s, p50 0.8 / 2.7 ms at efSearch 128 / 512 but recall@10 only
  0.79 / 0.90 on the same data: with tight clusters a cheaply built graph links poorly between them.
So 'auto' switches flat → IVF (nlist = 4*sqrt(n) capped at 1,024, nprobe 32: margin over the measured 16), and
retrains the lists when the collection has grown enough to want twice as many (`ivf_needs_retrain`).

Filtered search (`allowed_ids`): small allowed sets (<= SUBSET_EXACT_MAX) are scored exactly from the stored
vectors (faster than a filtered graph walk, and exact); larger ones go through a faiss IDSelector.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ctxqa.rag.files import atomic_write

INDEX_TYPES = ("flat", "hnsw", "ivf")
TOMBSTONE_REBUILD_FRACTION = 0.2
SUBSET_EXACT_MAX = 20_000
IVF_TRAIN_PER_LIST = 64
SINGLE_THREAD_MAX_QUERIES = 4
IVF_MIN_VECTORS = 1000
IVF_MAX_LISTS = 1024


@dataclass
class IndexParams:
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 32


def choose_index_type(requested: str, n_vectors: int, auto_threshold: int) -> str:
    """'auto' keeps exact search while it is fast enough and switches to IVF for large collections (and never
    below IVF_MIN_VECTORS, too few to train on). See the module docstring for the measurements behind it."""
    if requested != "auto":
        return requested
    return "ivf" if n_vectors >= max(auto_threshold, IVF_MIN_VECTORS) else "flat"


def _ivf_nlist(n: int) -> int:
    # ~4*sqrt(n) lists (the faiss guideline), capped at IVF_MAX_LISTS (measured at 1M: 1,024 lists, nprobe 16-32),
    # with at least 39 training points per list.
    return max(1, min(int(4 * math.sqrt(max(n, 1))), IVF_MAX_LISTS, n // 39 or 1))


def ivf_needs_retrain(index: VectorIndex) -> bool:
    """An IVF index trained when the collection was much smaller has too few lists for it now."""
    if index.index_type != "ivf" or index._index is None:
        return False
    return _ivf_nlist(index.ntotal) >= 2 * int(index._index.nlist)


def meta_path_for(path: Path) -> Path:
    """The stamp file beside an index file (`collection-1.faiss` → `collection-1.faiss.json`)."""
    return path.with_name(path.name + ".json")


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
        self._index: faiss.Index | None = None  # IndexIDMap2 (flat, hnsw) or IndexIVFFlat (ivf)
        self._sorted_ids: np.ndarray | None = None  # cache of the stored ids, sorted (tombstones included)
        self._lock = threading.RLock()
        if index_type != "ivf":  # IVF needs training data: created on the first add
            self._index = self._wrap(self._new_base(0, None))

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
        nlist = _ivf_nlist(n)
        base = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        assert train is not None
        if len(train) > IVF_TRAIN_PER_LIST * nlist:  # k-means needs a sample, not the whole collection
            rng = np.random.default_rng(0)
            train = train[np.sort(rng.choice(len(train), IVF_TRAIN_PER_LIST * nlist, replace=False))]
        base.train(np.ascontiguousarray(train, dtype=np.float32))
        base.nprobe = self.params.ivf_nprobe
        base.set_direct_map_type(faiss.DirectMap.Hashtable)
        return base

    def _wrap(self, base: faiss.Index) -> faiss.Index:
        return base if self.index_type == "ivf" else faiss.IndexIDMap2(base)

    @classmethod
    def build(cls, dim: int, index_type: str, ids: np.ndarray, vecs: np.ndarray,
              params: IndexParams | None = None) -> VectorIndex:
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
                self._index = self._wrap(self._new_base(len(vecs), vecs))
            revived = self.tombstones.intersection(ids.tolist())
            if revived:  # HNSW: an id re-added after deletion must not be hidden, nor appear twice
                self._compact(drop=revived)
            dup = ids[self._contains(ids)]
            if len(dup):  # re-adding an id replaces its vector (never two vectors under one id)
                self._remove_exact(dup)
            self._index.add_with_ids(vecs, ids)
            self._sorted_ids = None

    def remove(self, ids: np.ndarray | Iterable[int]) -> int:
        ids_arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if not len(ids_arr) or self._index is None:
            return 0
        with self._lock:
            ids_arr = np.unique(ids_arr)
            if self.index_type == "hnsw":
                present = [i for i in ids_arr[self._contains(ids_arr)].tolist() if i not in self.tombstones]
                self.tombstones.update(present)
                if len(self.tombstones) > TOMBSTONE_REBUILD_FRACTION * max(self._index.ntotal, 1):
                    self._compact()
                return len(present)
            return self._remove_exact(ids_arr)

    def _remove_exact(self, ids_arr: np.ndarray) -> int:
        assert self._index is not None
        ids_arr = np.ascontiguousarray(ids_arr, dtype=np.int64)
        if self.index_type == "hnsw":  # HNSW cannot delete: rebuild without them
            self._compact(drop=set(ids_arr.tolist()))
            return len(ids_arr)
        sel = faiss.IDSelectorArray(ids_arr) if self.index_type == "ivf" else faiss.IDSelectorBatch(ids_arr)
        n = int(self._index.remove_ids(sel))
        self._sorted_ids = None
        return n

    def _all_ids(self) -> np.ndarray:
        """Every stored id (tombstones included), sorted; cached until the next change."""
        if self._sorted_ids is None:
            if self._index is None or self._index.ntotal == 0:
                self._sorted_ids = np.zeros(0, dtype=np.int64)
            elif self.index_type == "ivf":
                il = self._index.invlists
                parts = [faiss.rev_swig_ptr(il.get_ids(lst), il.list_size(lst)).copy()
                         for lst in range(self._index.nlist) if il.list_size(lst)]
                self._sorted_ids = np.sort(np.concatenate(parts).astype(np.int64))
            else:
                self._sorted_ids = np.sort(faiss.vector_to_array(self._index.id_map).astype(np.int64))
        return self._sorted_ids

    def _contains(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of `ids` are stored (tombstones count as stored)."""
        all_ids = self._all_ids()
        ids = np.asarray(ids, dtype=np.int64)
        if not len(all_ids) or not len(ids):
            return np.zeros(len(ids), dtype=bool)
        pos = np.clip(np.searchsorted(all_ids, ids), 0, len(all_ids) - 1)
        return all_ids[pos] == ids

    def _has(self, chunk_id: int) -> bool:
        return bool(self._contains(np.asarray([chunk_id]))[0])

    def get_vectors(self, ids: np.ndarray | Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(found ids, their vectors) for the live ids among `ids`, in the given order."""
        ids_arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        with self._lock:
            if self._index is None or not len(ids_arr):
                return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
            mask = self._contains(ids_arr)
            if self.tombstones:
                mask &= ~np.isin(ids_arr, np.fromiter(self.tombstones, dtype=np.int64))
            found = np.ascontiguousarray(ids_arr[mask])
            if not len(found):
                return found, np.zeros((0, self.dim), dtype=np.float32)
            return found, np.asarray(self._index.reconstruct_batch(found), dtype=np.float32).reshape(-1, self.dim)

    def _compact(self, drop: set[int] | None = None) -> None:
        """Rebuild the graph without tombstoned (and `drop`) ids."""
        ids, vecs = self.vectors()
        remove = self.tombstones | (drop or set())
        keep = ~np.isin(ids, np.fromiter(remove, dtype=np.int64, count=len(remove)))
        self.tombstones = set()
        self._index = self._wrap(self._new_base(int(keep.sum()), vecs[keep] if keep.any() else None))
        if keep.any():
            self._index.add_with_ids(vecs[keep], ids[keep])
        self._sorted_ids = None

    # -- queries -------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal) - len(self.tombstones)

    def ids(self) -> np.ndarray:
        if self._index is None:
            return np.zeros(0, dtype=np.int64)
        all_ids = self._all_ids()
        if self.tombstones:
            all_ids = all_ids[~np.isin(all_ids, np.fromiter(self.tombstones, dtype=np.int64))]
        return all_ids

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) currently stored, tombstones included (used for compaction and checks)."""
        if self._index is None or self._index.ntotal == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        if self.index_type == "ivf":
            ids = self._all_ids()
            return ids, np.asarray(self._index.reconstruct_batch(ids), dtype=np.float32).reshape(-1, self.dim)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        return ids, self._index.index.reconstruct_n(0, self._index.ntotal)

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
                if len(allowed) <= max(SUBSET_EXACT_MAX, 4 * k):
                    # Exact scoring of a small allowed set beats a filtered graph walk (and is exact).
                    return self._score_subset(queries, allowed, k)
                sel = faiss.IDSelectorBatch(allowed)
            elif self.tombstones:
                sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self.tombstones, dtype=np.int64)))
            params = self._search_params(sel)
            # One query is a few hundred microseconds of work: OpenMP fan-out costs more than it saves and
            # collapses when the cores are shared (measured: 0.7 ms with 1 thread vs 107 ms with 2 on a loaded
            # 2-core box). omp_set_num_threads is per calling thread, so a concurrent index build is unaffected.
            prev = faiss.omp_get_max_threads()
            if nq <= SINGLE_THREAD_MAX_QUERIES:
                faiss.omp_set_num_threads(1)
            try:
                scores, ids = self._index.search(queries, k, params=params) if params else self._index.search(
                    queries, k)
            finally:
                if nq <= SINGLE_THREAD_MAX_QUERIES:
                    faiss.omp_set_num_threads(prev)
            scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
            if allowed_ids is not None and self.index_type != "flat" and (ids < 0).any():
                # An approximate index probed too little of a selective filter's chunks: when fewer than k came
                # back, score the allowed set exactly, so a filtered search returns k hits whenever k exist.
                return self._score_subset(queries, allowed, k)
            return scores, ids
        return empty  # pragma: no cover

    def _score_subset(self, queries: np.ndarray, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._index is not None
        ids, vecs = self.get_vectors(np.unique(allowed))
        nq = len(queries)
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        if not len(ids):
            return out_s, out_i
        sims = queries @ vecs.T
        if sims.shape[1] > k:
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            psims = np.take_along_axis(sims, part, axis=1)
            order = np.argsort(-psims, axis=1, kind="stable")
            top = np.take_along_axis(part, order, axis=1)
        else:
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
            atomic_write(path, data)
            meta = {"generation": generation, "ntotal": 0 if self._index is None else int(self._index.ntotal),
                    "dim": self.dim, "index_type": self.index_type, "tombstones": sorted(self.tombstones)}
            atomic_write(meta_path_for(path), json.dumps(meta).encode())
            self.generation = generation

    @classmethod
    def load(cls, path: Path, params: IndexParams | None = None) -> VectorIndex | None:
        """The saved index, or None when missing or inconsistent (then the caller rebuilds)."""
        meta_path = meta_path_for(path)
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
                if (idx.index_type == "ivf") != isinstance(idx._index, faiss.IndexIVF):
                    return None  # an index file of the old IDMap2(IVF) layout: rebuild
                if idx.index_type == "hnsw":
                    faiss.downcast_index(idx._index.index).hnsw.efSearch = idx.params.hnsw_ef_search
            idx.tombstones = set(int(i) for i in meta.get("tombstones", []))
            idx.generation = int(meta["generation"])
            return idx
        except (OSError, ValueError, KeyError, RuntimeError):
            return None
