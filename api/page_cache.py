"""A byte-budgeted LRU of rendered page images (and the page layout of documents read again), per process.

Rendering a 10-Q page costs ~35 ms of PDFium and PNG encoding at scale 1.5 (p95 ~50 ms on 2 EPYC cores; a cached
one ~2 ms: bench/page_images.py); a person paging through evidence asks for the same pages again. Keys include the document's sha256, so a re-ingested file never serves an old image.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class ByteLRU:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._items[key] = value
            self._size += len(value)
            while self._size > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)
