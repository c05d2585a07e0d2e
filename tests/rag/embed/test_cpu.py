"""CPU facts (rag/embed/cpu.py): read from this machine, and the oneDNN ISA cap that emulates an older CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from ctxqa.rag.embed.cpu import cpu_info


def test_this_cpu_is_described() -> None:
    info = cpu_info()
    assert info.model and info.model != "unknown"
    assert 1 <= info.cores <= (os.cpu_count() or 1)
    if Path("/proc/cpuinfo").is_file() and os.uname().machine == "x86_64":
        assert "sse2" in info.flags and len(info.flags_digest) == 16
        # CPUID as the kernels see it agrees with the kernel's flags on a real CPU (not under an emulator).
        assert "SSE2" in info.isa and ("AVX2" in info.isa) == ("avx2" in info.flags)
        assert ("AVX512F" in info.isa) == ("avx512f" in info.flags)


def test_an_isa_cap_below_bf16_turns_bf16_off() -> None:
    info = replace(cpu_info(), flags=cpu_info().flags | {"avx512_bf16"})
    assert replace(info, onednn_max_isa="").onednn_bf16
    assert replace(info, onednn_max_isa="AVX512_CORE_AMX").onednn_bf16
    assert not replace(info, onednn_max_isa="AVX2").onednn_bf16
    assert not replace(info, onednn_max_isa="avx512_core_vnni").onednn_bf16
    assert not replace(info, flags=info.flags - {"avx512_bf16", "amx_bf16"}, onednn_max_isa="").onednn_bf16


def test_openvino_runs_f32_under_an_avx2_cap(onnx_cache: Path, onnx_int8: object) -> None:
    """OpenVINO reports BF16 whatever the cap, and a bf16 graph then fails to compile; under
    ONEDNN_MAX_CPU_ISA=AVX2 the backend must run f32 instead of falling back to ONNX Runtime."""
    code = ("from ctxqa.rag.embed.embedder import Embedder; "
            f"e = Embedder(backend='openvino', cache_dir={str(onnx_cache)!r}); "
            "print(e.backend, e._onnx.precision)")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["openvino", "f32"], r.stderr
    assert list(onnx_cache.glob("onnx/*/openvino-blobs-*-AVX2"))  # its compiled blobs apart from the uncapped ones
