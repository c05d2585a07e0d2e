"""Texts shipped with ctxqa for the embedder's own use (original texts written for ctxqa, in rag/data/):

- embed_calibration.jsonl: int8 calibration (NNCF statistics for OpenVINO int8, activation ranges for the ONNX
  Runtime int8 recipe): 200 texts of 18 kinds (prose, code, filings, abstracts, queries, logs, other languages).
- embed_check.jsonl: the fidelity and timing check that `auto` runs on each CPU (rag/embed/choose.py), held out
  from calibration so int8 is not judged on the texts it was fitted to: 48 passages (11 topics of 4 close passages
  each, so rankings within a topic are a fine test, plus short and non-English texts) and 22 queries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

CALIBRATION_FILE = "embed_calibration.jsonl"
CHECK_FILE = "embed_check.jsonl"


def _data(name: str) -> bytes:
    return resources.files("ctxqa.rag").joinpath("data", name).read_bytes()


def data_digest(name: str) -> str:
    return hashlib.sha256(_data(name)).hexdigest()[:16]


def _rows(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in _data(name).decode("utf-8").splitlines() if line.strip()]


def calibration_texts() -> list[str]:
    return [r["text"] for r in _rows(CALIBRATION_FILE)]


def calibration_kinds() -> set[str]:
    return {r["kind"] for r in _rows(CALIBRATION_FILE)}


@dataclass(frozen=True)
class CheckSet:
    passages: tuple[str, ...]
    queries: tuple[str, ...]
    passage_topics: tuple[str, ...]
    query_topics: tuple[str, ...]


@lru_cache(maxsize=1)
def check_set() -> CheckSet:
    rows = _rows(CHECK_FILE)
    ps = [r for r in rows if r["kind"] == "passage"]
    qs = [r for r in rows if r["kind"] == "query"]
    return CheckSet(tuple(r["text"] for r in ps), tuple(r["text"] for r in qs),
                    tuple(r["topic"] for r in ps), tuple(r["topic"] for r in qs))
