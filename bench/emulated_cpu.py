"""The embedder's int8 variants on an emulated AVX2-only CPU: what their vectors are where int8 kernels saturate.

    python bench/emulated_cpu.py [--cpu Haswell-v4] [--sample 16] [--json bench/results/emulated_cpu.json]

Why: the most common x86 class (AVX2, no AVX-512, no VNNI) sums u8 x s8 pairs in int16 with saturation, so int8
vectors there are not the ones a VNNI CPU computes, and few development or CI machines are that class. qemu's user
mode (Debian's qemu-user) runs this same Python, venv and model cache on an emulated CPU: CPUID reports a Haswell,
so numpy, ONNX Runtime and OpenVINO pick their AVX2 kernels, and the emulator reproduces those instructions exactly,
saturation included. Speed under emulation means nothing (~250x slower than native); vectors are exact.

What runs
- Natively (this process): a fixed random sample (seed 0) of the shared corpora chunks, chunked as the pipeline
  does (bench/embed.py `corpus_chunks`), only chunks long enough to run int8 (the embedder keeps short texts on
  fp32); their vectors from ONNX Runtime fp32 (the reference) and from onnx-int8 with each recipe (rag/embed/
  onnx_int8.py: 7-bit weights where the int8 kernels saturate, 8-bit where they do not), and openvino-int8.
- Emulated (`qemu-x86_64 -cpu CPU`, a child process): the saturation probe and the recipe it picks, then the
  same texts through onnx-int8 as `auto` would run it there (the probe's recipe), the 8-bit recipe forced (what
  saturation does to it), and openvino-int8 (oneDNN's AVX2 int8).
Reported: each variant's minimum and mean cosine to the native fp32 vectors, and to the same variant run natively
(1.0 where nothing saturates: the integers are the same on both CPUs, only float rounding differs).
The int8 models are made natively first (quantising under emulation would take hours) in the usual cache.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the project: bench/ingest.py must not shadow the ingest package
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = ROOT / "bench" / "results"
CORPORA = Path(os.environ.get("CTXQA_SHARED", ROOT.parent / "shared")) / "data" / "corpora"
VARIANTS = ("onnx-int8", "onnx-int8@8bit", "openvino-int8")


def _embedder(variant: str):  # noqa: ANN202 - an Embedder; imported late so the child's start stays short
    """`variant` as an Embedder: onnx-int8 with the recipe this CPU's probe picks, or with the 8-bit / 7-bit recipe
    forced (@8bit / @7bit: the probe's answer replaced for this process)."""
    from ctxqa.rag.embed import onnx_int8
    from ctxqa.rag.embed.embedder import Embedder

    backend, _, recipe = variant.partition("@")
    probe = onnx_int8.int8_kernels_saturate
    if recipe:
        onnx_int8.int8_kernels_saturate = lambda: recipe == "7bit"  # type: ignore[assignment]
    try:
        e = Embedder(backend=backend)
    finally:
        onnx_int8.int8_kernels_saturate = probe
    if e.backend != backend:
        raise SystemExit(f"{variant}: fell back to {e.backend}")
    return e


def child(texts_file: Path, out: Path) -> None:
    """Runs under the emulator: the probe, then each variant's vectors of the texts."""
    from ctxqa.rag.embed.cpu import cpu_info
    from ctxqa.rag.embed.onnx_int8 import int8_kernels_saturate, recipe_for_this_cpu

    texts = json.loads(texts_file.read_text())
    info = cpu_info()
    report = {"isa": sorted(info.isa), "saturates": int8_kernels_saturate(), "recipe": recipe_for_this_cpu().tag,
              "seconds": {}}
    print(f"emulated: saturates={report['saturates']} recipe={report['recipe']} "
          f"AVX-512={'AVX512F' in info.isa}", flush=True)
    vecs = {}
    for v in VARIANTS:
        t = time.perf_counter()
        vecs[v] = _embedder(v).encode(texts)
        report["seconds"][v] = round(time.perf_counter() - t, 1)
        print(f"emulated: {v} {report['seconds'][v]} s", flush=True)
    np.savez(out, **{k.replace("@", "_at_"): a for k, a in vecs.items()})
    out.with_suffix(".json").write_text(json.dumps(report))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", default="Haswell-v4", help="qemu CPU model (qemu-x86_64 -cpu help lists them)")
    ap.add_argument("--sample", type=int, default=16)
    ap.add_argument("--json", type=Path, default=RESULTS / "emulated_cpu.json")
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("qemu-x86_64 not found: apt-get install qemu-user (scripts/test_packages.sh does)")

    from _report import cpu_model
    from embed import corpus_chunks

    from ctxqa.rag.config import Settings
    from ctxqa.rag.embed.cpu import cpu_info
    from ctxqa.rag.embed.embedder import Embedder
    from ctxqa.rag.embed.onnx_int8 import int8_kernels_saturate, recipe_for_this_cpu

    s = Settings()
    ref = Embedder(backend="onnx")
    chunks = corpus_chunks(CORPORA, ref._batch_tokenizer, s.chunk_size, s.chunk_overlap, ref.max_tokens)
    long = [t for t in chunks if ref.count_tokens(t) > ref.full_precision_tokens]
    texts = random.Random(0).sample(long, min(args.sample, len(long)))
    print(f"native CPU: {cpu_model()} (int8 saturates: {int8_kernels_saturate()}, recipe "
          f"{recipe_for_this_cpu().tag}); {len(texts)} corpora chunks, "
          f"{sum(ref.count_tokens(t) for t in texts)} word pieces", flush=True)
    native = {"fp32": ref.encode(texts)}
    for v in ("onnx-int8@7bit", "onnx-int8@8bit", "openvino-int8"):  # also makes each int8 model, natively
        native[v] = _embedder(v).encode(texts)

    with tempfile.TemporaryDirectory(prefix="ctxqa-emulated-") as tmp:
        tf, out = Path(tmp) / "texts.json", Path(tmp) / "vectors.npz"
        tf.write_text(json.dumps(texts))
        t = time.perf_counter()
        print(f"emulating {args.cpu} (qemu-x86_64; minutes: every instruction is emulated)", flush=True)
        p = subprocess.run([qemu, "-cpu", args.cpu, sys.executable, __file__, "--child", str(tf), str(out)],
                           stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            tail = "\n".join(x for x in p.stderr.splitlines() if "TCG doesn't support" not in x)[-3000:]
            raise SystemExit(f"the emulated run failed (exit {p.returncode}):\n{tail}")
        emulated_s = time.perf_counter() - t
        got = {k.replace("_at_", "@"): a for k, a in np.load(out).items()}
        emu = json.loads(out.with_suffix(".json").read_text())

    same_as_native = {"onnx-int8": "onnx-int8@" + ("7bit" if emu["saturates"] else "8bit"),
                      "onnx-int8@8bit": "onnx-int8@8bit", "openvino-int8": "openvino-int8"}
    rows = []
    for v in VARIANTS:
        c, n = _cos(got[v], native["fp32"]), _cos(got[v], native[same_as_native[v]])
        rows.append({"variant": v, "fp32_cos_min": float(c.min()), "fp32_cos_mean": float(c.mean()),
                     "native_cos_min": float(n.min()), "seconds": emu["seconds"][v]})
    for v in ("onnx-int8@7bit", "onnx-int8@8bit", "openvino-int8"):
        c = _cos(native[v], native["fp32"])
        rows.append({"variant": f"{v} (native)", "fp32_cos_min": float(c.min()), "fp32_cos_mean": float(c.mean()),
                     "native_cos_min": 1.0, "seconds": None})
    info = cpu_info()
    print(f"\nemulated {args.cpu}: AVX-512 {'yes' if 'AVX512F' in emu['isa'] else 'no'}, AVX2 "
          f"{'yes' if 'AVX2' in emu['isa'] else 'no'}; int8 kernels saturate: {emu['saturates']}; onnx-int8 recipe "
          f"there: {emu['recipe']} (native {cpu_model()}, {info.cores} cores: saturates "
          f"{int8_kernels_saturate()}); emulated run {emulated_s:.0f} s\n")
    print("| variant | cosine to fp32 min / mean | cosine to the same variant run natively, min |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['fp32_cos_min']:.4f} / {r['fp32_cos_mean']:.4f} | {r['native_cos_min']:.6f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cpu": args.cpu, "native_cpu": cpu_model(), "texts": len(texts),
                                     "emulated": emu, "emulated_s": emulated_s, "rows": rows}, indent=1))
    print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
