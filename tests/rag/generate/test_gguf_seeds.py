"""The GGUF seed models' architectures through ctxqa's llama.cpp backend, on CPU.

Tiny random-weight GGUF files written by `gguf` (llama.cpp's own writer, scripts/make_tiny_gguf.py):
- MPT (airoboros-mpt-30b): ALiBi, fused QKV, LayerNorm, byte-level BPE;
- Mixtral (bagel-8x7b): llama architecture, 8 experts with 2 active, Q8_0;
- Llama-2 with linear RoPE x2 and an 8192 context (airophin).
Each is loaded with `load_generator` exactly as `ctxqa ask` loads a model, and generates deterministically. The
files are all called model.gguf, so the profile must come from their `general.name`. Load and generation times
are printed by bench/gguf_seeds.py, not asserted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from ctxqa.rag.config import Settings
from ctxqa.rag.generate import Completion, GenParams, load_generator
from ctxqa.rag.generate.inspect import inspect_model
from ctxqa.rag.types import Prompt

ROOT = Path(__file__).resolve().parents[3]
PROMPT = "the river and the valley of green berries " * 6


@pytest.fixture(autouse=True)
def _no_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXQA_CONFIG", str(tmp_path / "absent.toml"))


@pytest.fixture(scope="module")
def make():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_tiny_gguf", ROOT / "scripts" / "make_tiny_gguf.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def seeds(make, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    out = {}
    for kind, (build, name) in make.SEEDS.items():
        d = tmp_path_factory.mktemp(kind)
        out[kind] = build(d / "model.gguf", name)
    return out


def settings(path: Path, **kw: object) -> Settings:
    return Settings(llm_model=str(path), llm_threads=1, **kw)


def greedy_twice(g, prompt: str, n: int = 12) -> Completion:  # type: ignore[no-untyped-def]
    a = g.generate(prompt, GenParams(max_new_tokens=n))
    b = g.generate(prompt, GenParams(max_new_tokens=n, seed=9))
    *deltas, done = list(g.stream(prompt, GenParams(max_new_tokens=n)))
    assert a.text == b.text == done.text == "".join(deltas), "greedy decoding is deterministic"
    assert a.completion_tokens == n or a.finish_reason == "stop"
    return a


def test_mpt(seeds: dict[str, Path]) -> None:
    info = inspect_model(seeds["mpt"])
    assert (info.architecture, info.quantisation, info.context_length) == ("mpt", "GGUF F16", 2048)
    assert info.profile.name == "airoboros-1.4" and "model's name" in info.profile.reason
    assert info.rope.kind == "none"  # ALiBi
    with load_generator(settings(seeds["mpt"])) as g:
        assert g.context_length == 2048  # from the file
        greedy_twice(g, PROMPT)


def test_mixtral_experts(seeds: dict[str, Path]) -> None:
    info = inspect_model(seeds["mixtral"])
    assert info.experts == (8, 2) and info.architecture == "llama (mixture of 8 experts, 2 active)"
    assert info.quantisation == "GGUF Q8_0" and info.context_length == 32768
    assert info.profile.name == "llama2-chat"  # bagel's default here
    assert info.plan.context_length == 4096 and "capped" in info.plan.context_note
    with load_generator(settings(seeds["mixtral"])) as g:
        assert g.context_length == 4096  # 32k from the file, capped: the KV cache is allocated up front
        assert int(llama_cpp.llama_model_n_ctx_train(g._llm._model.model)) == 32768
        greedy_twice(g, PROMPT)
    with load_generator(settings(seeds["mixtral"], llm_context_length=1024)) as g:
        assert g.context_length == 1024  # the setting wins


def _last_logits(g, prompt: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    ids = g._encode(Prompt.template(prompt))
    g._llm.reset()
    g._llm.eval(ids)
    ptr = llama_cpp.llama_get_logits_ith(g._llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(g._llm.n_vocab(),)).copy()


def test_llama2_linear_rope_x2_at_8192(make, seeds: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = seeds["llama2-rope"]
    info = inspect_model(path)
    assert (info.rope.kind, info.rope.factor, info.rope.original_context) == ("linear", 2.0, 4096)
    assert info.context_length == 8192 and info.profile.name == "airophin"
    assert info.plan.context_length == 8192 and info.plan.rope_scale is None  # 8192; RoPE left to the file
    # The same weights without the RoPE keys: what the file says is what llama.cpp does.
    bare = make.build_llama(tmp_path / "bare.gguf", name="airophin-v2-13b-PI-8k", n_ctx=8192)
    assert inspect_model(bare).plan.rope_scale == 2.0, "no RoPE in the file: the airophin profile's x2"
    long_prompt = "the " * 5000  # > 4096 tokens ("▁the" is one): positions only the x2 interpolation reaches
    with load_generator(settings(path)) as g:
        assert g.context_length == 8192
        assert llama_cpp.llama_model_rope_freq_scale_train(g._llm._model.model) == pytest.approx(0.5)
        n = g.count_tokens(long_prompt)
        assert 4096 < n < 8192 - 16
        c = greedy_twice(g, long_prompt, n=8)
        assert c.prompt_tokens == n
        from_file = _last_logits(g, PROMPT)
    with load_generator(settings(bare, llm_profile="airoboros-2.0", llm_context_length=2048)) as g:
        unscaled = _last_logits(g, PROMPT)
    with load_generator(settings(bare, llm_profile="airoboros-2.0", llm_context_length=2048, llm_rope_scale=2.0)) as g:
        set_x2 = _last_logits(g, PROMPT)
    with load_generator(settings(path, llm_context_length=2048, llm_rope_scale=1.0)) as g:
        forced_off = _last_logits(g, PROMPT)
    assert np.array_equal(from_file, set_x2), "the file's linear x2 == CTXQA_LLM_ROPE_SCALE=2"
    assert np.abs(from_file - unscaled).max() > 0.1, "and it changes the logits"
    assert np.array_equal(forced_off, unscaled), "CTXQA_LLM_ROPE_SCALE=1.0 overrides the file's scaling"


def test_profile_from_the_file_name_when_the_name_says_nothing(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    p = make.build_mpt(tmp_path / "airoboros-mpt-30b-gpt4.Q4_K_M.gguf", name="mpt")
    choice = inspect_model(p).profile
    assert choice.name == "airoboros-1.4" and "file name" in choice.reason
    p = make.build_llama(tmp_path / "model.gguf", name="some model")
    assert inspect_model(p).profile.name == "airoboros-2.0"  # the documented default


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CTXQA_CONFIG": str(cwd / "absent.toml"), "CTXQA_DATA_DIR": str(cwd / "data"),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ctxqa", "models", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)


def test_ctxqa_models_path_reads_the_header_only(seeds: dict[str, Path], tmp_path: Path) -> None:

    # A copy cut off where the tensor data starts: any attempt to load weights would fail.
    src = seeds["mixtral"]
    header_only = tmp_path / "bagel.gguf"
    header_only.write_bytes(src.read_bytes()[: gguf.GGUFReader(str(src)).data_offset])
    r = _cli(str(header_only), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["architecture"] == "llama (mixture of 8 experts, 2 active)" and info["experts"] == [8, 2]
    assert info["quantisation"] == "GGUF Q8_0" and info["context_length"] == 32768
    assert info["profile"]["name"] == "llama2-chat" and info["load"]["context_length"] == 4096
    r = _cli(str(seeds["llama2-rope"]), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    for expected in ("architecture", "llama", "quantisation", "GGUF F32", "8192 in the file", "linear x2",
                     "profile", "airophin"):
        assert expected in out, (expected, r.stdout)
    r = _cli(str(tmp_path / "missing.gguf"), cwd=tmp_path)
    assert r.returncode == 2 and "model not found" in r.stderr + r.stdout
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    r = _cli(str(tmp_path / "junk.gguf"), cwd=tmp_path)
    assert r.returncode == 2 and "cannot read" in r.stderr + r.stdout
