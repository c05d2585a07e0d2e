"""Lexical (BM25) index per collection, kept in step with the chunks exactly as the faiss index is.

    LexicalIndex.add(ids, texts) / .remove(ids) / .search(query, k, allowed_ids=None) -> (scores, ids)
    LexicalIndex.save(path, generation) / LexicalIndex.load(path) -> LexicalIndex | None

Scoring is BM25 (Lucene variant, as bm25s' default): idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)) and
tf-part tf / (tf + k1 * (1 - b + b * len / avglen)). The statistics N, df and avglen are computed over the *live*
chunks at query time, so after any sequence of inserts, updates and deletes the scores are exactly those of an
index built from scratch on the current chunks (a test checks that against a fresh build).

Why this and not the alternatives (measured by `python bench/retrieval.py --lexical-compare` on SciFact, 5,183
abstracts in 12,659 chunks, on the shared 2-core development box):

| index | build | follow one changed chunk | query p50 | nDCG@10 (k1=1.5, b=0.75) |
| --- | ---: | ---: | ---: | ---: |
| this LexicalIndex (incremental) | 7.0 s | 0.5 ms | 0.62 ms | 0.692 |
| bm25s (static, same tokenizer) | 5.9 s | 5.9 s (full re-index) | 0.29 ms | 0.692 |

- bm25s is static: following one inserted or deleted chunk means re-indexing the whole collection (linear in the
  collection: minutes at 1M chunks, for every ingest batch). Same scores (a test checks equality).
- SQLite FTS5 is incremental, but PostgreSQL has no BM25 (ts_rank is a different function), so results would
  change with the database backend, and both need each query to go through SQL plus a schema migration.
- This index: a posting list per term (base CSR arrays + a small append-only delta merged on save or when it
  grows), deletes flip a live bit (compacted when more than 20 % of rows are dead). Following a change costs
  tokenising the changed chunks; a query is a few vectorised numpy operations per query term, sub-millisecond
  at this size.

Indexed text: the chunk's document title and heading path, then the chunk's text *in its window*: the text of
the chunk and of its `window` neighbours on each side in the same document, stitched at their character offsets
(rag/chunk_text.py: `window_text`, `lexical_text`). Dense retrieval matches short chunks best (MiniLM was trained on 128-piece
passages) while BM25 needs more text than that to see a document's vocabulary: scoring each short chunk by its
surrounding window gives both; the chunk's own text is counted twice so that it still ranks ahead of its neighbours
for its own words (SciFact held-out nDCG@10, hybrid: 0.733 with 128-piece chunks alone, 0.746 with windows of 2;
bench/retrieval.py).

Tokenizer: Unicode words of two or more characters, lower-cased, English stop words removed, Snowball English
stemmer (PyStemmer) when installed. The tokenizer's identity is saved with the index; an index saved with a
different tokenizer is treated as stale and rebuilt from the database.
"""

from __future__ import annotations

import io
import json
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from rag.files import atomic_write
from rag.index import meta_path_for

DEAD_COMPACT_FRACTION = 0.2
FORMAT_VERSION = 3  # 2: indexed text carries title and headings; 3: and the chunk's window

# bm25s' English stop words (the NLTK list it ships), kept here so the tokenizer does not depend on bm25s.
STOPWORDS_EN = frozenset("""
a about above after again against ain all am an and any are aren aren't as at be because been before being below
between both but by can couldn couldn't d did didn didn't do does doesn doesn't doing don don't down during each
few for from further had hadn hadn't has hasn hasn't have haven haven't having he her here hers herself him himself
his how i if in into is isn isn't it it's its itself just ll m ma me mightn mightn't more most mustn mustn't my
myself needn needn't no nor not now o of off on once only or other our ours ourselves out over own re s same shan
shan't she she's should should've shouldn shouldn't so some such t than that that'll the their theirs them
themselves then there these they this those through to too under until up ve very was wasn wasn't we were weren
weren't what when where which while who whom why will with won won't wouldn wouldn't y you you'd you'll you're
you've your yours yourself yourselves
""".split())

_TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")


class Tokenizer:
    """Text → list of index terms. `ident` names the exact behaviour (saved with the index)."""

    def __init__(self, stem: bool = True, stopwords: bool = True) -> None:
        self._stemmer = None
        if stem:
            try:
                import Stemmer  # PyStemmer

                self._stemmer = Stemmer.Stemmer("english")
            except ImportError:  # pragma: no cover - PyStemmer is a dependency; degrade rather than fail
                self._stemmer = None
        self._stop = STOPWORDS_EN if stopwords else frozenset()
        self.ident = f"words2+lower{'+stop-en' if stopwords else ''}{'+snowball-en' if self._stemmer else ''}"

    def __call__(self, text: str) -> list[str]:
        words = [w for w in _TOKEN_RE.findall(text.lower()) if w not in self._stop]
        if self._stemmer is not None:
            return self._stemmer.stemWords(words)
        return words


class _Growable:
    """An append-only numpy array with amortised O(1) appends."""

    def __init__(self, dtype: type | np.dtype, data: np.ndarray | None = None) -> None:
        self._a = np.zeros(16, dtype=dtype) if data is None or not len(data) else np.array(data, dtype=dtype)
        self.n = 0 if data is None else len(data)

    def extend(self, values: np.ndarray | Sequence) -> None:
        values = np.asarray(values, dtype=self._a.dtype)
        need = self.n + len(values)
        if need > len(self._a):
            grown = np.zeros(max(need, 2 * len(self._a)), dtype=self._a.dtype)
            grown[: self.n] = self._a[: self.n]
            self._a = grown
        self._a[self.n:need] = values
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self._a[: self.n]


class LexicalIndex:
    """BM25 over the chunks of one collection; ids are chunk ids. Thread-safe."""

    def __init__(self, k1: float = 1.2, b: float = 0.75, tokenizer: Tokenizer | None = None,
                 window: int = 0) -> None:
        self.k1 = float(k1)
        self.b = float(b)
        self.window = int(window)  # recorded only: the caller builds the texts (an index of another window is stale)
        self.tokenizer = tokenizer or Tokenizer()
        self.generation = 0
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self.vocab: dict[str, int] = {}
        self._row_ids = _Growable(np.int64)  # row -> chunk id
        self._row_len = _Growable(np.float32)  # row -> number of terms
        self._alive = _Growable(np.bool_)
        self._row_of: dict[int, int] = {}  # live chunk id -> row
        self._total_len = 0.0
        # base postings (CSR by term id): rows and term frequencies of term t are [indptr[t], indptr[t+1])
        self._indptr = np.zeros(1, dtype=np.int64)
        self._p_rows = np.zeros(0, dtype=np.int32)
        self._p_tf = np.zeros(0, dtype=np.float32)
        self._delta: dict[int, tuple[list[int], list[float]]] = {}
        self._delta_nnz = 0
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (sorted live chunk ids, their rows)

    # -- mutation ------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, ids: Sequence[int] | np.ndarray, texts: Sequence[str], k1: float = 1.2, b: float = 0.75,
              tokenizer: Tokenizer | None = None, window: int = 0) -> "LexicalIndex":
        idx = cls(k1, b, tokenizer, window)
        idx.add(ids, texts)
        idx._merge()
        return idx

    def add(self, ids: Sequence[int] | np.ndarray, texts: Sequence[str]) -> None:
        """Index chunks; an id already present is replaced (its old text no longer matches)."""
        ids_l = [int(i) for i in ids]
        if len(ids_l) != len(texts):
            raise ValueError(f"{len(ids_l)} ids for {len(texts)} texts")
        if not ids_l:
            return
        toks = [self.tokenizer(t) for t in texts]
        with self._lock:
            present = [i for i in ids_l if i in self._row_of]
            if present:
                self.remove(present)
            vocab = self.vocab
            rows0 = self._row_ids.n
            lens = np.empty(len(ids_l), dtype=np.float32)
            for j, terms in enumerate(toks):
                row = rows0 + j
                lens[j] = len(terms)
                for term, tf in Counter(terms).items():
                    tid = vocab.get(term)
                    if tid is None:
                        tid = vocab[term] = len(vocab)
                    d = self._delta.get(tid)
                    if d is None:
                        d = self._delta[tid] = ([], [])
                    d[0].append(row)
                    d[1].append(float(tf))
                    self._delta_nnz += 1
            self._row_ids.extend(ids_l)
            self._row_len.extend(lens)
            self._alive.extend(np.ones(len(ids_l), dtype=np.bool_))
            for j, cid in enumerate(ids_l):
                self._row_of[cid] = rows0 + j
            self._total_len += float(lens.sum())
            self._sorted = None
            if self._delta_nnz > max(200_000, len(self._p_rows) // 4):
                self._merge()

    def remove(self, ids: Iterable[int]) -> int:
        """Forget chunks; returns how many were present."""
        n = 0
        with self._lock:
            alive = self._alive.view
            lens = self._row_len.view
            for cid in ids:
                row = self._row_of.pop(int(cid), None)
                if row is None:
                    continue
                alive[row] = False
                self._total_len -= float(lens[row])
                n += 1
            if n:
                self._sorted = None
                dead = self._row_ids.n - len(self._row_of)
                if dead > DEAD_COMPACT_FRACTION * max(self._row_ids.n, 1) and dead > 64:
                    self._merge()
        return n

    def _merge(self) -> None:
        """Fold the delta postings into the base CSR arrays and drop dead rows (renumbering rows)."""
        with self._lock:
            n_terms = len(self.vocab)
            base_len = len(self._indptr) - 1
            base_terms = np.repeat(np.arange(base_len, dtype=np.int64), np.diff(self._indptr))
            d_terms, d_rows, d_tf = [], [], []
            for tid, (rows, tfs) in self._delta.items():
                d_terms.append(np.full(len(rows), tid, dtype=np.int64))
                d_rows.append(np.asarray(rows, dtype=np.int32))
                d_tf.append(np.asarray(tfs, dtype=np.float32))
            terms = np.concatenate([base_terms, *d_terms]) if d_terms else base_terms
            rows = np.concatenate([self._p_rows, *d_rows]) if d_rows else self._p_rows
            tfs = np.concatenate([self._p_tf, *d_tf]) if d_tf else self._p_tf
            alive = self._alive.view
            # Drop dead rows and renumber the live ones densely.
            if len(self._row_of) != self._row_ids.n:
                keep_rows = np.flatnonzero(alive)
                new_of = np.full(self._row_ids.n, -1, dtype=np.int64)
                new_of[keep_rows] = np.arange(len(keep_rows))
                live = alive[rows] if len(rows) else np.zeros(0, dtype=bool)
                terms, rows, tfs = terms[live], new_of[rows[live]].astype(np.int32), tfs[live]
                self._row_ids = _Growable(np.int64, self._row_ids.view[keep_rows])
                self._row_len = _Growable(np.float32, self._row_len.view[keep_rows])
                self._alive = _Growable(np.bool_, np.ones(len(keep_rows), dtype=np.bool_))
                self._row_of = {int(c): r for r, c in enumerate(self._row_ids.view.tolist())}
            order = np.lexsort((rows, terms))
            terms, rows, tfs = terms[order], rows[order], tfs[order]
            self._indptr = np.zeros(n_terms + 1, dtype=np.int64)
            np.cumsum(np.bincount(terms, minlength=n_terms), out=self._indptr[1:])
            self._p_rows = np.ascontiguousarray(rows, dtype=np.int32)
            self._p_tf = np.ascontiguousarray(tfs, dtype=np.float32)
            self._delta = {}
            self._delta_nnz = 0
            self._sorted = None

    # -- queries -------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return len(self._row_of)

    def ids(self) -> np.ndarray:
        with self._lock:
            return np.sort(self._row_ids.view[self._alive.view])

    def _postings(self, tid: int) -> tuple[np.ndarray, np.ndarray]:
        if tid < len(self._indptr) - 1:
            a, z = self._indptr[tid], self._indptr[tid + 1]
            rows, tfs = self._p_rows[a:z], self._p_tf[a:z]
        else:
            rows, tfs = self._p_rows[:0], self._p_tf[:0]
        d = self._delta.get(tid)
        if d is not None:
            rows = np.concatenate([rows, np.asarray(d[0], dtype=np.int32)])
            tfs = np.concatenate([tfs, np.asarray(d[1], dtype=np.float32)])
        return rows, tfs

    def _rows_of(self, chunk_ids: np.ndarray) -> np.ndarray:
        """Rows of the live chunk ids among `chunk_ids` (others are ignored)."""
        if self._sorted is None:
            live = np.flatnonzero(self._alive.view)
            cids = self._row_ids.view[live]
            order = np.argsort(cids, kind="stable")
            self._sorted = (cids[order], live[order])
        sc, sr = self._sorted
        if not len(sc):
            return np.zeros(0, dtype=np.int64)
        pos = np.searchsorted(sc, chunk_ids)
        pos = np.clip(pos, 0, len(sc) - 1)
        ok = sc[pos] == chunk_ids
        return sr[pos[ok]]

    def search(self, query: str, k: int, allowed_ids: np.ndarray | Sequence[int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, chunk ids), best first; only chunks sharing a term with the query are returned.
        `allowed_ids` restricts the candidates before the top-k cut."""
        scores, ids, _ = self.search_scores(query, k, allowed_ids)
        return scores, ids

    def search_scores(self, query: str, k: int, allowed_ids: np.ndarray | Sequence[int] | None = None,
                      also: np.ndarray | Sequence[int] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`search`, plus the BM25 score of each chunk id in `also` (0 when it shares no term with the query or
        is not indexed), computed in the same pass: hybrid fusion scores the dense candidates exactly."""
        terms = list(dict.fromkeys(self.tokenizer(query)))
        n_also = 0 if also is None else len(also)
        empty = (np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(n_also, dtype=np.float32))
        with self._lock:
            n_live = len(self._row_of)
            if k <= 0 or not terms or not n_live:
                return empty
            avglen = max(self._total_len / n_live, 1e-9)
            alive = self._alive.view
            lens = self._row_len.view
            all_rows: list[np.ndarray] = []
            all_scores: list[np.ndarray] = []
            for term in terms:
                tid = self.vocab.get(term)
                if tid is None:
                    continue
                rows, tfs = self._postings(tid)
                live = alive[rows]
                df = int(live.sum())
                if not df:
                    continue
                rows, tfs = rows[live], tfs[live]
                idf = math.log(1.0 + (n_live - df + 0.5) / (df + 0.5))
                norm = self.k1 * (1.0 - self.b + self.b * lens[rows] / avglen)
                all_rows.append(rows)
                all_scores.append((idf * tfs / (tfs + norm)).astype(np.float32))
            if not all_rows:
                return empty
            rows = np.concatenate(all_rows)
            scores = np.concatenate(all_scores)
            if len(all_rows) > 1:
                uniq, inv = np.unique(rows, return_inverse=True)
                scores = np.bincount(inv, weights=scores).astype(np.float32)
                rows = uniq
            also_scores = empty[2]
            if n_also:
                m_ids = self._row_ids.view[rows]
                order = np.argsort(m_ids)
                m_sorted, s_sorted = m_ids[order], scores[order]
                want = np.asarray(also, dtype=np.int64)
                pos = np.clip(np.searchsorted(m_sorted, want), 0, len(m_sorted) - 1)
                also_scores = np.where(m_sorted[pos] == want, s_sorted[pos], 0.0).astype(np.float32)
            if allowed_ids is not None:
                allowed_rows = self._rows_of(np.asarray(allowed_ids, dtype=np.int64))
                keep = np.isin(rows, allowed_rows)
                rows, scores = rows[keep], scores[keep]
                if not len(rows):
                    return empty[0], empty[1], also_scores
            if len(rows) > k:
                part = np.argpartition(-scores, k - 1)[:k]
                rows, scores = rows[part], scores[part]
            # Best first; ties by chunk id so results are deterministic.
            cids = self._row_ids.view[rows]
            order = np.lexsort((cids, -scores))
            return scores[order].astype(np.float32), cids[order].astype(np.int64), also_scores

    # -- persistence ---------------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"format": FORMAT_VERSION, "tokenizer": self.tokenizer.ident, "k1": self.k1, "b": self.b,
                "window": self.window}

    def save(self, path: Path, generation: int) -> None:
        """Atomic write of the index, then of the meta file stamping it with `generation`."""
        with self._lock:
            self._merge()
            buf = io.BytesIO()
            np.savez(buf, indptr=self._indptr, rows=self._p_rows, tf=self._p_tf, row_ids=self._row_ids.view,
                     row_len=self._row_len.view, vocab=np.array("\n".join(self.vocab)))
            atomic_write(path, buf.getvalue())
            meta = {**self.meta(), "generation": generation, "ntotal": self.ntotal}
            atomic_write(meta_path_for(path), json.dumps(meta).encode())
            self.generation = generation

    @classmethod
    def load(cls, path: Path, k1: float = 1.2, b: float = 0.75, tokenizer: Tokenizer | None = None,
             window: int = 0) -> "LexicalIndex | None":
        """The saved index, or None when missing, inconsistent, or saved with other BM25 parameters, another
        tokenizer or another window (then the caller rebuilds from the database)."""
        meta_path = meta_path_for(path)
        if not path.exists() or not meta_path.exists():
            return None
        idx = cls(k1, b, tokenizer, window)
        try:
            meta = json.loads(meta_path.read_text())
            if (meta.get("format") != FORMAT_VERSION or meta.get("tokenizer") != idx.tokenizer.ident
                    or float(meta.get("k1", -1)) != idx.k1 or float(meta.get("b", -1)) != idx.b
                    or int(meta.get("window", -1)) != idx.window):
                return None
            with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
                vocab_s = str(z["vocab"])
                terms = vocab_s.split("\n") if vocab_s else []
                idx.vocab = {t: i for i, t in enumerate(terms)}
                idx._indptr = z["indptr"].astype(np.int64)
                idx._p_rows = z["rows"].astype(np.int32)
                idx._p_tf = z["tf"].astype(np.float32)
                row_ids = z["row_ids"].astype(np.int64)
                row_len = z["row_len"].astype(np.float32)
            if len(idx._indptr) != len(terms) + 1 or len(row_ids) != int(meta["ntotal"]) or \
                    len(row_len) != len(row_ids) or int(idx._indptr[-1]) != len(idx._p_rows):
                return None
            idx._row_ids = _Growable(np.int64, row_ids)
            idx._row_len = _Growable(np.float32, row_len)
            idx._alive = _Growable(np.bool_, np.ones(len(row_ids), dtype=np.bool_))
            idx._row_of = {int(c): r for r, c in enumerate(row_ids.tolist())}
            idx._total_len = float(row_len.sum(dtype=np.float64))
            idx.generation = int(meta["generation"])
            return idx
        except (OSError, ValueError, KeyError, TypeError):
            return None
