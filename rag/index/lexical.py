"""Lexical (BM25) index per collection, kept in step with the chunks exactly as the faiss index is.

    LexicalIndex.add(ids, texts) / .add_terms(ids, terms) / .remove(ids) / .search(query, k, allowed_ids=None) -> (scores, ids)
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
  tokenising the changed chunks' documents, once each (`Tokenizer.window_terms`); a query is a few vectorised numpy operations per query term, sub-millisecond
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
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path

import numpy as np

from ctxqa.rag.files import atomic_write
from ctxqa.rag.index.chunk_text import header_parts, lexical_texts, window_text
from ctxqa.rag.index.vector import meta_path_for

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

    def _term(self, word: str) -> str | None:
        """The term of one lower-cased word (a maximal run of word characters), or None."""
        if len(word) < 2 or word in self._stop:
            return None
        return self._stemmer.stemWord(word) if self._stemmer is not None else word

    def window_terms(self, chunks: Sequence[tuple[str, int, int]], window: int, title: str | None = None,
                     headings: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
        """The terms of each chunk's lexical text, for one document's chunks `(text, char_start, char_end)` in
        order: exactly `[self(t) for t in lexical_texts(...)]` (rag/chunk_text.py), list for list.
        `headings[j]`: chunk j's heading path.

        Why: a chunk's lexical text repeats its neighbours (a window of 2 holds ~6 chunks' worth of text), so
        tokenizing each one on its own costs ~6x tokenizing the document. Here the document's stitched text is
        tokenized and stemmed once and each window takes a slice of its terms. Exact because a term is a maximal
        run of word characters of the lower-cased text: a slice's terms are the runs inside it plus the runs it
        clips at either end (re-tokenized). Where that argument does not hold (lower-casing that changes the
        length or depends on context, chunks that do not stitch back into one text), the document's texts are
        tokenized one by one as before."""
        heads: Sequence[Sequence[str]] = headings if headings is not None else [()] * len(chunks)
        texts = _stitch(chunks)
        if texts is None:
            return self._window_terms_slow(chunks, window, title, heads)
        stitched, at = texts
        lowered = stitched.lower()
        if len(lowered) != len(stitched) or "\u03a3" in stitched:  # e.g. "İ" -> "i̇"; final sigma is contextual
            return self._window_terms_slow(chunks, window, title, heads)
        words: list[str] = _TOKEN_RE.findall(lowered)
        spans = [m.span() for m in _TOKEN_RE.finditer(lowered)]  # every word (stop words too): to find clipped runs
        starts = [a for a, _b in spans]
        ends = [b for _a, b in spans]
        stems = dict(zip(uniq := [w for w in dict.fromkeys(words) if w not in self._stop],
                         self._stemmer.stemWords(uniq) if self._stemmer is not None else uniq))
        # The words that are terms, with their positions: a slice's inner terms are one list slice.
        kept = [i for i, w in enumerate(words) if w in stems]
        k_starts = [starts[i] for i in kept]
        k_ends = [ends[i] for i in kept]
        k_terms = [stems[words[i]] for i in kept]
        n_words = len(words)

        def span_terms(a: int, b: int) -> list[str]:
            inner = k_terms[bisect_left(k_starts, a):bisect_right(k_ends, b)]
            i0, i1 = bisect_left(starts, a), bisect_right(ends, b)
            k = i0 - 1  # a run that starts before `a` and reaches into the slice
            if k >= 0 and ends[k] > a:
                head = self._term(lowered[a:min(ends[k], b)])
                if ends[k] >= b:
                    return [head] if head else []
                if head:
                    inner.insert(0, head)
            if i1 < n_words and a <= starts[i1] < b < ends[i1]:  # a run that starts inside and goes on past `b`
                tail = self._term(lowered[starts[i1]:b])
                if tail:
                    inner.append(tail)
            return inner

        out: list[list[str]] = []
        header_cache: dict[tuple[str, ...], list[str]] = {}
        n = len(chunks)
        for j, (text, _start, _stop) in enumerate(chunks):
            own = span_terms(at[j], at[j] + len(text))
            if window > 0:
                # Chunks in order, each where _stitch found it: the window's stitched text is this slice.
                lo, hi = max(0, j - window), min(n, j + window + 1)
                wa, wb = at[lo], at[hi - 1] + len(chunks[hi - 1][0])
                parts = tuple(header_parts(stitched[wa:wb], title, heads[j]))
                body = span_terms(wa, wb)
            else:
                parts = tuple(header_parts(text, title, heads[j]))
                body = own
            head = header_cache.get(parts)
            if head is None:
                head = header_cache[parts] = self("\n".join(parts))
            out.append(head + body + own if window > 0 else head + body)
        return out

    def _window_terms_slow(self, chunks: Sequence[tuple[str, int, int]], window: int, title: str | None,
                           heads: Sequence[Sequence[str]]) -> list[list[str]]:
        return [self(t) for t in lexical_texts(chunks, window, title, heads)]


def _stitch(chunks: Sequence[tuple[str, int, int]]) -> tuple[str, list[int]] | None:
    """`window_text` of all the chunks, and where each chunk's text starts in it; None unless every chunk's text
    is found there and every window of consecutive chunks is a slice of it (chunks in order, each text as long
    as its offsets say: what the chunker produces)."""
    if not chunks:
        return "", []
    prev_start = prev_stop = -1
    for text, start, stop in chunks:
        if stop - start != len(text) or start < prev_start or stop <= prev_stop:
            return None  # out of order, or a chunk inside the one before: windows would stitch differently
        prev_start, prev_stop = start, stop
    stitched = window_text(chunks)
    at: list[int] = []
    pos = 0  # where the previous chunk ends in `stitched`
    end = None
    for text, start, stop in chunks:
        if end is None:
            at.append(0)
        elif start >= end:
            at.append(pos + 1)  # after the line break that stands for the gap
        else:
            at.append(pos - (end - start))
        pos = at[-1] + len(text)
        end = stop
        if stitched[at[-1]:pos] != text:
            return None
    return stitched, at


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
        # postings added since: blocks of (term ids, rows, tfs), each sorted by term then row
        self._delta: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._delta_nnz = 0
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (sorted live chunk ids, their rows)

    # -- mutation ------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, ids: Sequence[int] | np.ndarray, texts: Sequence[str] | None = None, k1: float = 1.2,
              b: float = 0.75, tokenizer: Tokenizer | None = None, window: int = 0, *,
              terms: Sequence[list[str]] | None = None) -> LexicalIndex:
        """An index of `texts`, or of texts already tokenized by `tokenizer` (`terms`)."""
        idx = cls(k1, b, tokenizer, window)
        if terms is not None:
            idx.add_terms(ids, terms)
        else:
            idx.add(ids, texts if texts is not None else [])
        idx._merge()
        return idx

    def add(self, ids: Sequence[int] | np.ndarray, texts: Sequence[str]) -> None:
        """Index chunks; an id already present is replaced (its old text no longer matches)."""
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        self.add_terms(ids, [self.tokenizer(t) for t in texts])

    def add_terms(self, ids: Sequence[int] | np.ndarray, toks: Sequence[list[str]]) -> None:
        """`add` for texts already tokenized by this index's tokenizer (e.g. by `Tokenizer.window_terms`)."""
        ids_l = [int(i) for i in ids]
        if len(ids_l) != len(toks):
            raise ValueError(f"{len(ids_l)} ids for {len(toks)} term lists")
        if not ids_l:
            return
        with self._lock:
            present = [i for i in ids_l if i in self._row_of]
            if present:
                self.remove(present)
            vocab = self.vocab
            n = len(ids_l)
            rows0 = self._row_ids.n
            lens = np.fromiter((len(t) for t in toks), dtype=np.int64, count=n)
            # Term ids of every occurrence (a new term gets the next id), then (term, row) pairs counted at once:
            # a per-chunk Counter and a dict update per term were most of the cost of following an ingest.
            flat = list(chain.from_iterable(toks))
            new = [t for t in dict.fromkeys(flat) if t not in vocab]  # ids in order of first use: reproducible
            vocab.update(zip(new, range(len(vocab), len(vocab) + len(new))))
            tids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))
            pairs, tf = np.unique(tids * n + np.repeat(np.arange(n, dtype=np.int64), lens), return_counts=True)
            if len(pairs):  # sorted by term, then row: a block of postings
                self._delta.append((pairs // n, (rows0 + pairs % n).astype(np.int32), tf.astype(np.float32)))
                self._delta_nnz += len(pairs)
            self._row_ids.extend(ids_l)
            self._row_len.extend(lens.astype(np.float32))
            self._alive.extend(np.ones(n, dtype=np.bool_))
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
            d_terms = [b[0] for b in self._delta]
            d_rows = [b[1] for b in self._delta]
            d_tf = [b[2] for b in self._delta]
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
            self._delta = []
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
        for terms, b_rows, b_tfs in self._delta:
            a, z = np.searchsorted(terms, tid, "left"), np.searchsorted(terms, tid, "right")
            if z > a:
                rows = np.concatenate([rows, b_rows[a:z]])
                tfs = np.concatenate([tfs, b_tfs[a:z]])
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
             window: int = 0) -> LexicalIndex | None:
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
