"""`auto`: measured on this CPU, cached per CPU / cores / versions, never an unfaithful variant
(rag/embed/choose.py). Real embedders throughout; only the CPU facts are swapped to show that the cache key follows
them, and a deliberately corrupted variant is injected to show the fidelity check rejects it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ctxqa.rag.config import DEFAULT_EMBEDDING_MODEL, Settings  # noqa: E402
from ctxqa.rag.embed import choose  # noqa: E402
from ctxqa.rag.embed.cpu import cpu_info  # noqa: E402
from ctxqa.rag.embed.embedder import (  # noqa: E402
    Embedder,
    backend_choice,
    canonical_model_name,
    choose_backend,
    model_id,
    resolve_embedding_model,
)
from ctxqa.rag.embed.samples import check_set  # noqa: E402


class Counting:
    """A factory of real, forced-backend embedders that counts what it builds (measuring builds; a cache hit
    builds nothing). `extra` adds injected variants by name."""

    def __init__(self, cache: Path, extra: dict[str, Callable[[], object]] | None = None) -> None:
        self.cache = cache
        self.extra = extra or {}
        self.built: list[str] = []

    def __call__(self, backend: str):  # type: ignore[no-untyped-def]
        self.built.append(backend)
        if backend in self.extra:
            return self.extra[backend]()
        return Embedder(backend=backend, cache_dir=self.cache)


def _choose(factory: Counting, choice_dir: Path, candidates: tuple[str, ...] = ("onnx",)) -> choose.ChoiceReport:
    spec = DEFAULT_EMBEDDING_MODEL
    return choose.choose(factory, cache_dir=choice_dir, candidates=candidates,
                         model_id=model_id(resolve_embedding_model(spec), canonical_model_name(spec)))


def test_measures_once_then_reuses_the_cache(tmp_path: Path, onnx_cache: Path, onnx_int8: Embedder) -> None:
    first = Counting(onnx_cache)
    report = _choose(first, tmp_path, ("onnx-int8", "onnx"))
    assert not report.from_cache and sorted(first.built) == ["onnx", "onnx-int8"]  # onnx: also the fp32 reference
    assert report.choice in ("onnx-int8", "onnx")
    by = {v.backend: v for v in report.variants}
    assert [v.backend for v in report.variants] == ["onnx-int8", "onnx"]
    for v in by.values():
        assert v.available and v.word_pieces_per_s and v.word_pieces_per_s > 0
        assert v.cos_min is not None and v.rank_agreement is not None
    assert by["onnx"].passed and by["onnx"].cos_min > 0.9999 and by["onnx"].rank_agreement == 1.0
    assert by["onnx-int8"].cos_min < 0.99999  # measured against fp32, not against itself
    chosen = by[report.choice]
    fastest = max(v.word_pieces_per_s or 0 for v in report.variants if v.passed)
    assert chosen.passed and (chosen.word_pieces_per_s or 0) >= (1 - choose.NEAR) * fastest
    assert all(v.cos_min <= chosen.cos_min for v in report.variants  # a tie goes to the closest to fp32
               if v.passed and (v.word_pieces_per_s or 0) >= (1 - choose.NEAR) * fastest)
    assert report.choice in report.reason and report.decided_s > report.load_s > 0
    path = choose.cache_path(tmp_path, report.key)
    assert json.loads(path.read_text())["choice"] == report.choice

    again = Counting(onnx_cache)
    hit = _choose(again, tmp_path, ("onnx-int8", "onnx"))
    assert again.built == []  # nothing built, nothing timed
    assert hit.from_cache and replace(hit, from_cache=False) == report


def test_int8_saturation_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels that saturate get another int8 model (7-bit weights), so another measurement."""
    from ctxqa.rag.embed import onnx_int8

    here = choose.key_parts("m", None, None)
    assert here["int8_saturates"] == str(onnx_int8.int8_kernels_saturate())
    monkeypatch.setattr(onnx_int8, "int8_kernels_saturate", lambda: here["int8_saturates"] != "True")
    assert choose.cache_key(choose.key_parts("m", None, None)) != choose.cache_key(here)


@pytest.mark.parametrize("change", ["flags", "cpuid", "cores", "isa cap", "runtime version"])
def test_a_changed_key_measures_again(change: str, tmp_path: Path, onnx_cache: Path, onnx_int8: Embedder,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Another CPU (flags; CPUID alone, as under an emulator), another core count, an ISA cap or another runtime
    version: the cached choice does not apply, so the next start measures again and caches under another key; the
    first entry stays valid for its own key."""
    first = _choose(Counting(onnx_cache), tmp_path)
    info = cpu_info()
    if change == "flags":
        other = replace(info, flags=info.flags - {"avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512f"})
        monkeypatch.setattr(choose, "cpu_info", lambda: other)
    elif change == "cpuid":
        other = replace(info, isa=frozenset({"SSE2", "AVX", "AVX2", "FMA3"}))
        monkeypatch.setattr(choose, "cpu_info", lambda: other)
    elif change == "cores":
        other = replace(info, cores=info.cores + 6)
        monkeypatch.setattr(choose, "cpu_info", lambda: other)
    elif change == "isa cap":
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    else:
        real = choose._version
        monkeypatch.setattr(choose, "_version", lambda d: "0.0.1" if d == "onnxruntime" else real(d))
    again = Counting(onnx_cache)
    second = _choose(again, tmp_path)
    assert not second.from_cache and "onnx" in again.built
    assert second.key != first.key
    assert choose.cache_path(tmp_path, first.key).is_file() and choose.cache_path(tmp_path, second.key).is_file()
    monkeypatch.undo()
    back = Counting(onnx_cache)
    assert _choose(back, tmp_path).from_cache and back.built == []


def test_a_forced_backend_measures_nothing(onnx_cache: Path, onnx_int8: Embedder,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("measured although the backend is forced")

    monkeypatch.setattr(choose, "measure", boom)
    monkeypatch.setattr(choose, "choose", boom)
    e = Embedder(backend="onnx-int8", cache_dir=onnx_cache)
    assert e.backend == "onnx-int8" and "forced" in e.choice.reason and not e.choice.variants
    report = backend_choice(Settings(embedding_backend="onnx", embedding_cache_dir=onnx_cache))
    assert report.choice == "onnx" and "CTXQA_EMBEDDING_BACKEND" in report.reason


class Corrupted:
    """The fastest variant there can be (its vectors are precomputed), and a wrong one: fp32 vectors of the check
    passages with `bend` applied. `choose` must never pick it."""

    def __init__(self, fp32: Embedder, bend: Callable[[np.ndarray], np.ndarray]) -> None:
        self.backend = "corrupt"
        self._fp32 = fp32
        self._vecs = bend(fp32.encode(list(check_set().passages)))

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._vecs.copy()

    def encode_query(self, text: str) -> np.ndarray:
        return self._fp32.encode_query(text)

    def count_tokens(self, text: str) -> int:
        return self._fp32.count_tokens(text)


def _noisy(v: np.ndarray) -> np.ndarray:
    """Bend a third of the vectors to cosine ~0.97: small enough to look plausible, what a saturating int8 kernel
    did on an AVX2 CPU (issue 18: min cosine 0.973)."""
    rng = np.random.default_rng(0)
    out = v.copy()
    for i in range(0, len(v), 3):
        n = rng.standard_normal(v.shape[1]).astype(np.float32)
        n -= (n @ v[i]) * v[i]
        n /= np.linalg.norm(n)
        out[i] = 0.97 * v[i] + np.sqrt(1 - 0.97 ** 2) * n
    return out


def _swapped_within_topics(v: np.ndarray) -> np.ndarray:
    """Swap the vectors of neighbouring passages of the same topic: every vector is a real one, the ranking is
    wrong."""
    topics = check_set().passage_topics
    out = v.copy()
    for i in range(0, len(v) - 1, 2):
        if topics[i] == topics[i + 1]:
            out[[i, i + 1]] = v[[i + 1, i]]
    return out


def test_an_unfaithful_variant_is_never_chosen(tmp_path: Path, onnx_cache: Path, onnx_fp32: Embedder) -> None:
    factory = Counting(onnx_cache, {"corrupt": lambda: Corrupted(onnx_fp32, _noisy)})
    report = _choose(factory, tmp_path, ("corrupt", "onnx"))
    by = {v.backend: v for v in report.variants}
    assert by["corrupt"].word_pieces_per_s > by["onnx"].word_pieces_per_s  # it is the fastest...
    assert report.choice == "onnx"  # ...and not chosen
    assert not by["corrupt"].passed and "passage min cosine 0.97" in by["corrupt"].note
    assert "faster: corrupt" in report.reason and "rejected: passage min cosine" in report.reason


def test_the_ranking_check_rejects_what_the_cosine_check_lets_through(onnx_cache: Path,
                                                                      onnx_fp32: Embedder) -> None:
    """With the cosine bar off, vectors swapped between close passages (each a real vector, the order wrong)
    still fail on the retrieval check."""
    factory = Counting(onnx_cache, {"corrupt": lambda: Corrupted(onnx_fp32, _swapped_within_topics)})
    report = choose.measure(factory, ("corrupt", "onnx"), min_cosine=-1.0)
    by = {v.backend: v for v in report.variants}
    assert report.choice == "onnx" and not by["corrupt"].passed
    assert by["corrupt"].note.startswith("top-5 agreement") and by["corrupt"].rank_agreement < 0.9


def test_auto_runs_the_measured_choice_and_keeps_its_promise(tmp_path: Path, onnx_cache: Path, embedder: Embedder,
                                                             onnx_int8: Embedder, openvino_int8: Embedder,
                                                             real_texts: list[str]) -> None:
    """Every backend that starts here is measured; the embedder runs the choice, which agrees with fp32 on the
    shared corpora (texts the check never saw) as the check promised; `ctxqa config` reads the same report."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(onnx_cache, cache)  # the session's exports, and no cached choice
    seen: list[str] = []
    e = Embedder(backend="auto", cache_dir=cache, progress=seen.append)
    assert e.requested_backend == "auto" and e.backend == e.choice.choice and not e.choice.from_cache
    assert {v.backend for v in e.choice.variants} == set(choose.CANDIDATES)
    assert any("measuring" in m for m in seen) and any(m.startswith("embedding backend:") for m in seen)
    chosen = next(v for v in e.choice.variants if v.backend == e.backend)
    assert chosen.passed and chosen.cos_min >= choose.MIN_COSINE
    got, ref = e.encode(real_texts), embedder.encode(real_texts)
    assert ((got * ref).sum(1)).min() >= choose.MIN_COSINE
    report = choose_backend(cache_dir=cache)
    assert report.from_cache and report.choice == e.backend
    via_settings = backend_choice(Settings(embedding_cache_dir=cache))
    assert via_settings.from_cache and via_settings.choice == e.backend
    assert Settings().embedding_backend == "auto"


def test_the_pick_prefers_fidelity_within_a_tie_and_names_each_variant_once() -> None:
    """The decision on measured reports (pure): a faster variant within NEAR that is less faithful loses the tie and
    is named once, as the tie; the next slower passing variant is named as `next`; a rejected one with its note."""
    V = choose.VariantReport
    reports = [V("openvino", True, True, word_pieces_per_s=14_453, cos_min=0.9999),
               V("openvino-int8", True, True, word_pieces_per_s=15_617, cos_min=0.9961),
               V("onnx-int8", True, False, "passage min cosine 0.9734 < 0.99", word_pieces_per_s=20_000, cos_min=0.9734),
               V("onnx", True, True, word_pieces_per_s=3_205, cos_min=1.0),
               V("torch", False, False, "not installed")]
    best, reason = choose.pick(reports)
    assert best is not None and best.backend == "openvino"
    assert "faster: onnx-int8 20.0k (rejected: passage min cosine 0.9734 < 0.99), openvino-int8 15.6k (a tie" in reason
    assert reason.count("openvino-int8") == 1 and reason.endswith("; next: onnx 3.2k")
    # Beyond NEAR, speed wins: the int8 variant is chosen and fp32 OpenVINO is the next one.
    best, reason = choose.pick([replace(reports[1], word_pieces_per_s=20_000), *reports[:1], *reports[2:]])
    assert best is not None and best.backend == "openvino-int8" and "; next: openvino 14.5k" in reason
    assert choose.pick([reports[2], reports[4]]) == (None, "")
