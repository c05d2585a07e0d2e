"""The int8 embedder on an emulated AVX2-only CPU (qemu-x86_64 -cpu Haswell-v4, Debian's qemu-user).

The most common x86 class sums int8 products in saturating int16, which bends vectors, and the machines these
tests run on rarely are that class. qemu's user mode runs this venv on an emulated Haswell: CPUID says AVX2 and no
AVX-512 or VNNI, so ONNX Runtime dispatches its AVX2 kernels, and the emulator computes them exactly, saturation
included (speed under emulation means nothing). Checked here: the saturation probe answers from the kernels, not
from /proc/cpuinfo (which qemu passes through from the host); the recipe it picks keeps the vectors within the
product's bar of fp32 and equal to those this CPU computes with the same model; and the 8-bit model does saturate
there (what the probe guards against). bench/emulated_cpu.py gives the figures on more texts, OpenVINO included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctxqa.rag.embed import onnx_int8 as recipes  # `onnx_int8` is the fixture's name
from ctxqa.rag.embed.choose import MIN_COSINE
from ctxqa.rag.embed.cpu import cpu_info
from ctxqa.rag.embed.embedder import Embedder
from tests.conftest import skip_or_fail

QEMU = shutil.which("qemu-x86_64")
CPU = "Haswell-v4"

CHILD = r"""
import json, sys
import numpy as np
from ctxqa.rag.embed import onnx_int8
from ctxqa.rag.embed.cpu import cpu_info
from ctxqa.rag.embed.embedder import Embedder

cache, texts_file, out = sys.argv[1:4]
texts = json.loads(open(texts_file).read())
info = cpu_info()
report = {"isa": sorted(info.isa), "flags_vnni": info.int8_dot_products,
          "saturates": onnx_int8.int8_kernels_saturate(), "recipe": onnx_int8.recipe_for_this_cpu().tag}
e = Embedder(backend="onnx-int8", cache_dir=cache, small_call_texts=0)
report["model"] = str(e._onnx.path)
vecs = {"probe_recipe": e.encode(texts)}
onnx_int8.int8_kernels_saturate = lambda: False  # the 8-bit model, on these kernels
e8 = Embedder(backend="onnx-int8", cache_dir=cache, small_call_texts=0)
report["model_8bit"] = str(e8._onnx.path)
vecs["eight_bit"] = e8.encode(texts)
np.savez(out, **vecs)
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def qemu() -> str:
    if os.uname().machine != "x86_64":
        pytest.skip("x86 CPU emulation is checked on x86 machines")
    if QEMU is None:
        skip_or_fail("no qemu-x86_64: apt-get install qemu-user (scripts/test_packages.sh does)")
    return QEMU


def test_int8_on_an_emulated_avx2_cpu(qemu: str, tmp_path: Path, onnx_cache: Path, onnx_int8: Embedder,
                                      embedder: Embedder, real_texts: list[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(onnx_cache, cache)  # the fp32 export and this CPU's int8 model
    # Long enough to run int8 (short texts, and calls of a few texts unless small_call_texts=0, run fp32), and the
    # shortest such real chunks of 32 word pieces or more: the emulator takes ~0.25 s a word piece per model (four
    # chunks of 112-196 took 7 of this test's 9 minutes on an AMX Xeon host).
    counted = sorted((onnx_int8.count_tokens(t), t) for t in real_texts)
    texts = [t for n, t in counted if n >= max(32, onnx_int8.full_precision_tokens + 1)][:4]
    assert len(texts) == 4
    # This CPU, with each recipe's model (made here: quantising under emulation would take an hour).
    native = {}
    for saturates in (True, False):
        monkeypatch.setattr(recipes, "int8_kernels_saturate", lambda s=saturates: s)
        e = Embedder(backend="onnx-int8", cache_dir=cache, small_call_texts=0)
        assert e.backend == "onnx-int8" and Path(e._onnx.path).name == f"model.{recipes.recipe_for(saturates).tag}.onnx"
        native[saturates] = e.encode(texts)
    monkeypatch.undo()
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.getcwd()}
    r = subprocess.run([qemu, "-cpu", CPU, sys.executable, "-c", CHILD, str(cache), str(tmp_path / "texts.json"),
                        str(tmp_path / "vectors.npz")], capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("REPORT "))[len("REPORT "):])
    got = dict(np.load(tmp_path / "vectors.npz"))

    if "AVX2" not in report["isa"]:
        skip_or_fail(f"this qemu does not emulate AVX2 (qemu 7.2 or later does): {qemu} -cpu {CPU}")
    # The emulated CPU is an AVX2 one as its kernels see it, whatever /proc/cpuinfo (the host's) says...
    assert "AVX512F" not in report["isa"] and "AVX512VNNI" not in report["isa"]
    assert report["flags_vnni"] == cpu_info().int8_dot_products  # ...so flags could not have told
    # The probe measures saturation there, and the 7-bit recipe follows.
    assert report["saturates"] is True and report["recipe"] == "int8-rr"
    assert report["model"].endswith("model.int8-rr.onnx") and report["model_8bit"].endswith("model.int8.onnx")
    ref = embedder.encode(texts)  # torch fp32
    cos = (got["probe_recipe"] * ref).sum(1)
    assert cos.min() >= MIN_COSINE and cos.max() < 0.99999  # within the bar, and int8 ran (not the fp32 graph)
    # Nothing saturates with 7-bit weights: this CPU's vectors from the same model, to float rounding.
    assert (got["probe_recipe"] * native[True]).sum(1).min() > 0.9995
    # The 8-bit model saturates there: its vectors are not this CPU's (where this CPU does not saturate itself),
    # and they are further from fp32 than the 7-bit ones.
    eight = (got["eight_bit"] * ref).sum(1)
    if not recipes.int8_kernels_saturate():
        assert (got["eight_bit"] * native[False]).sum(1).min() < 0.999
        assert eight.min() < cos.min()

