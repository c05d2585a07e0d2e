"""Sentence vectors remembered across the steps of one process: the live check of a streaming answer, its final
check, the cited blocks' check and the quote selection all embed the same retrieved sentences."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

Embed = Callable[[list[str]], np.ndarray]


class CachedEmbed:
    """`embed(texts)` with an LRU of the last `size` texts' vectors (thread-safe; vectors are read-only)."""

    def __init__(self, embed: Embed, size: int = 8192) -> None:
        self._embed = embed
        self._size = size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __call__(self, texts: list[str]) -> np.ndarray:
        out: list[np.ndarray | None] = []
        missing: list[str] = []
        with self._lock:
            for t in texts:
                v = self._cache.get(t)
                if v is not None:
                    self._cache.move_to_end(t)
                else:
                    missing.append(t)
                out.append(v)
        if missing:
            unique = list(dict.fromkeys(missing))
            vecs = self._embed(unique)
            fresh = {t: vecs[i] for i, t in enumerate(unique)}
            with self._lock:
                for t, v in fresh.items():
                    v.setflags(write=False)
                    self._cache[t] = v
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
            out = [fresh[t] if v is None else v for t, v in zip(texts, out)]
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack(out)  # type: ignore[arg-type]
